"Tests of the training engine (moe_course.learner) on a tiny model: learning, seeds, resume, NaN stop, two processes."
import json, math, os, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch
from moe_course.config import get_config, TrainConfig
from moe_course.data import set_seed
from moe_course.learner import fit, NonFiniteLoss
from moe_course.optim import TinyTextClassifier, synthetic_loaders, classification_metrics

ROOT = Path(__file__).resolve().parents[1]
# metrics that must match between runs (timings and throughput differ)
KEYS = ("train_loss", "train_acc", "valid_loss", "valid_acc", "valid_f1", "lr")

def _run(tmp, epochs=4, resume=False, callbacks=(), model=None, **kw):
    cfg = get_config("quick", epochs=epochs, lr=1e-2, patience=0, **kw)
    set_seed(cfg.seed)
    model = model or TinyTextClassifier()
    return fit(model, synthetic_loaders(n_train=256, n_valid=96, n_test=96), cfg, out_dir=tmp, resume=resume,
               callbacks=callbacks)

def _metrics(res): return [[h[k] for k in KEYS] for h in res["history"]]

def test_learns_and_writes_outputs(tmp_path):
    res = _run(tmp_path)
    h = res["history"]
    assert res["status"] == "completed" and len(h) == 4
    assert h[-1]["train_loss"] < h[0]["train_loss"] and h[-1]["valid_loss"] < h[0]["valid_loss"]
    assert res["test"]["accuracy"] > 0.6  # chance is 0.5
    for f in ("metrics.json", "curves.png", "last.pt"): assert (tmp_path / f).exists()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"]["accuracy"] == res["test"]["accuracy"] and len(saved["history"]) == 4
    assert (tmp_path / "curves.png").stat().st_size < 200_000
    for k in ("tokens_per_s", "epoch_time_s", "valid_f1", "aux_loss", "lr"): assert k in h[0]

def test_same_seed_same_metrics(tmp_path):
    a, b = _run(tmp_path / "a", epochs=2), _run(tmp_path / "b", epochs=2)
    assert _metrics(a) == _metrics(b) and a["test"] == b["test"]
    c = _run(tmp_path / "c", epochs=2, seed=1)
    assert _metrics(c) != _metrics(a)

def test_resume_after_interruption(tmp_path):
    full = _run(tmp_path / "full", scheduler="plateau", plateau_patience=0)
    part = _run(tmp_path / "res", scheduler="plateau", plateau_patience=0, max_epochs_this_run=2)
    assert part["status"] == "interrupted" and part["epochs_run"] == 2 and part["test"] is None
    # a second interruption, this time by an exception raised from a callback (like a kill mid-run)
    def boom(row):
        if row["epoch"] == 3: raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): _run(tmp_path / "res", scheduler="plateau", plateau_patience=0, resume=True, callbacks=[boom])
    done = _run(tmp_path / "res", scheduler="plateau", plateau_patience=0, resume=True)
    assert done["epochs_run"] == full["epochs_run"] == 4
    assert _metrics(done) == _metrics(full) and done["test"] == full["test"]
    # resuming a finished run trains no more epochs
    again = _run(tmp_path / "res", scheduler="plateau", plateau_patience=0, resume=True)
    assert again["epochs_run"] == 4 and again["test"] == full["test"]

def test_resume_needs_out_dir():
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        fit(TinyTextClassifier(), synthetic_loaders(n_train=32, n_valid=32, n_test=32), get_config("quick"), resume=True)

class NaNAfter(TinyTextClassifier):
    "Returns NaN logits once `poisoned` is set."
    poisoned = False
    def forward(self, input_ids, attention_mask=None):
        out = super().forward(input_ids, attention_mask)
        return out * float("nan") if self.poisoned else out

def test_nan_stops_cleanly_and_keeps_last_good_checkpoint(tmp_path, capsys):
    set_seed(0); m = NaNAfter()
    def poison(row):
        if row["epoch"] == 2: m.poisoned = True
    res = _run(tmp_path, model=m, callbacks=[poison])
    assert res["status"] == "non-finite" and res["epochs_run"] == 2 and res["test"] is None
    assert "Stopped in epoch 3" in res["message"] and "nan" in res["message"] and "last good checkpoint" in res["message"]
    assert "Stopped in epoch 3" in capsys.readouterr().out
    ck = torch.load(tmp_path / "last.pt", weights_only=False)
    assert ck["epoch"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values())

def test_classification_metrics():
    m = classification_metrics(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 1, 0, 1]))
    assert m["accuracy"] == 0.75 and math.isclose(m["f1_pos"], 0.8) and math.isclose(m["f1"], (2 / 3 + 0.8) / 2)
    with pytest.raises(ValueError, match="predictions but"): classification_metrics(torch.tensor([0]), torch.tensor([0, 1]))

def test_config_errors():
    with pytest.raises(ValueError, match="router='top2' is not one of"): get_config(router="top2")
    with pytest.raises(TypeError, match="did you mean 'epochs'"): get_config(epoch=3)
    with pytest.raises(ValueError, match="Unknown preset"): get_config("gpu-please")
    with pytest.raises(ValueError, match="divisible by n_heads"): TrainConfig(d_model=30, n_heads=4)

DDP_SCRIPT = textwrap.dedent('''
    import json, sys
    from accelerate import PartialState
    from moe_course.config import get_config
    from moe_course.data import set_seed
    from moe_course.learner import fit
    from moe_course.optim import TinyTextClassifier, synthetic_loaders
    from torch.utils.data import DataLoader
    from moe_course.batching import LengthBucketSampler
    cfg = get_config("quick", epochs=2, lr=1e-2, patience=0, num_experts=1)
    set_seed(0)
    dls = synthetic_loaders(n_train=250, n_valid=90, n_test=90)
    tr = dls["train"].dataset  # length-bucketed batches: the one short batch comes last
    lens = [int(it["attention_mask"].sum()) for it in tr]
    dls["train"] = DataLoader(tr, batch_sampler=LengthBucketSampler(lens, 32, seed=0), collate_fn=dls["train"].collate_fn)
    res = fit(TinyTextClassifier(), dls, cfg, out_dir=sys.argv[1] + "/run")
    st = PartialState()
    json.dump(dict(world=st.num_processes, history=res["history"], test=res["test"]),
              open(f"{sys.argv[1]}/rank{st.process_index}.json", "w"))
''')

def test_two_process_cpu_run_agrees(tmp_path):
    script = tmp_path / "ddp_fit.py"; script.write_text(DDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert a["world"] == b["world"] == 2
    assert _metrics(a) == _metrics(b) and a["test"] == b["test"]
    assert len(a["history"]) == 2 and a["test"]["accuracy"] > 0
    assert all(h["train_samples"] >= 250 for h in a["history"])  # every training sample reached a process

def test_tiny_model_learns_on_imdb_sample():
    from moe_course.data import load_text_dataset
    from moe_course.imdb import build_loaders
    cfg = get_config("quick", epochs=3, lr=1e-2, max_len=128, patience=0)
    dls = build_loaders(cfg, dsd=load_text_dataset("imdb", source="sample"))
    set_seed(0)
    res = fit(TinyTextClassifier(dls["tokenizer"].get_vocab_size(), 32), dls, cfg)
    h = res["history"]
    assert h[-1]["train_loss"] < h[0]["train_loss"] and res["test"]["accuracy"] > 0.6, (h, res["test"])


def test_augmentation_uses_deletion_swap_and_replacement_from_training_vocab():
    from moe_course.data import load_text_dataset
    from moe_course.imdb import build_loaders
    dsd = load_text_dataset("imdb", source="sample")
    dsd["train"] = dsd["train"].select(range(40))
    cfg = get_config("quick", augment=True, aug_p_delete=0.0, aug_n_swap=0, aug_p_replace=0.5)
    aug = build_loaders(cfg, dsd=dsd)["train"].dataset.augment
    assert aug.keywords["p_replace"] == 0.5 and aug.keywords["vocab"]
    vocab = set(aug.keywords["vocab"])
    out = aug.func("a completely ordinary sentence", 0, **{**aug.keywords, "p_replace": 1.0}).split()
    assert len(out) == 4 and all(w in vocab for w in out)
    off = build_loaders(get_config("quick", augment=True, aug_p_replace=0.0), dsd=dsd)["train"].dataset.augment
    assert off.keywords["vocab"] is None


class NoisyTiny(TinyTextClassifier):
    "TinyTextClassifier that adds noise from its own torch.Generator in `_gen` (as the ViT's BatchAugment does)."
    def __init__(self):
        super().__init__(); self._gen = None
    def forward(self, input_ids, attention_mask=None):
        out = super().forward(input_ids, attention_mask)
        if not self.training: return out
        if self._gen is None: self._gen = torch.Generator().manual_seed(5)
        return out + 0.5 * torch.randn(out.shape, generator=self._gen)

def _switch_model(**kw):
    from moe_course.transformer import SwitchTransformerClassifier
    torch.manual_seed(0)
    return SwitchTransformerClassifier(100, max_len=24, d_model=16, n_heads=2, d_ff=32, n_layers=1, num_experts=4, **kw)

def _noisy():
    torch.manual_seed(0); return NoisyTiny()

@pytest.mark.parametrize("make", [_noisy, lambda: _switch_model(router="random")])
def test_resume_restores_module_random_streams(tmp_path, make):
    "A module generator (saved with its device) and the random router's `draws` buffer (in the state_dict) resume exactly."
    full = _run(tmp_path / "full", model=make())
    _run(tmp_path / "res", model=make(), max_epochs_this_run=2)
    s = torch.load(tmp_path / "res" / "last.pt", weights_only=False)
    if make is _noisy: assert s["generators"][""]["device"] == "cpu"
    else: assert s["model"]["blocks.0.ffn.router.draws"].item() > 0
    done = _run(tmp_path / "res", model=make(), resume=True)
    assert _metrics(done) == _metrics(full) and done["test"] == full["test"]

def test_compile_trains_like_eager(tmp_path):
    "cfg.compile compiles the model in place (same state_dict keys); the metrics match eager training."
    eager = _run(tmp_path / "e", epochs=1, model=_switch_model(dropout=0.0), checkpoint=False)   # dropout: RNG differs
    torch._dynamo.reset()
    model = _switch_model(dropout=0.0)
    comp = _run(tmp_path / "c", epochs=1, model=model, checkpoint=False, compile=True)
    for a, b in zip(_metrics(eager)[0], _metrics(comp)[0]): assert a == pytest.approx(b, rel=1e-3, abs=1e-4)
    assert comp["test"]["accuracy"] == pytest.approx(eager["test"]["accuracy"], abs=0.02)
    assert "blocks.0.ffn.experts.w1" in model.state_dict()

# --- checkpoints hold only data: loaded with weights_only=True ------------------------------------------------------
class _Payload:
    "What a hostile checkpoint holds: unpickling it runs a shell command that writes `path`."
    def __init__(self, path): self.path = path
    def __reduce__(self): return (os.system, (f"echo ran > {self.path}",))

def test_checkpoint_loads_with_weights_only(tmp_path):
    _run(tmp_path, epochs=1)
    s = torch.load(tmp_path / "last.pt", weights_only=True)              # tensors and plain Python only
    assert s["epoch"] == 1 and isinstance(s["rng"]["python"], list) and torch.is_tensor(s["rng"]["numpy"][1])

def test_resume_refuses_a_checkpoint_that_holds_code(tmp_path):
    marker, run = tmp_path / "pwned.txt", tmp_path / "run"
    run.mkdir(); torch.save({"model": _Payload(marker)}, run / "last.pt")
    with pytest.raises(ValueError, match="tampered with"): _run(run, epochs=1, resume=True)
    assert not marker.exists()                                           # nothing ran

def test_resume_from_a_truncated_checkpoint_says_so(tmp_path):
    _run(tmp_path, epochs=2, max_epochs_this_run=1)
    ck = tmp_path / "last.pt"; ck.write_bytes(ck.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cut short"): _run(tmp_path, epochs=2, resume=True)

def test_fit_refuses_a_used_folder_and_a_changed_config(tmp_path):
    _run(tmp_path, epochs=2, max_epochs_this_run=1)
    with pytest.raises(ValueError, match="is not empty"): _run(tmp_path, epochs=2)          # a second run, no flag
    with pytest.raises(ValueError, match=r"lr 0.01 -> 0.05"):                               # resume, another lr
        fit(TinyTextClassifier(), synthetic_loaders(n_train=256, n_valid=96, n_test=96),
            get_config("quick", epochs=2, lr=0.05, patience=0), out_dir=tmp_path, resume=True)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1                # untouched
