"""Does a better language model make a better classifier? (chapter 19_experts_pay; the Switch paper's Table 5 question
at our scale.) Fine-tunes byte-level classifiers on IMDB from the backbones that experiments/experts_pay.py saved
(pretrained dense N=1 and pretrained MoE, equal active FLOPs) and the same shapes from scratch, several seeds each.

    python experiments/experts_pay_finetune.py --preset tiny               # seconds, sample data, random backbones
    nice -n 5 python experiments/experts_pay_finetune.py --preset cpu      # after experts_pay.py --preset cpu

Each review is its first `length` UTF-8 bytes, read by the LM's encoder in windows of its max_len. One epoch, fixed
schedule, no model selection: the test split is touched once, at the end. Writes results/experts_pay_finetune_<preset>.json
after every run (device, commit, wall time, load average).
"""
from __future__ import annotations
import argparse, json, os, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, find_data_dir  # experiments/common.py
from experts_pay import PRESETS as LM_PRESETS  # experiments/experts_pay.py: the backbone shapes

PRESETS = {
    "tiny": dict(length=64, epochs=1, batch_size=16, lr=2e-3, train_limit=256, test_limit=128, seeds=[0, 1]),
    "cpu": dict(length=256, epochs=1, batch_size=32, lr=1e-3, train_limit=10000, test_limit=5000, seeds=[0, 1, 2], threads=1),
    "gpu": dict(length=2048, epochs=3, batch_size=64, lr=5e-4, train_limit=None, test_limit=None, seeds=[0, 1, 2]),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--backbones", default=None, help="folder with N1/ and N<k>/ encoders (default runs/experts_pay_<preset>)")
    ap.add_argument("--dense", default="N1", help="the dense backbone's folder name")
    ap.add_argument("--pretrain-record", default=None, help="the pretraining record (default results/experts_pay_<preset>.json)")
    ap.add_argument("--moe", default=None, help="the MoE backbone's folder name (default: the pretraining record's best)")
    ap.add_argument("--out", default=None); ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--kinds", nargs="+", default=["pretrained MoE", "pretrained dense", "scratch MoE", "scratch dense"])
    ap.add_argument("--train-limit", type=int, default=None); ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--length", type=int, default=None); ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    import torch
    from moe_course.core import save_result
    from moe_course.data import as_texts, load_text_dataset
    from moe_course.experts_carry import ByteClassifier, byte_ids, finetune_bytes
    from moe_course.experts_pay import CausalLM
    from moe_course.pretrain import load_encoder, load_encoder_file, save_encoder
    from moe_course.transformer import count_parameters
    t_start, p, tiny = time.perf_counter(), dict(PRESETS[a.preset]), a.preset == "tiny"
    if a.threads or p.get("threads"): torch.set_num_threads(a.threads or p["threads"])   # 1 on a shared CPU
    for k in ("train_limit", "test_limit", "length"):
        if getattr(a, k) is not None: p[k] = getattr(a, k)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "moe_course_experts_pay"
    out = Path(a.out or (tmp if tiny else ROOT / "results") / f"experts_pay_finetune_{a.preset}.json")
    bb = Path(a.backbones or (tmp if tiny else ROOT / "runs") / f"experts_pay_{a.preset}")
    pre = {}
    pre_rec = Path(a.pretrain_record or (tmp if tiny else ROOT / "results") / f"experts_pay_{a.preset}.json")
    if pre_rec.exists(): pre = json.loads(pre_rec.read_text())
    moe_name = a.moe or pre.get("best", "N=8").replace("=", "")
    if tiny and not (bb / "N1").exists():          # random stand-ins, so the smoke test runs alone
        for n in (1, 4): torch.manual_seed(0); save_encoder(CausalLM(257, max_len=32, d_model=32, n_heads=2, d_ff=32, n_layers=1, num_experts=n), bb / f"N{n}")
        moe_name = "N4"
    dsd = load_text_dataset("imdb", source="sample") if tiny else load_text_dataset("imdb", source="local", data_dir=find_data_dir(a.data_dir))
    tr, te = dsd["train"].shuffle(seed=0), dsd["test"].shuffle(seed=0)
    if p["train_limit"]: tr = tr.select(range(min(p["train_limit"], len(tr))))
    if p["test_limit"]: te = te.select(range(min(p["test_limit"], len(te))))
    X, Y = byte_ids(as_texts(tr, "imdb"), p["length"]), torch.tensor(tr["label"])
    Xt, Yt = byte_ids(as_texts(te, "imdb"), p["length"]), torch.tensor(te["label"])
    backbones = {"dense": bb / a.dense, "MoE": bb / moe_name}
    run_name = lambda folder: folder.replace("N", "N=", 1).replace("_", " ").replace("seed", "seed=")   # N8_seed1 -> N=8 seed=1
    pre_s = {k: (pre.get("runs", {}).get(run_name(v.name), {}) or {}).get("seconds") for k, v in backbones.items()}
    rec = dict(experiment="experts_pay_finetune", preset=a.preset, settings=p, backbones={k: str(v.relative_to(ROOT)) if v.is_relative_to(ROOT) else v.name
               for k, v in backbones.items()}, pretraining_seconds=pre_s, pretraining_commit=pre.get("commit"),
               runs=[], loadavg=[], sample=tiny, references=dict(nbsvm=0.9148, seed_reference=0.8512, imdb_switch_cpu=0.8611))
    for seed in (a.seeds or p["seeds"]):
        for kind in a.kinds:
            which = "MoE" if kind.endswith("MoE") else "dense"
            if kind.startswith("scratch") and not (backbones[which] / "model.safetensors").exists():   # shape from the record
                n = int(backbones[which].name[1:].split("_")[0])
                state, cfg = None, (pre.get("settings") or LM_PRESETS[a.preset])["model"] | dict(num_experts=n, dropout=0.0)
            else: state, cfg = load_encoder_file(backbones[which])
            cfg = {k: v for k, v in cfg.items() if k != "vocab_size"}
            if p["length"] % cfg["max_len"]: raise SystemExit(f"--length must be a multiple of the backbone's max_len {cfg['max_len']}")
            torch.manual_seed(seed); model = ByteClassifier(257, 2, **cfg)
            if kind.startswith("pretrained"): load_encoder(model, state)
            model.to("cuda" if torch.cuda.is_available() else "cpu")
            r = finetune_bytes(model, X, Y, Xt, Yt, p["epochs"], p["batch_size"], p["lr"], seed=seed)
            rec["runs"].append(dict(kind=kind, seed=seed, num_experts=cfg.get("num_experts", 1), **count_parameters(model), **r))
            rec["loadavg"].append(os.getloadavg()[0])
            accs = {k: [x["test_accuracy"] for x in rec["runs"] if x["kind"] == k] for k in a.kinds}
            rec["summary"] = {k: dict(mean=statistics.mean(v), std=statistics.stdev(v) if len(v) > 1 else 0.0, n=len(v))
                              for k, v in accs.items() if v}
            save_result(out, rec, wall_time_s=time.perf_counter() - t_start)
            print(f"[{time.perf_counter() - t_start:5.0f}s load {os.getloadavg()[0]:.1f}] {kind} seed {seed}: "
                  f"test accuracy {r['test_accuracy']:.4f} ({r['seconds']:.0f} s)", flush=True)
    print(f"total {time.perf_counter() - t_start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
