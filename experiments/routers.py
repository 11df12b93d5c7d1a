"""Routers compared (chapter 16_routers): top-1 (Switch), top-2, expert choice, shared + routed, bias balancing,
3 seeds each, on the memorisation task (chapter 17_memorize) and on IMDB at a small CPU scale.

    python experiments/routers.py --data-dir ../shared/data          # both tasks -> results/routers_cpu.json
    python experiments/routers.py --quick                            # smoke run (bundled sample, tiny) -> /tmp

Per run: accuracy (facts memorised / IMDB test accuracy), the mean training step time (wall time of the training
loop / steps; a ratio to top-1 with the same seed is computed when summarising), the coefficient of variation of
the load per expert over the last epoch (std / mean of the (token, expert) assignments per expert, before
capacity), the drop fraction (assignments over capacity / assignments) and the fraction of real tokens that no
expert processed. The record (moe_course.core.save_result: device, commit, wall time, the command) is rewritten
after every run, so a killed script keeps what it finished.
"""
from __future__ import annotations
import argparse, math, shlex, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, find_data_dir  # experiments/common.py

VARIANTS = {"top-1": {}, "top-2": dict(top_k=2), "expert choice": dict(router="expert_choice"),
            "shared + routed": dict(num_shared_experts=1), "bias": dict(balancing="bias")}
MEMO = dict(n_facts=8192, num_experts=8, d_model=32, d_ff=16, capacity_factor=1.5, epochs=30, batch_size=512, lr=1e-2)
MEMO_QUICK = dict(MEMO, n_facts=512, epochs=2, batch_size=128)
IMDB = dict(max_len=128, vocab_size=8000, d_model=64, n_heads=4, d_ff=128, n_layers=1, num_experts=4,
            capacity_factor=1.25, batch_size=32, epochs=1, lr=2e-3, scheduler="cosine", warmup_frac=0.1, patience=0,
            label_smoothing=0.1, fgm=False, progress=False, checkpoint=False, dropout=0.1)
IMDB_QUICK = dict(IMDB, max_len=64, vocab_size=2000, d_model=32, n_heads=2, d_ff=64, batch_size=32)


def load_stats(load: list[float]) -> float:
    "Coefficient of variation std/mean of the load per expert (0 = perfectly even)."
    m = sum(load) / len(load)
    return math.sqrt(sum((l - m) ** 2 for l in load) / len(load)) / m if m else 0.0


def rotated(names: list[str], seed: int) -> list[str]:
    "The variants in an order rotated by `seed`, so that no router always runs first (warm-up, machine load)."
    k = seed % len(names)
    return names[k:] + names[:k]


def memorize_run(variant: dict, seed: int, s: dict) -> dict:
    "Chapter 22's MemoryMoE with its Switch layer rebuilt with `variant`; its training loop + the bias update."
    import torch, torch.nn as nn
    from moe_course.config import get_config
    from moe_course.memorize import MemoryMoE, make_facts, memorised
    from moe_course.moe import Switch
    from moe_course.optim import compute_loss, make_optimizer, make_scheduler
    from moe_course.routers import update_router_biases
    facts = make_facts(s["n_facts"], seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MemoryMoE(d_model=s["d_model"], d_ff=s["d_ff"], n_layers=1, num_experts=s["num_experts"],
                          capacity_factor=s["capacity_factor"])
        torch.manual_seed(1000 + seed)   # the same router and expert init for every variant of this seed
        model.ffns[0] = Switch(s["d_model"], s["d_ff"], s["num_experts"], s["capacity_factor"], **variant)
    cfg = get_config(epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"], scheduler="cosine", warmup_frac=0.05,
                     weight_decay=0.0, label_smoothing=0.0, aux_weight=0.01, seed=seed)
    keys, labels = facts["keys"], facts["labels"]
    opt = make_optimizer(model, cfg); steps_per_epoch = math.ceil(len(labels) / s["batch_size"])
    sched = make_scheduler(opt, cfg, steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    t_train, steps = 0.0, 0
    for epoch in range(s["epochs"]):
        model.train(); load = dropped = assigned = unserved = tokens = 0
        for idx in torch.randperm(len(labels), generator=g).split(s["batch_size"]):
            t0 = time.perf_counter()
            out = model(keys[idx])
            loss = compute_loss(out, labels[idx], cfg)[0]
            opt.zero_grad(set_to_none=True); loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step(); sched.step(); update_router_biases(model)
            t_train += time.perf_counter() - t0; steps += 1
            if epoch == s["epochs"] - 1:   # last epoch's routing statistics (device tensors, summed)
                d = out.diagnostics[0]
                load = load + d.tokens_per_expert; dropped = dropped + d.dropped; tokens = tokens + d.num_tokens
                assigned = assigned + (d.num_tokens if d.num_assignments is None else d.num_assignments)
                unserved = unserved + d.unserved
    n = memorised(model, facts)
    return dict(accuracy=n / len(labels), memorised=n, step_time_s=t_train / steps, steps=steps,
                load=load.tolist(), load_cv=load_stats(load.tolist()), drop_fraction=float(dropped / assigned),
                unserved_fraction=float(unserved / tokens), final_loss=float(loss.detach()))


def imdb_run(variant: dict, seed: int, s: dict, dsd, tok, data_dir, max_eval_batches: int) -> dict:
    "Train the classifier with `variant` via learner.fit; routing statistics from its last epoch and the test set."
    import torch
    from moe_course.config import get_config
    from moe_course.data import set_seed
    from moe_course.imdb import build_loaders, build_model
    from moe_course.learner import fit
    from moe_course.transformer import count_parameters
    kw = dict(s, seed=seed, source="local" if data_dir else "sample", data_dir=data_dir, **variant)
    if variant.get("balancing") == "bias": kw["aux_weight"] = 0.0
    cfg = get_config(**kw)
    set_seed(seed); dls = build_loaders(cfg, tok=tok, dsd=dsd)
    set_seed(seed); model = build_model(cfg, dls["tokenizer"].get_vocab_size(), dls["num_classes"])
    res = fit(model, dls, cfg)
    last = res["history"][-1]; steps = len(dls["train"])
    model.eval(); unserved = tokens = 0
    with torch.no_grad():
        for i, b in enumerate(dls["test"]):
            if i >= max_eval_batches: break
            d = model(b["input_ids"], b["attention_mask"]).diagnostics[0]
            unserved += int(d.unserved); tokens += int(d.num_tokens)
    load = last["expert_load"]
    return dict(accuracy=res["test"]["accuracy"], valid_accuracy=res["best"]["valid_acc"],
                step_time_s=last["train_time_s"] / steps, steps=steps, load=load, load_cv=load_stats(load),
                drop_fraction=last["tokens_dropped"] / sum(load), unserved_fraction=unserved / max(tokens, 1),
                params=count_parameters(model), wall_time_s=res.get("wall_time_s"), sizes={k: len(dls[k].dataset) for k in ("train", "valid", "test")})


def steptime_rows(variants: list[str], s: dict, rounds: int, warmup: int = 3) -> list[dict]:
    "Interleaved step times of the IMDB model on one fixed random batch: each round times one step of every variant."
    import statistics, torch
    from moe_course.config import get_config
    from moe_course.imdb import build_model
    from moe_course.optim import compute_loss, make_optimizer
    from moe_course.routers import update_router_biases
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, s["vocab_size"], (s["batch_size"], s["max_len"]), generator=g)
    labels = torch.randint(0, 2, (s["batch_size"],), generator=g)
    runs = {}
    for name in variants:
        cfg = get_config(**dict(s, **VARIANTS[name]))
        torch.manual_seed(0); model = build_model(cfg, s["vocab_size"]).train()
        runs[name] = (model, make_optimizer(model, cfg), cfg)
    times = {name: [] for name in variants}
    for r in range(warmup + rounds):
        for name in rotated(variants, r):
            model, opt, cfg = runs[name]
            t0 = time.perf_counter()
            loss = compute_loss(model(ids), labels, cfg)[0]
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); update_router_biases(model)
            if r >= warmup: times[name].append(time.perf_counter() - t0)
    base = statistics.median(times[variants[0]])
    return [dict(task="imdb step (interleaved)", router=name, median_step_s=statistics.median(t),
                 ratio_to_first=statistics.median(t) / base, steps=len(t)) for name, t in times.items()]


def main(argv=None):
    import moe_course.routers  # noqa: F401  registers top-k, expert choice and bias routers with Switch
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="folder with imdb/{train,test}.parquet (default: $MOE_COURSE_DATA, ../shared/data)")
    ap.add_argument("--out", default=None, help="record (default results/routers_cpu.json; --quick: /tmp/routers_quick.json)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tasks", nargs="*", default=["memorize", "imdb"], choices=["memorize", "imdb", "steptime"],
                    help="steptime: interleaved step times of the IMDB model (a separate record, --out)")
    ap.add_argument("--rounds", type=int, default=30, help="steptime: timed rounds (each times every variant once)")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--imdb-train", type=int, default=None, help="train on this many (shuffled) training reviews (default: all)")
    ap.add_argument("--imdb-test", type=int, default=None, help="test on this many (shuffled) test reviews (default: all)")
    ap.add_argument("--imdb-epochs", type=int, default=IMDB["epochs"])
    ap.add_argument("--eval-batches", type=int, default=20, help="test batches for the unserved-token fraction")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run on the bundled sample, writes to /tmp")
    a = ap.parse_args(argv)
    import torch
    from moe_course.core import save_result
    from moe_course.routers import summarize_routers
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    out = a.out or ("/tmp/routers_quick.json" if a.quick else str(ROOT / "results" / "routers_cpu.json"))
    memo = MEMO_QUICK if a.quick else MEMO
    imdb = dict(IMDB_QUICK if a.quick else IMDB, epochs=a.imdb_epochs)
    data_dir = None if a.quick else find_data_dir(a.data_dir)
    seeds = list(range(1 if a.quick else a.seeds))
    settings = dict(memorize=memo, imdb=imdb, seeds=seeds, variants={k: VARIANTS[k] for k in a.variants},
                    imdb_train=a.imdb_train, imdb_test=a.imdb_test, data_dir_used=data_dir is not None, quick=a.quick,
                    threads=a.threads)
    command = "python experiments/routers.py " + " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv))
    rows = []
    def save():
        save_result(out, dict(command=command, settings=settings, rows=rows, summary=summarize_routers(rows) if rows else []),
                    wall_time_s=time.perf_counter() - t_start)
    def report(r): print(f"{r['task']:>8} {r['router']:>15} seed {r['seed']}: acc {r['accuracy']:.4f}  step {1000 * r['step_time_s']:.1f} ms  "
                         f"CV {r['load_cv']:.3f}  drop {r['drop_fraction']:.3f}  unserved {r['unserved_fraction']:.3f}", flush=True)
    if "steptime" in a.tasks:   # variants interleaved, so a changing machine load hits all of them alike
        st = steptime_rows(a.variants, imdb, 2 if a.quick else a.rounds)
        save_result(out, dict(command=command, settings=dict(settings, rounds=a.rounds), steptime=st),
                    wall_time_s=time.perf_counter() - t_start)
        for r in st: print(f"{r['router']:>15}: median step {1000 * r['median_step_s']:.1f} ms  x{r['ratio_to_first']:.2f}")
        if a.tasks == ["steptime"]: return
    if "memorize" in a.tasks:
        for seed in seeds:
            for name in rotated(a.variants, seed):
                r = dict(task="memorize", router=name, seed=seed, **memorize_run(VARIANTS[name], seed, memo))
                rows.append(r); report(r); save()
    if "imdb" in a.tasks:
        from moe_course.data import load_text_dataset
        dsd = load_text_dataset("imdb", source="local" if data_dir else "sample", data_dir=data_dir)
        if a.imdb_train: dsd["train"] = dsd["train"].shuffle(seed=0).select(range(min(a.imdb_train, len(dsd["train"]))))
        if a.imdb_test: dsd["test"] = dsd["test"].shuffle(seed=0).select(range(min(a.imdb_test, len(dsd["test"]))))
        settings["imdb_sizes"] = {k: len(v) for k, v in dsd.items()}
        from moe_course.config import get_config
        from moe_course.imdb import build_loaders
        # one WordPiece tokenizer for every run (trained once, as build_loaders trains it for seed 0)
        tok = build_loaders(get_config(**dict(imdb, source="local" if data_dir else "sample", data_dir=data_dir)), dsd=dsd)["tokenizer"]
        for seed in seeds:
            for name in rotated(a.variants, seed):
                r = dict(task="imdb", router=name, seed=seed,
                         **imdb_run(VARIANTS[name], seed, imdb, dsd, tok, data_dir, a.eval_batches))
                rows.append(r); report(r); save()
    save()
    for r in summarize_routers(rows):
        print(f"{r['task']:>8} {r['router']:>15}: acc {r['accuracy']:.4f} ± {r['accuracy_std']:.4f}  step x{r['step_time_ratio']:.2f}  "
              f"CV {r['load_cv']:.3f}  drop {r['drop_fraction']:.3f}  unserved {r['unserved_fraction']:.3f}")
    print(f"wrote {out} in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
