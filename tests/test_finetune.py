"Tests of moe_course.lora and moe_course.finetune: hand LoRA vs peft, merging, BitFit counts, a tiny Trainer run."
import copy

import numpy as np
import pytest
import torch
from torch import nn

from moe_course.lora import LoRALinear, copy_lora_weights, lora_param_count, peft_lora_linear
from moe_course.finetune import (apply_bitfit, apply_lora, compute_metrics, finetune, load_model, lora_targets,
                                 make_method, parameter_table, results_table, tiny_roberta, tokenize_task,
                                 trainable_parameters, load_task)


@pytest.fixture(autouse=True)
def one_thread():
    "The test machine's cores are shared; one torch thread avoids oversubscription stalls."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sst():
    return load_task("sst2", sample=True)


@pytest.fixture(scope="module")
def texts(sst):
    return sst["train"]["sentence"][:1000]


@pytest.fixture
def tiny(texts):
    return tiny_roberta(texts, vocab_size=500)


# ---------------------------------------------------------------- hand LoRA
@pytest.mark.parametrize("r,alpha", [(1, 1), (2, 8), (8, 16)])
def test_hand_lora_equals_peft(r, alpha):
    torch.manual_seed(r)
    base = nn.Linear(12, 7)
    pl = peft_lora_linear(base, r=r, alpha=alpha)
    with torch.no_grad(): pl.lora_B["default"].weight.normal_()  # a "trained" B (peft starts it at zero)
    mine = copy_lora_weights(pl, LoRALinear(base, r=r, alpha=alpha))
    x = torch.randn(5, 3, 12)
    torch.testing.assert_close(mine(x), pl(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine.delta_weight(), pl.get_delta_weight("default"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine.merged()(x), pl(x), rtol=1e-5, atol=1e-5)


def test_hand_lora_starts_at_base_and_counts():
    base = nn.Linear(10, 6)
    lora = LoRALinear(base, r=3, alpha=6, seed=1)
    x = torch.randn(4, 10)
    torch.testing.assert_close(lora(x), base(x))
    assert lora.scaling == 2.0
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert trainable == lora_param_count(10, 6, 3) == 3 * (10 + 6)
    assert not any(p.requires_grad for p in lora.base.parameters())
    # gradients reach A only through B, which is zero, but B gets a gradient: training can start
    lora(x).sum().backward()
    assert lora.lora_B.grad.abs().sum() > 0 and lora.lora_A.grad.abs().sum() == 0


def test_hand_lora_seeded_and_bad_input():
    base = nn.Linear(4, 4)
    torch.testing.assert_close(LoRALinear(base, seed=3).lora_A, LoRALinear(base, seed=3).lora_A)
    with pytest.raises(ValueError, match="positive int"): LoRALinear(base, r=0)
    with pytest.raises(TypeError, match="nn.Linear"): LoRALinear(nn.Conv1d(2, 2, 1))


# ---------------------------------------------------------------- peft LoRA on a model
def test_merged_lora_gives_same_logits(tiny):
    model, tok = tiny
    pm = apply_lora(model, r=4).eval()
    with torch.no_grad():  # move away from the B=0 start so merging actually changes the weights
        for n, p in pm.named_parameters():
            if "lora_B" in n: p.normal_(std=0.5)
    batch = tok(["a gripping , funny film", "dull and long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        adapter = pm(**batch).logits
        merged_model = copy.deepcopy(pm).merge_and_unload().eval()
        merged = merged_model(**batch).logits
    assert not any("lora" in n for n, _ in merged_model.named_parameters())
    torch.testing.assert_close(merged, adapter, rtol=1e-4, atol=1e-5)


def test_lora_trainable_count(tiny):
    model, _ = tiny
    cfg = model.config
    d, L, r = cfg.hidden_size, cfg.num_hidden_layers, 2
    head = sum(p.numel() for p in model.classifier.parameters())
    pm = apply_lora(model, r=r)
    assert trainable_parameters(pm)["trainable"] == L * 2 * r * (d + d) + head  # query + value, plus the head


def test_lora_targets_and_errors():
    assert lora_targets(type("M", (), {"config": type("C", (), {"model_type": "bert"})()})()) == ["query", "value"]
    with pytest.raises(ValueError, match="target_modules"): lora_targets(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="positive int"): apply_lora(nn.Linear(2, 2), r=0)


# ---------------------------------------------------------------- BitFit
def test_bitfit_trainable_is_bias_plus_head(tiny):
    model, _ = tiny
    n_bias = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias") and not n.startswith("classifier."))
    n_head = sum(p.numel() for p in model.classifier.parameters())
    apply_bitfit(model)
    assert trainable_parameters(model)["trainable"] == n_bias + n_head
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(not n.endswith("bias") and not n.startswith("classifier.") for n in frozen)


def test_bitfit_needs_a_head():
    with pytest.raises(ValueError, match="head"): apply_bitfit(nn.Sequential(nn.Linear(2, 2)))


def test_parameter_table(texts):
    rows = parameter_table(lambda: tiny_roberta(texts, vocab_size=500)[0], ranks=(1, 2, 4))
    full, *loras, bitfit = rows
    assert full["method"] == "full" and full["trainable"] == full["total"]
    assert [r["r"] for r in loras] == [1, 2, 4]
    steps = np.diff([r["trainable"] for r in loras])
    assert steps[1] == 2 * steps[0] > 0  # linear in r
    assert 0 < bitfit["trainable"] < full["trainable"]


# ---------------------------------------------------------------- data, metrics, errors
def test_compute_metrics_matches_definition():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(200, 2)), rng.integers(0, 2, 200)
    m = compute_metrics((logits, labels))
    pred = logits.argmax(-1)
    tp, fp, fn = ((pred == 1) & (labels == 1)).sum(), ((pred == 1) & (labels == 0)).sum(), ((pred == 0) & (labels == 1)).sum()
    assert m["accuracy"] == pytest.approx((pred == labels).mean())
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    sklearn = pytest.importorskip("sklearn.metrics")
    assert m["f1"] == pytest.approx(sklearn.f1_score(labels, pred))


def test_tokenize_pairs(tiny):
    _, tok = tiny
    rte = load_task("rte", sample=True)["validation"].select(range(8))
    out = tokenize_task(rte, tok, "rte", max_length=16)
    assert sorted(out.column_names) == ["attention_mask", "input_ids", "labels"]
    assert max(len(x) for x in out["input_ids"]) <= 16
    assert out[0]["input_ids"][0] == tok.cls_token_id


def test_bad_names_raise_clear_errors(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="unknown method 'adapters'"): make_method(model, "adapters")
    with pytest.raises(ValueError, match="unknown method"): finetune("tiny-roberta", "sst2", "prefix", sample=True)
    with pytest.raises(ValueError, match="unknown task 'cola'"): finetune("tiny-roberta", "cola", "lora", sample=True)
    with pytest.raises(FileNotFoundError, match="could not load"): load_model("/nonexistent/model-dir")
    with pytest.raises(ValueError, match="texts"): load_model("tiny-roberta")


def test_results_table_without_and_with_records(tmp_path):
    tab = results_table(folder=tmp_path)
    assert "measured" not in tab and {"reference", "published"} <= set(tab.columns)
    rec = dict(runs=[dict(task="sst2", method="lora", r=2, accuracy=0.9, model="/x/m", trainable=dict(trainable=7),
                          wall_time_s=3.0),
                     dict(task="sst2", method="lora", r=8, accuracy=0.1, model="/x/m", trainable=dict(trainable=9),
                          wall_time_s=3.0)])
    row = results_table([rec]).set_index(["task", "method"]).loc[("sst2", "lora")]
    assert row["measured"] == 90.0 and row["reference"] == 92.32 and row["published"] == 95.1


# ---------------------------------------------------------------- a tiny Trainer run
def test_tiny_trainer_run_lowers_loss(tmp_path):
    run = finetune("tiny-roberta", "sst2", "full", max_train_samples=256, max_eval_samples=64, max_steps=96,
                   grad_accum=1, warmup_steps=10, lr=3e-3, sample=True, output_dir=tmp_path / "out", seed=0)
    assert run["steps"] == 96
    assert run["probe_loss_end"] < run["probe_loss_start"] - 0.05
    assert 0 <= run["accuracy"] <= 1 and 0 <= run["f1"] <= 1
    assert run["trainable"]["trainable"] == run["trainable"]["total"] and run["wall_time_s"] > 0
    assert list((tmp_path / "out").glob("checkpoint-*"))  # saved, and the best one reloaded


def test_tiny_lora_run_on_pairs_trains_only_adapters(tmp_path):
    # epoch mode: evaluate + save each epoch, reload the best checkpoint by accuracy at the end
    run = finetune("tiny-roberta", "rte", "lora", r=2, max_train_samples=32, max_eval_samples=32, epochs=2,
                   grad_accum=1, warmup_steps=0, sample=True, seed=0, output_dir=tmp_path / "out")
    assert run["steps"] == 4 and run["epochs"] == 2 and run["r"] == 2 and run["task"] == "rte"
    assert len(list((tmp_path / "out").glob("checkpoint-*"))) == 2
    assert 0 < run["trainable"]["percent"] < 100
