"Experts as memory (moe_course.memorize): the fact table, equal-parameter models, the sweep and its record."
import json, subprocess, sys
from pathlib import Path

import pytest
import torch

from moe_course.memorize import (MEMORY_KINDS, MemoryMoE, make_facts, memorised, memorize_sweep, memory_model,
                                 plot_memory, summarize_memory, train_memory)
from moe_course.transformer import count_parameters

ROOT = Path(__file__).resolve().parents[1]


def test_facts_distinct_seeded_and_checked():
    f = make_facts(4096, key_len=3, vocab_size=16, num_labels=4, seed=3)
    keys = {tuple(k) for k in f["keys"].tolist()}
    assert len(keys) == 4096 and f["keys"].max() < 16 and f["labels"].max() < 4
    assert torch.equal(make_facts(4096, key_len=3, vocab_size=16, num_labels=4, seed=3)["keys"], f["keys"])
    assert not torch.equal(make_facts(4096, key_len=3, vocab_size=16, num_labels=4, seed=4)["keys"], f["keys"])
    assert make_facts(16 ** 3, key_len=3).keys() == f.keys()                     # the whole key space is allowed
    with pytest.raises(ValueError, match="distinct keys"): make_facts(16 ** 3 + 1, key_len=3)
    with pytest.raises(ValueError, match="positive int"): make_facts(10, vocab_size=0)


def test_embedding_is_position_aware():
    "Two keys that are permutations of each other get different embeddings (so position matters)."
    m = memory_model("hash", 1)
    a, b = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[4, 3, 2, 1]])
    with torch.no_grad(): assert not torch.allclose(m.eval()(a).logits, m(b).logits)
    with pytest.raises(ValueError, match="key_len=4"): m(torch.zeros(2, 5, dtype=torch.long))


@pytest.mark.parametrize("n", [2, 8])
def test_equal_active_and_total_parameters(n):
    p = {k: count_parameters(memory_model(k, n, d_model=16, d_ff=8, n_layers=2)) for k in MEMORY_KINDS}
    dense = count_parameters(memory_model("hash", 1, d_model=16, d_ff=8, n_layers=2))
    assert p["random"]["active"] == p["hash"]["active"] == dense["active"]
    assert p["switch"]["active"] == dense["active"] + 2 * 16 * n                     # + the routers (L d N)
    assert p["random"]["total"] - p["dense-total"]["total"] == 2 * (n - 1) * 16    # N-1 extra output biases
    assert p["dense-total"]["total"] == p["dense-total"]["active"]


def test_more_experts_memorise_more_same_seed_same_result():
    facts = make_facts(1024, seed=0)
    kw = dict(d_model=32, d_ff=16, n_layers=1)
    few = train_memory(memory_model("hash", 1, **kw), facts, epochs=15, batch_size=128)
    many = train_memory(memory_model("hash", 8, **kw), facts, epochs=15, batch_size=128)
    again = train_memory(memory_model("hash", 8, **kw), facts, epochs=15, batch_size=128)
    assert many["memorised"] > 1.3 * few["memorised"]
    assert again["memorised"] == many["memorised"] and again["final_loss"] == many["final_loss"]
    assert 0 <= few["fraction"] <= 1 and few["memorised"] == round(few["fraction"] * 1024)


def test_memorised_counts_correct_answers():
    facts = make_facts(64, seed=0)
    class Oracle(torch.nn.Module):  # answers from the table: memorises everything
        def forward(self, ids):
            hit = (ids[:, None, :] == facts["keys"][None]).all(-1).float().argmax(1)
            return type("O", (), dict(logits=torch.nn.functional.one_hot(facts["labels"][hit], 16).float()))
    assert memorised(Oracle(), facts, batch_size=10) == 64


def test_sweep_rows_summary_plot():
    rows = memorize_sweep(experts=(1, 2), kinds=("hash", "dense-total"), seeds=(0, 1), n_facts=256, epochs=1,
                          progress=False, d_model=16, d_ff=8)
    assert [(r["kind"], r["num_experts"], r["seed"]) for r in rows] == [
        ("dense", 1, 0), ("hash", 2, 0), ("dense-total", 2, 0), ("dense", 1, 1), ("hash", 2, 1), ("dense-total", 2, 1)]
    s = summarize_memory(rows)
    assert [(r["kind"], r["num_experts"], r["seeds"]) for r in s] == [("dense", 1, 2), ("hash", 2, 2), ("dense-total", 2, 2)]
    fig = plot_memory(rows)
    assert fig.axes[0].get_xscale() == "log"
    with pytest.raises(ValueError, match="unknown kinds"): memorize_sweep(kinds=("top2",))
    with pytest.raises(ValueError, match="kind must be"): memory_model("top2", 2)


def test_experiment_script_writes_stamped_record(tmp_path):
    out = tmp_path / "m.json"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "memorize.py"), "--seeds", "1", "--experts", "1", "2",
                    "--n-facts", "128", "--epochs", "1", "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    rec = json.loads(out.read_text())
    assert {"device", "commit", "wall_time_s", "rows", "summary"} <= rec.keys()
    assert len(rec["rows"]) == 5 and rec["settings"]["n_facts"] == 128
