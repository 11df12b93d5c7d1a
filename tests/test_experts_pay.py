"Chapter 19_experts_pay: sparse MLM head, byte corpus without test text, causal LM, upcycling, transfer to the classifier."
import json, math, subprocess, sys
from pathlib import Path

import datasets
import pytest
import torch

from moe_course.data import load_text_dataset
from moe_course.experts_carry import ByteClassifier, byte_ids, finetune_bytes
from moe_course.experts_pay import (CausalLM, LMRun, byte_corpus, byte_windows, expert_bytes, lm_eval, merge_records, scaling_table,
                                    sparse_mlm_loss, steps_to_reach, top_bytes, upcycle_lm, valid_windows)
from moe_course.pretrain import (SwitchTransformerMLM, encoder_state_dict, expert_forward, load_encoder, mask_tokens,
                                 mlm_loss, save_encoder)

ROOT = Path(__file__).resolve().parents[1]
KW = dict(max_len=16, d_model=32, n_heads=2, d_ff=48, n_layers=2, dropout=0.0)


@pytest.mark.parametrize("num_experts", [1, 4])
def test_sparse_head_equals_full_head_on_masked_positions(num_experts):
    torch.manual_seed(0)
    m = SwitchTransformerMLM(500, **(KW | dict(max_len=32, num_experts=num_experts)))
    ids = torch.randint(5, 500, (4, 32)); ids[1, 20:] = 0
    x, lab = mask_tokens(ids, 500, 0.3, generator=torch.Generator().manual_seed(1))
    full_loss, full_ce = mlm_loss(m(x), lab)
    sp_loss, sp_ce = sparse_mlm_loss(m, x, lab)
    assert torch.allclose(full_ce, sp_ce, atol=1e-5) and torch.allclose(full_loss, sp_loss, atol=1e-5)
    g_full = torch.autograd.grad(full_ce, m.mlm_dense.weight)[0]
    g_sp = torch.autograd.grad(sparse_mlm_loss(m, x, lab)[1], m.mlm_dense.weight)[0]
    assert torch.allclose(g_full, g_sp, atol=1e-5)                     # same gradients too


def test_no_test_text_in_pretraining():
    marker = "ZQXJ unique test review"
    dup = "a review that is in both splits"
    train = [f"train review {i} " + "good " * i for i in range(20)] + [dup]
    dsd = datasets.DatasetDict(train=datasets.Dataset.from_dict(dict(text=train, label=[i % 2 for i in range(21)])),
                               test=datasets.Dataset.from_dict(dict(text=[marker, dup], label=[0, 1])))
    c = byte_corpus(dsd, valid_frac=0.2)
    every = bytes((torch.cat([c["train"], c["valid"]]) - 1).tolist()).decode()
    assert "ZQXJ" not in every and dup not in every                    # test text never enters, duplicates dropped
    assert c["train_reviews"] + c["valid_reviews"] == 20 and c["valid_reviews"] == 4
    assert "train review 3 " in every


def test_no_test_text_on_sample():
    dsd = load_text_dataset("imdb", source="sample")
    c = byte_corpus(dsd)
    assert c["train_reviews"] + c["valid_reviews"] == len(dsd["train"])
    test_text = dsd["test"]["text"][0].encode()[:64]
    assert test_text not in bytes((torch.cat([c["train"], c["valid"]]) - 1).tolist())


def test_causal_lm_ignores_the_future_and_learns():
    torch.manual_seed(0)
    m = CausalLM(257, **(KW | dict(num_experts=4))).eval()
    # one row: within a row earlier tokens win capacity, so later bytes cannot change earlier outputs (across rows
    # of a batch they can, through the shared capacity: a known leak of capacity-based MoE LMs)
    x = torch.randint(1, 257, (1, 16)); y = x.clone(); y[:, 10:] = torch.randint(1, 257, (1, 6))
    assert torch.allclose(m(x).logits[:, :10], m(y).logits[:, :10], atol=1e-5)   # position t sees bytes <= t
    assert not torch.allclose(m(x).logits[:, 10:], m(y).logits[:, 10:])
    data = (torch.arange(3000) % 7 + 1).long()                           # a periodic "text": easy to predict
    r = LMRun(m.train(), steps=40, lr=3e-3)
    valid = valid_windows(data, 2, 8, 16)
    before = lm_eval(m, valid); r.train_steps(data, 40, 8, 16); h = r.log(valid)
    assert h["valid_loss"] < before - 1 and h["step"] == 40 and 0 <= h["drop"] <= 1 and h["load_max"] >= 1


def test_encoder_weights_carry_over_to_the_classifier_exactly(tmp_path):
    torch.manual_seed(0)
    lm = CausalLM(257, **(KW | dict(num_experts=4)))
    save_encoder(lm, tmp_path / "enc")
    torch.manual_seed(1)
    clf = ByteClassifier(257, 2, **(KW | dict(num_experts=4)))
    missing = load_encoder(clf, tmp_path / "enc")
    assert sorted(missing) == ["head.bias", "head.weight"]
    ref, got = encoder_state_dict(lm), clf.state_dict()
    assert set(ref) == {k for k in got if not k.startswith("head.")}
    for k, v in ref.items(): assert torch.equal(v, got[k]), k
    # the same hidden states: one window through the classifier's encoder = the LM's encoder
    x = torch.randint(1, 257, (3, 16))
    h = clf.drop(clf.embedding(x))
    for blk in clf.blocks: h = blk(h, x.ne(0), x)[0]
    g = lm.drop(lm.embedding(x))
    for blk in lm.blocks: g = blk(g, None, x)[0]
    assert torch.allclose(h, g, atol=1e-6)
    assert clf(torch.randint(1, 257, (3, 48))).logits.shape == (3, 2)


def test_upcycled_experts_start_equal_to_dense_ffn():
    torch.manual_seed(0)
    dense = CausalLM(257, **(KW | dict(num_experts=1)))
    moe = upcycle_lm(dense, 4, seed=3)
    x = torch.randn(10, 32)
    for bd, bm in zip(dense.blocks, moe.blocks):
        for i in range(4): assert torch.allclose(expert_forward(bm.ffn, i, x), bd.ffn(x), atol=1e-6)
    sd = moe.state_dict()
    for k, v in dense.state_dict().items():
        if ".ffn." not in k: assert torch.equal(v, sd[k]), k
    with pytest.raises(ValueError, match="num_experts >= 2"): upcycle_lm(dense, 1)
    with pytest.raises(ValueError, match="dense"): upcycle_lm(moe, 4)


def test_helpers_and_bad_input():
    h = [dict(step=100, seconds=10.0, valid_loss=3.0), dict(step=200, seconds=20.0, valid_loss=2.0)]
    assert steps_to_reach(h, 2.5) == 150 and steps_to_reach(h, 2.5, "seconds") == 15.0
    assert steps_to_reach(h, 3.5) == 100 and steps_to_reach(h, 1.0) is None
    with pytest.raises(ValueError, match="shorter"): byte_windows(torch.ones(10, dtype=torch.long), 2, 16)
    ids = byte_ids(["ab", "é", ""], 4)
    assert ids.tolist() == [[98, 99, 0, 0], [196, 170, 0, 0], [0, 0, 0, 0]]
    clf = ByteClassifier(257, 2, **KW)
    with pytest.raises(ValueError, match="multiple"): clf(torch.ones(2, 20, dtype=torch.long))
    m = CausalLM(257, **(KW | dict(num_experts=2)))
    c = expert_bytes(m, [torch.randint(1, 257, (2, 17))])
    assert c.shape == (2, 257) and c.sum() == 32
    assert len(top_bytes(c, 3)) == 2
    with pytest.raises(ValueError, match="dense"): expert_bytes(CausalLM(257, **KW | dict(num_experts=1)), [])
    with pytest.raises(TypeError, match="num_classes"): CausalLM(257, num_classes=2)


def test_experts_pay_script_tiny(tmp_path):
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, str(ROOT / "experiments/experts_pay.py"), "--preset", "tiny", "--out", str(out),
                    "--run-dir", str(tmp_path / "runs")], check=True, capture_output=True, cwd=tmp_path)
    r = json.loads(out.read_text())
    assert set(r["runs"]) >= {"N=1", "N=2", "N=4", "dense d_ff=64", "N=1 seed=1"}
    assert r["corpus"]["test_reviews_read"] == 0 and r["loadavg"] and r["upcycling"]["upcycled_valid"] > 0
    assert all(len(x["history"]) == 2 for k, x in r["runs"].items() if " seed" not in k and "upcycl" not in k)
    assert (tmp_path / "runs" / "N1" / "model.safetensors").exists()
    rows = {x["model"]: x for x in scaling_table(r)}
    assert set(rows) == {"N=1", "N=2", "N=4", "dense d_ff=64"} and rows["N=1"]["seeds"] == 2
    assert rows["N=4"]["active"] < rows["N=4"]["total"] and rows["N=1"]["steps_to_dense"] == 20
    ft = tmp_path / "ft.json"
    subprocess.run([sys.executable, str(ROOT / "experiments/experts_pay_finetune.py"), "--preset", "tiny", "--out", str(ft),
                    "--backbones", str(tmp_path / "runs"), "--moe", "N2", "--seeds", "0"], check=True, capture_output=True, cwd=tmp_path)
    f = json.loads(ft.read_text())
    assert {x["kind"] for x in f["runs"]} == {"pretrained MoE", "pretrained dense", "scratch MoE", "scratch dense"}
    assert all(0 <= x["test_accuracy"] <= 1 for x in f["runs"]) and f["summary"]["pretrained MoE"]["n"] == 1


def test_finetune_bytes_bad_input():
    clf = ByteClassifier(257, 2, **KW)
    x = torch.ones(4, 16, dtype=torch.long)
    with pytest.raises(ValueError, match="length"): finetune_bytes(clf, x, torch.zeros(3, dtype=torch.long), x, torch.zeros(4, dtype=torch.long))


def test_mlm_head_cost_benchmark_runs():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import mlm_head_cost
    med, losses = mlm_head_cost.main(["--batch-size", "2", "--seq-len", "16", "--vocab-size", "300", "--steps", "1", "--rounds", "1"])
    assert abs(losses["full"] - losses["sparse"]) < 1e-4 and set(med) == {"full", "sparse"}


def test_merge_records_and_scaling_table():
    h = lambda *v: [dict(step=100 * (i + 1), seconds=10.0 * (i + 1), valid_loss=x, drop=0.0, load_cv=0.0, aux=0.0) for i, x in enumerate(v)]
    run = lambda n, *v: dict(history=h(*v), total=n * 10, active=10, sec_per_step_median=0.1)
    grid = dict(name="g", commit="abc", wall_time_s=5.0, best="N=8", loadavg=[dict(t=1, load1=2.0)],
                runs={"N=1": run(1, 3.0, 2.0), "N=8": run(8, 2.5, 1.5), "dense d_ff=1024": run(8, 2.0, 1.0)})
    extra = dict(name="x", commit="def", wall_time_s=6.0, loadavg=[dict(t=1, load1=9.0)],
                 runs={"N=1 seed=1": run(1, 3.0, 2.2), "N=8 seed=1": run(8, 2.4, 1.7)}, upcycling=dict(upcycled_valid=1.8))
    rec = merge_records([extra, grid])
    assert rec["best"] == "N=8" and len(rec["runs"]) == 5 and len(rec["loadavg"]) == 2
    assert rec["upcycling"]["scratch_valid"] == 1.5 and rec["upcycling"]["dense_valid"] == 2.0
    rows = {r["model"]: r for r in scaling_table(rec)}
    assert set(rows) == {"N=1", "N=8", "dense d_ff=1024"} and rows["N=8"]["seeds"] == 2
    assert rows["N=8"]["steps_to_dense"] == 150 and rows["N=1"]["steps_to_dense"] == 200
    assert abs(rows["N=8"]["bits_mean"] - 1.6 / math.log(2)) < 1e-9
    with pytest.raises(ValueError, match="grid"): merge_records([dict(extra, runs={"N=8 seed=1": extra["runs"]["N=8 seed=1"]})])


def test_pretrain_mlm_with_the_sparse_head_trains_like_the_full_head():
    from moe_course.batching import train_tokenizer
    from moe_course.pretrain import mlm_corpus, pretrain_mlm
    corpus = mlm_corpus(load_text_dataset("imdb", source="sample"))
    tok = train_tokenizer(corpus[:600], vocab_size=800)
    runs = {}
    for name, fn in (("full", None), ("sparse", sparse_mlm_loss)):
        torch.manual_seed(0); m = SwitchTransformerMLM(tok.get_vocab_size(), **(KW | dict(max_len=48, num_experts=2)))
        r = pretrain_mlm(m, tok, corpus[:600], steps=6, batch_size=16, max_len=48, lr=3e-3, eval_every=3,
                         valid_texts=corpus[600:632], progress=False, loss_fn=fn)
        runs[name] = (r, m)
    (rf, mf), (rs, ms) = runs["full"], runs["sparse"]
    assert len(rf["history"]) == len(rs["history"]) == 2
    for hf, hs in zip(rf["history"], rs["history"]):
        assert math.isclose(hf["train_loss"], hs["train_loss"], abs_tol=1e-4)
        assert math.isclose(hf["valid_loss"], hs["valid_loss"], abs_tol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(mf.state_dict().values(), ms.state_dict().values()))
    bias = mf.mlm_bias.detach().clone()
    with pytest.raises(ValueError, match="mlm_prob"):
        pretrain_mlm(mf, tok, corpus[:40], steps=1, batch_size=16, max_len=48, mlm_prob=1.5, progress=False)
    assert torch.equal(mf.mlm_bias, bias)                              # refused before the model was touched


def test_experts_carry_script_tiny(tmp_path):
    import os
    out = tmp_path / "c.json"
    subprocess.run([sys.executable, str(ROOT / "experiments/experts_carry.py"), "--preset", "tiny", "--out", str(out),
                    "--upcycle"], check=True, capture_output=True, cwd=tmp_path, env=os.environ | dict(TMPDIR=str(tmp_path)))
    r = json.loads(out.read_text())
    kinds = {"pretrained MoE", "pretrained dense", "scratch MoE", "scratch dense", "upcycled MoE"}
    assert {x["kind"] for x in r["runs"]} == kinds and set(r["summary"]) == kinds
    assert all(r["summary"][k]["n"] == 2 and 0 <= r["summary"][k]["mean"] <= 1 for k in kinds)
    assert r["corpus"]["valid_reviews"] == (r["corpus"]["reviews"] + r["corpus"]["valid_reviews"]) // 100 and set(r["pretrain"]) == {"dense", "MoE", "upcycled"}
    assert r["pretrain"]["MoE"]["active"] < r["pretrain"]["MoE"]["total"] and r["pretrain"]["dense"]["active"] == r["pretrain"]["dense"]["total"]
    scratch = [x for x in r["runs"] if x["kind"].startswith("scratch")]
    assert all(x["pretrain_s"] == 0 and x["pipeline_s"] >= x["finetune_s"] for x in scratch)
    assert (tmp_path / "moe_course_experts_carry" / "experts_carry_tiny" / "MoE" / "model.safetensors").exists()
    again = tmp_path / "c2.json"                               # fine-tune the saved encoders again, no pretraining
    subprocess.run([sys.executable, str(ROOT / "experiments/experts_carry.py"), "--preset", "tiny", "--out", str(again),
                    "--encoders", str(tmp_path / "moe_course_experts_carry" / "experts_carry_tiny"), "--pretrain-record",
                    str(out), "--kinds", "pretrained MoE", "--seeds", "0", "--finetune-lr", "0.001",
                    "--finetune-epochs", "2"],
                   check=True, capture_output=True, cwd=tmp_path, env=os.environ | dict(TMPDIR=str(tmp_path)))
    r2 = json.loads(again.read_text())
    assert r2["pretrain"] == r["pretrain"] and r2["encoders_from"] == r["commit"] and r2["finetune_config"]["MoE"]["lr"] == 0.001
    assert r2["finetune_config"]["MoE"]["epochs"] == 2 != r["finetune_config"]["MoE"]["epochs"] and len(r2["runs"][0]["history"]) == 2
    assert [x["kind"] for x in r2["runs"]] == ["pretrained MoE"] and r2["runs"][0]["pretrain_s"] == r["pretrain"]["MoE"]["wall_time_s"]


def test_experts_carry_script_emb_std(tmp_path):
    "--emb-std starts the pretrained encoder's token embedding at N(0, std^2) (BERT's 0.02), not N(0, 1)."
    import os
    from moe_course.transformer import load_encoder_file
    out = tmp_path / "e.json"
    subprocess.run([sys.executable, str(ROOT / "experiments/experts_carry.py"), "--preset", "tiny", "--out", str(out),
                    "--emb-std", "0.02", "--pos-std", "0.02", "--mlm-steps", "2", "--kinds", "pretrained dense", "scratch dense",
                    "--seeds", "0", "--encoder-lr-mult", "0.25"], check=True, capture_output=True, cwd=tmp_path, env=os.environ | dict(TMPDIR=str(tmp_path)))
    r = json.loads(out.read_text())
    assert r["encoder_lr_mult"] == 0.25 and r["emb_std"] == 0.02 and r["pos_std"] == 0.02 and [x["kind"] for x in r["runs"]] == ["pretrained dense", "scratch dense"]
    emb = load_encoder_file(tmp_path / "moe_course_experts_carry" / "experts_carry_tiny" / "dense")[0]["embedding.tok_emb.weight"]
    assert 0.01 < emb.std().item() < 0.05            # from N(0, 0.02^2); 2 AdamW steps at lr 3e-3 move a weight <= ~0.006
    pos = load_encoder_file(tmp_path / "moe_course_experts_carry" / "experts_carry_tiny" / "dense")[0]["embedding.pos_emb.weight"]
    assert 0.01 < pos.std().item() < 0.05            # --pos-std: the position table starts small too


def test_experts_carry_script_pos_std_needs_emb_std(tmp_path):
    "--pos-std alone is refused before any work (it only refines --emb-std's small start)."
    r = subprocess.run([sys.executable, str(ROOT / "experiments/experts_carry.py"), "--preset", "tiny", "--pos-std", "0.02",
                        "--out", str(tmp_path / "e.json")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "--pos-std needs --emb-std" in r.stderr and not (tmp_path / "e.json").exists()


def test_experts_carry_script_bad_encoder_lr_mult(tmp_path):
    "A multiplier <= 0 is refused before any work, with no record written."
    r = subprocess.run([sys.executable, str(ROOT / "experiments/experts_carry.py"), "--preset", "tiny", "--encoder-lr-mult", "0",
                        "--out", str(tmp_path / "e.json")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "--encoder-lr-mult must be > 0" in r.stderr and not (tmp_path / "e.json").exists()
