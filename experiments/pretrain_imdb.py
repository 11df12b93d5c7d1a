"""MLM pretraining of the Switch Transformer encoder on the IMDB *train* reviews, then fine-tuning (chapter
18_pretrain); optionally sparse upcycling vs MoE from scratch at equal steps, and the MLM expert-scaling curve.

    python experiments/pretrain_imdb.py --preset tiny                     # CPU smoke test on the sample (-> /tmp)
    python experiments/pretrain_imdb.py --preset cpu                      # full data, CPU
    python experiments/pretrain_imdb.py --preset gpu --time-budget-s 480  # full data, one GPU (goal >= 91.3%)
    python experiments/pretrain_imdb.py --preset gpu --upcycle --scaling 1 2 4 8   # + the two studies

Writes results/pretrain_imdb_<preset>.json (moe_course.core.save_result: device, commit, wall time), rewritten
after every stage. The test split is never used before the final evaluation: the tokenizer and the MLM corpus
come from the train split only (mlm_corpus also drops the train reviews that occur verbatim in test).
"""
from __future__ import annotations
import argparse, dataclasses, os, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, find_data_dir  # experiments/common.py

# fine-tuning config (a TrainConfig preset + overrides) and MLM settings of each preset
PRESETS = {
    "tiny": dict(train=("quick", dict(source="sample", max_len=64, vocab_size=2000, d_model=32, n_heads=2, d_ff=64,
                                      num_experts=2, epochs=1, fgm=True, label_smoothing=0.1, patience=1)),
                 mlm=dict(steps=30, batch_size=32, max_len=64, lr=3e-3, eval_every=15, max_time_s=120),
                 side_steps=10),
    "cpu": dict(train=("imdb-switch-cpu", {}),
                mlm=dict(steps=1500, batch_size=64, max_len=128, lr=2e-3, eval_every=250, max_time_s=420),
                side_steps=300),
    "gpu": dict(train=("imdb-switch-gpu", dict(d_model=256, n_heads=4, d_ff=512, n_layers=4, num_experts=8, epochs=3,
                                               lr=5e-4, batch_size=64, fgm=True, label_smoothing=0.1, patience=0)),
                mlm=dict(steps=20000, batch_size=128, max_len=256, lr=1e-3, eval_every=500, max_time_s=240),
                side_steps=2000),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--data-dir", default=None, help="folder with imdb/{train,test}.parquet (default $MOE_COURSE_DATA)")
    ap.add_argument("--out", default=None, help="record (default results/pretrain_imdb_<preset>.json; tiny: /tmp)")
    ap.add_argument("--run-dir", default=None, help="where the encoder is saved (default runs/pretrain_imdb_<preset>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="MLM steps of the main run (default: the preset's)")
    ap.add_argument("--no-pretrain", action="store_true", help="fine-tune from scratch (the baseline)")
    ap.add_argument("--upcycle", action="store_true", help="dense -> upcycled MoE vs MoE from scratch at equal steps")
    ap.add_argument("--scaling", type=int, nargs="*", default=None, help="MLM valid loss for these expert counts")
    ap.add_argument("--time-budget-s", type=float, default=None, help="skip the optional studies once this is spent")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = ap.parse_args(argv)
    import torch
    from moe_course.batching import train_tokenizer
    from moe_course.config import get_config
    from moe_course.core import device_info, save_result
    from moe_course.data import load_text_dataset
    from moe_course.pretrain import (encoder_state_dict, finetune, mlm_corpus, mlm_model, pretrain_mlm, save_encoder,
                                     upcycle)
    if a.threads: torch.set_num_threads(a.threads)
    t_start = time.perf_counter(); p = PRESETS[a.preset]
    tiny = a.preset == "tiny"
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "moe_course_pretrain"
    out = Path(a.out or (tmp if tiny else ROOT / "results") / f"pretrain_imdb_{a.preset}.json")
    run_dir = Path(a.run_dir or (tmp if tiny else ROOT / "runs") / f"pretrain_imdb_{a.preset}")
    if tiny: dsd = load_text_dataset("imdb", source="sample"); extra = {}
    else:
        d = find_data_dir(a.data_dir)
        if d is None: raise SystemExit("No IMDB data found: pass --data-dir or set MOE_COURSE_DATA")
        dsd = load_text_dataset("imdb", source="local", data_dir=d); extra = dict(source="local", data_dir=d)
    preset, ov = p["train"]
    cfg = get_config(preset, **(ov | extra), seed=a.seed, progress=False, checkpoint=False)
    mlm_kw = dict(p["mlm"], steps=a.steps or p["mlm"]["steps"])
    corpus = mlm_corpus(dsd)
    n_valid = max(1, len(corpus) // 100)                    # 1% of the corpus measures the MLM loss
    mlm_train, mlm_valid = corpus[n_valid:], corpus[:n_valid]
    t0 = time.perf_counter()
    tok = train_tokenizer(mlm_train, vocab_size=cfg.vocab_size)
    V = tok.get_vocab_size()
    print(f"{device_info()['device']}: corpus {len(corpus)} train reviews ({len(dsd['train']) - len(corpus)} dropped as "
          f"duplicates of test reviews); tokenizer {V} tokens in {time.perf_counter() - t0:.0f} s", flush=True)
    rec = dict(experiment="pretrain_imdb", preset=a.preset, seed=a.seed, finetune_config=cfg.to_dict(), mlm_settings=mlm_kw,
               corpus=dict(reviews=len(mlm_train), valid_reviews=n_valid, dropped_test_duplicates=len(dsd["train"]) - len(corpus)),
               mlm={}, reference=dict(nbsvm_paper=0.9122, seed_reference=0.8512, goal=0.913), sample=tiny)
    save = lambda: save_result(out, rec, wall_time_s=time.perf_counter() - t_start)
    left = lambda: None if a.time_budget_s is None else a.time_budget_s - (time.perf_counter() - t_start)
    mlm = lambda model, steps, seed=a.seed, init_bias=True: pretrain_mlm(model, tok, mlm_train, **(mlm_kw | dict(steps=steps)),
        valid_texts=mlm_valid, seed=seed, progress=False, init_bias=init_bias)

    encoder = None
    if not a.no_pretrain:
        torch.manual_seed(a.seed); model = mlm_model(cfg, V)
        r = mlm(model, mlm_kw["steps"]); rec["mlm"]["main"] = r
        print(f"MLM: {r['steps']} steps in {r['wall_time_s']:.0f} s, valid loss {r['history'][-1].get('valid_loss'):.3f} "
              f"(unigram entropy {r['unigram_entropy']:.3f})", flush=True)
        save_encoder(model, run_dir / "encoder", tok); encoder = encoder_state_dict(model); save()
    res = finetune(cfg, encoder, tok=tok, dsd=dsd)
    rec["finetune"] = {k: res.get(k) for k in ("status", "test", "best", "history", "params", "pretrained", "wall_time_s")}
    print(f"fine-tuned: test accuracy {(res['test'] or {}).get('accuracy')} ({res['wall_time_s']:.0f} s)", flush=True)
    save()

    steps2 = p["side_steps"]
    if a.upcycle and (left() is None or left() > 0):
        dense_cfg = dataclasses.replace(cfg, num_experts=1)
        torch.manual_seed(a.seed); dense = mlm_model(dense_cfg, V)
        rd = mlm(dense, steps2)
        up = upcycle(dense, cfg.num_experts, seed=a.seed)
        ru = mlm(up, steps2, init_bias=False)
        torch.manual_seed(a.seed); scratch = mlm_model(cfg, V)
        rs = mlm(scratch, 2 * steps2)
        rec["mlm"].update({"dense (upcycling source)": rd, "upcycled": ru, "MoE from scratch": rs})
        rec["upcycling"] = dict(steps_dense=steps2, steps_after=steps2, scratch_steps=2 * steps2,
                                upcycled_valid=ru["history"][-1].get("valid_loss"), scratch_valid=rs["history"][-1].get("valid_loss"))
        print(f"upcycling: upcycled {rec['upcycling']['upcycled_valid']:.3f} vs scratch {rec['upcycling']['scratch_valid']:.3f}", flush=True)
        save()
    if a.scaling:
        rows = []
        for n in a.scaling:
            if left() is not None and left() <= 0: print(f"time budget spent: scaling stops before {n} experts"); break
            torch.manual_seed(a.seed); m = mlm_model(cfg, V, num_experts=n)
            from moe_course.transformer import count_parameters
            r = mlm(m, steps2); rec["mlm"][f"N={n}"] = r
            rows.append(dict(num_experts=n, steps=r["steps"], valid_loss=r["history"][-1].get("valid_loss"), **count_parameters(m)))
            rec["scaling"] = rows; save()
            print(f"scaling: N={n} valid loss {rows[-1]['valid_loss']:.3f}", flush=True)
    save()
    print(f"total {time.perf_counter() - t_start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
