"Chapter 18_pretrain (moe_course.pretrain): NBSVM, the MLM corpus and masking, encoder transfer, MLM loss, upcycling."
import json, math, subprocess, sys
from pathlib import Path

import datasets
import pytest
import torch

from moe_course.batching import CLS_ID, MASK_ID, PAD_ID, SEP_ID, collate_batch, encode_texts, train_tokenizer
from moe_course.config import get_config
from moe_course.data import as_texts, load_text_dataset
from moe_course.imdb import build_model
from moe_course.pretrain import (NBSVM, SwitchTransformerMLM, encoder_state_dict, expert_forward, load_encoder,
                                 load_encoder_file, mask_tokens, mlm_corpus, mlm_eval, mlm_model, pretrain_mlm,
                                 save_encoder, upcycle)
from moe_course.transformer import SwitchTransformerClassifier

ROOT = Path(__file__).resolve().parents[1]
KW = dict(max_len=64, d_model=32, n_heads=2, d_ff=48, n_layers=2, dropout=0.0)


@pytest.fixture(scope="module")
def sample():
    return load_text_dataset("imdb", source="sample")


def test_masking_rates():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(5, 5000, (128, 256), generator=g); x[:, 0] = CLS_ID; x[:, -1] = SEP_ID; x[::3, 100:] = PAD_ID
    ids, lab = mask_tokens(x, 5000, generator=torch.Generator().manual_seed(2))
    real = (x != PAD_ID) & (x != CLS_ID) & (x != SEP_ID); chosen = lab != -100
    assert abs(chosen.sum() / real.sum() - 0.15) < 0.005
    frac = lambda m: (m & chosen).sum() / chosen.sum()
    assert abs(frac(ids == MASK_ID) - 0.8) < 0.01
    changed_random = (ids != MASK_ID) & (ids != x)
    assert abs(frac(changed_random) - 0.1) < 0.01                        # random replacement (rarely equal to the original)
    assert abs(frac(ids == x) - 0.1) < 0.01                             # kept
    assert torch.equal(lab[chosen], x[chosen]) and not (chosen & ~real).any()
    assert torch.equal(ids[~chosen], x[~chosen])                          # nothing else changes
    assert ids[changed_random].min() >= 5 and ids.max() < 5000            # random tokens are never special
    _, lab2 = mask_tokens(x, 5000, mlm_prob=0.5, generator=torch.Generator().manual_seed(2))
    assert abs((lab2 != -100).sum() / real.sum() - 0.5) < 0.01


def test_masking_bad_input():
    x = torch.randint(5, 50, (2, 8))
    with pytest.raises(ValueError, match="mlm_prob"): mask_tokens(x, 50, mlm_prob=1.0)
    with pytest.raises(ValueError, match="mask_frac"): mask_tokens(x, 50, mask_frac=0.95, random_frac=0.1)
    with pytest.raises(TypeError, match="integer token ids"): mask_tokens(x.float(), 50)


def test_no_test_text_in_pretraining(sample):
    corpus = mlm_corpus(sample)
    assert corpus == as_texts(sample["train"], "imdb")                    # the train split, in order, nothing else
    assert set(corpus).isdisjoint(as_texts(sample["test"], "imdb"))
    # a split with a review shared by train and test (IMDB has 123): dropped from the corpus
    dup = sample["test"][0]["text"]
    train = datasets.Dataset.from_dict(dict(text=["a fine train review", dup], label=[1, 0]))
    test = datasets.Dataset.from_dict(dict(text=[dup, "only in test"], label=[0, 1]))
    dsd = datasets.DatasetDict(train=train, test=test)
    assert mlm_corpus(dsd) == ["a fine train review"]
    assert mlm_corpus(dsd, decontaminate=False) == ["a fine train review", dup]
    with pytest.raises(ValueError, match="'train' split"): mlm_corpus(datasets.DatasetDict(test=test))


def test_encoder_weights_carry_over_exactly(tmp_path):
    cfg = get_config("quick", vocab_size=300, num_experts=4, n_layers=2)
    mlm = mlm_model(cfg, 300)
    with torch.no_grad():                                                  # "pretrained": move every weight
        for p in mlm.parameters(): p.add_(torch.randn_like(p))
    clf = build_model(cfg, 300, 2)
    enc = encoder_state_dict(mlm)
    assert set(enc) == set(clf.state_dict()) - {"head.weight", "head.bias"}
    save_encoder(mlm, tmp_path / "enc")
    assert load_encoder(clf, tmp_path / "enc") == ["head.weight", "head.bias"]
    sd = clf.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in enc.items())
    state, conf = load_encoder_file(tmp_path / "enc")
    assert conf["num_experts"] == 4 and set(state) == set(enc)
    with torch.no_grad():                                                  # same encoder -> same hidden states
        ids = torch.randint(5, 300, (2, 10))
        h = lambda m: m.norm(m.blocks[1](m.blocks[0](m.embedding(ids))[0])[0])
        assert torch.allclose(h(mlm.eval()), h(clf.eval()))


def test_load_encoder_mismatch_and_missing(tmp_path):
    mlm = SwitchTransformerMLM(300, **KW)
    with pytest.raises(ValueError, match="does not match"):
        load_encoder(SwitchTransformerClassifier(300, **(KW | dict(n_layers=1))), encoder_state_dict(mlm))
    with pytest.raises(FileNotFoundError, match="model.safetensors"): load_encoder_file(tmp_path)
    with pytest.raises(TypeError, match="num_classes"): SwitchTransformerMLM(300, num_classes=2)


def test_mlm_loss_falls_on_sample(sample):
    corpus = mlm_corpus(sample)
    tok = train_tokenizer(corpus[:1500], vocab_size=1500)
    V = tok.get_vocab_size()
    torch.manual_seed(0)
    model = SwitchTransformerMLM(V, **(KW | dict(num_experts=2, n_layers=1)))
    valid = [collate_batch([dict(input_ids=x, labels=0) for x in encode_texts(tok, corpus[1500:1564], 64)])]
    before = mlm_eval(model, valid, V)
    r = pretrain_mlm(model, tok, corpus[:1500], steps=40, batch_size=32, max_len=64, lr=3e-3, eval_every=20,
                     valid_texts=corpus[1500:1564], progress=False)
    after = mlm_eval(model, valid, V)
    assert after < before - 0.2 and after < math.log(V)
    assert r["steps"] == 40 and [h["step"] for h in r["history"]] == [20, 40]
    assert 0 < r["unigram_entropy"] < math.log(V)
    with pytest.raises(ValueError, match="steps"): pretrain_mlm(model, tok, corpus[:10], steps=0)


def test_upcycled_experts_start_equal_to_dense_ffn():
    torch.manual_seed(0)
    dense = SwitchTransformerMLM(200, **(KW | dict(num_experts=1)))
    up = upcycle(dense, 4, seed=1)
    x = torch.randn(7, 32)
    for bd, bm in zip(dense.blocks, up.blocks):
        assert bm.ffn.num_experts == 4
        for i in range(4): assert torch.allclose(expert_forward(bm.ffn, i, x), bd.ffn(x), atol=1e-6)
    sd = up.state_dict()
    for k, v in dense.state_dict().items():                                # everything but the FFNs copied as is
        if ".ffn." not in k: assert torch.equal(sd[k], v), k
    assert up.config["num_experts"] == 4 and dense.config["num_experts"] == 1
    with pytest.raises(ValueError, match="dense model"): upcycle(up, 8)
    with pytest.raises(ValueError, match="num_experts >= 2"): upcycle(dense, 1)


def test_nbsvm_synthetic_and_errors():
    pos = ["great fun", "really great", "fun and great", "a great film"] * 5
    neg = ["dull and bad", "bad film", "really bad", "so dull"] * 5
    nb = NBSVM().fit(pos + neg, [1] * 20 + [0] * 20)
    assert nb.predict(["great", "bad"]).tolist() == [1, 0]
    vocab = nb.vec.vocabulary_
    assert nb.r[vocab["great"]] > 0 > nb.r[vocab["bad"]]                 # NB log-count ratios point the right way
    assert nb.evaluate(pos + neg, [1] * 20 + [0] * 20)["accuracy"] == 1.0
    with pytest.raises(ValueError, match="binary"): NBSVM().fit(["a b", "c d"], [0, 2])
    with pytest.raises(ValueError, match="must be > 0"): NBSVM(C=0)
    with pytest.raises(TypeError, match="list of texts"): nb.predict("great")


def test_nbsvm_script_on_sample(tmp_path):
    out = tmp_path / "nb.json"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "nbsvm_imdb.py"), "--sample", "--out", str(out)],
                   check=True, capture_output=True, cwd=ROOT)
    rec = json.loads(out.read_text())
    assert {"device", "commit", "wall_time_s"} <= rec.keys() and rec["sizes"]["test"] == 1000
    assert 0.5 < rec["test"]["accuracy"] <= 1 and rec["sample"] is True


def test_pretrain_script_tiny(tmp_path):
    out = tmp_path / "p.json"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "pretrain_imdb.py"), "--preset", "tiny", "--steps", "4",
                    "--out", str(out), "--run-dir", str(tmp_path / "run"), "--threads", "1"],
                   check=True, capture_output=True, cwd=ROOT)
    rec = json.loads(out.read_text())
    assert rec["mlm"]["main"]["steps"] == 4 and rec["finetune"]["pretrained"] is True
    assert 0 <= rec["finetune"]["test"]["accuracy"] <= 1
    assert (tmp_path / "run" / "encoder" / "model.safetensors").exists()
