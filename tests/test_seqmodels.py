"Tests for moe_course.seqmodels: the eight settings, masking of the Transformer/BERT settings, BERT loaders, suite."
import datasets
import matplotlib
matplotlib.use("Agg")
import pytest
import torch
from helpers import padded_batch
import torch.nn.functional as F

from moe_course.batching import make_loaders
from moe_course.seqmodels import (SETTINGS, build_model, get_setting, hf_loaders, load_bert, plot_curves,
                                  results_table, run_suite, setting_config, tiny_bert)

V = 80


def _batch(lengths, seed=0): return padded_batch(lengths, V, seed)


def _logits(out): return getattr(out, "logits", out)


@pytest.mark.parametrize("key", [1, 2, 3, 4, 5, 6, 7])
def test_padded_batch_equals_one_by_one(key):
    torch.manual_seed(0)
    model = build_model(key, V, max_len=32, d_model=16, d_ff=32, n_heads=2).eval()
    lengths = [5, 12, 1, 8]
    ids, mask = _batch(lengths)
    with torch.no_grad():
        batched = _logits(model(ids, mask))
        single = torch.cat([_logits(model(ids[i:i + 1, :n], mask[i:i + 1, :n])) for i, n in enumerate(lengths)])
        wider = _logits(model(F.pad(ids, (0, 4)), F.pad(mask, (0, 4))))
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(wider, batched, rtol=1e-4, atol=1e-5)


def _texts():
    return ["a great film with a good story", "bad plot and poor acting, a waste", "good fun", "not good at all"] * 10


def test_tiny_bert_masks_padding():
    model, tok = tiny_bert(_texts(), vocab_size=200, max_len=32)
    model.eval()
    enc = tok(["a great film", "bad plot and poor acting , a waste of time", "good"])["input_ids"]
    lengths = [len(x) for x in enc]
    ids = torch.zeros(3, max(lengths), dtype=torch.long)
    for i, x in enumerate(enc): ids[i, :len(x)] = torch.tensor(x)
    mask = ids.ne(tok.pad_token_id)
    with torch.no_grad():
        batched = model(ids, mask)
        single = torch.cat([model(ids[i:i + 1, :n], mask[i:i + 1, :n]) for i, n in enumerate(lengths)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    assert tok.pad_token_id == 0 and tok.cls_token_id == 2


def _dsd(n_train=60, n_test=20):
    t = _texts()
    mk = lambda n: datasets.Dataset.from_dict(dict(text=(t * 10)[:n], label=[int("good" in x and "not" not in x or "great" in x)
                                                                              for x in (t * 10)[:n]]))
    return datasets.DatasetDict(train=mk(n_train), test=mk(n_test))


def test_hf_loaders_split_like_make_loaders():
    dsd = _dsd()
    _, tok = tiny_bert(_texts(), vocab_size=200, max_len=32)
    hl = hf_loaders(dsd, "imdb", tok, max_len=32, batch_size=8, valid_frac=0.2, seed=3)
    ml = make_loaders(dsd, "imdb", max_len=32, batch_size=8, valid_frac=0.2, seed=3, vocab_size=200)
    for k in ("train", "valid", "test"):
        assert [it["labels"] for it in hl[k].dataset] == ml[k].dataset.labels
    b = next(iter(hl["train"]))
    assert b["attention_mask"].dtype == torch.bool and b["input_ids"][~b["attention_mask"]].eq(0).all()
    with pytest.raises(ValueError, match="valid_frac"): hf_loaders(dsd, "imdb", tok, valid_frac=0.0)


def test_registry_and_configs():
    assert [k for k in SETTINGS if k != "switch"] == list(range(1, 9))
    assert {SETTINGS[k]["model"].get("norm") for k in (5, 6, 7)} == {"pre", "post"}
    assert setting_config("switch").num_experts == 4 and setting_config("switch").aux_weight > 0
    assert setting_config(5).num_experts == 1 and setting_config(5).aux_weight == 0
    with pytest.raises(ValueError, match="unknown setting"): get_setting(9)
    with pytest.raises(ValueError, match="load_bert"): build_model(8, V)
    with pytest.raises(FileNotFoundError, match="MOE_COURSE_MODEL"): load_bert("/nonexistent/model-folder")


def test_run_suite_rows_table_and_failures():
    torch.set_num_threads(1)
    res = run_suite(_dsd(), "imdb", settings=(1, 5, 8), bert="/nonexistent/model-folder", max_len=16, batch_size=16,
                    vocab_size=200, d_model=8, d_ff=16, n_heads=2, epochs=2, keep=(1,), log=lambda s: None)
    rows = {r["setting"]: r for r in res["rows"]}
    assert rows[8]["status"].startswith("failed") and "nonexistent" in rows[8]["status"]
    for k in (1, 5):
        r = rows[k]
        assert r["status"] == "completed" and r["epochs"] == 2 and len(r["history"]) == 2
        assert r["best_valid_acc"] == max(h["valid_acc"] for h in r["history"])
        assert r["last_train_loss"] == r["history"][-1]["train_loss"]
        assert r["params"] == sum(p.numel() for p in build_model(k, res["tokenizer"].get_vocab_size(), 16, 8, 16, 2).parameters())
        assert r["eval_time_s"] > 0 and r["peak_memory_mb"] > 0 and 0 <= r["test_acc"] <= 1
    assert list(res["models"]) == [1]
    df = results_table(res["rows"])
    assert list(df.index) == [get_setting(k)["label"] for k in (1, 5, 8)] and "peak memory (MiB)" in df.columns
    fig = plot_curves(res["rows"])
    assert sum(ax.has_data() for ax in fig.axes) >= 2
    with pytest.raises(FileNotFoundError, match="MOE_COURSE_MODEL"):
        run_suite(_dsd(), "imdb", settings=(8,), bert="/nonexistent/model-folder", max_len=16, raise_errors=True,
                  log=lambda s: None)
    skipped = run_suite(_dsd(), "imdb", settings=(1,), time_budget_s=0, max_len=16, vocab_size=200, log=lambda s: None)
    assert skipped["rows"][0]["status"].startswith("skipped")


def test_experiment_script_arguments():
    import importlib.util, pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "sequence_models.py"
    spec = importlib.util.spec_from_file_location("sequence_models_script", path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    a = mod.parse_args(["--datasets", "amazon", "--settings", "1", "switch", "8"])
    assert a.datasets == ["amazon_polarity"] and a.settings == [1, "switch", 8] and a.robust_settings == [1, 4, 7, "switch"]
    q = mod.parse_args(["--quick"])
    assert q.model == "tiny" and q.data_dir is None and str(q.out_dir).startswith("/tmp") and q.max_train_samples == 400
    with pytest.raises(SystemExit): mod.parse_args(["--datasets", "sst2"])
    with pytest.raises(SystemExit): mod.parse_args(["--settings", "lstm"])
