"""What the MLM head costs: a training step that projects every position onto the vocabulary ([B,T,V] logits)
against one that gathers the masked positions first (`moe_course.experts_pay.sparse_mlm_loss`). Ratio in one run.

    python benchmarks/mlm_head_cost.py                                   # the CPU preset's shape (B 64, T 384, d 64, V 30,000)
    python benchmarks/mlm_head_cost.py --steps 1 --out results/mlm_head_cost_cpu.json   # the committed record
    python benchmarks/mlm_head_cost.py --batch-size 8 --seq-len 64 --vocab-size 2000 --steps 2   # seconds

Both variants run on the same model and batches in interleaved rounds (median over rounds), so machine noise hits
both alike; the losses of the two are printed too (equal up to float rounding: the same positions are scored).
"""
from __future__ import annotations
import argparse, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=64); ap.add_argument("--seq-len", type=int, default=384)
    ap.add_argument("--d-model", type=int, default=64); ap.add_argument("--d-ff", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=1); ap.add_argument("--num-experts", type=int, default=4)
    ap.add_argument("--vocab-size", type=int, default=30000); ap.add_argument("--mlm-prob", type=float, default=0.15)
    ap.add_argument("--steps", type=int, default=3); ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="optional JSON record (moe_course.core.save_result)")
    a = ap.parse_args(argv)
    import os, time as _t; t_start = _t.perf_counter()
    import torch
    from moe_course.core import device_info
    from moe_course.experts_pay import sparse_mlm_loss
    from moe_course.pretrain import SwitchTransformerMLM, mask_tokens, mlm_loss
    torch.manual_seed(0)
    model = SwitchTransformerMLM(a.vocab_size, max_len=a.seq_len, d_model=a.d_model, n_heads=4, d_ff=a.d_ff,
                                 n_layers=a.n_layers, num_experts=a.num_experts, dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, a.vocab_size, (a.batch_size, a.seq_len), generator=g)
    x, lab = mask_tokens(ids, a.vocab_size, a.mlm_prob, generator=g)
    variants = dict(full=lambda: mlm_loss(model(x), lab)[0], sparse=lambda: sparse_mlm_loss(model, x, lab)[0])
    times = {k: [] for k in variants}
    for k, f in variants.items(): f().backward(); opt.zero_grad()           # warm-up
    for _ in range(a.rounds):
        for k, f in variants.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                f().backward(); opt.step(); opt.zero_grad(set_to_none=True)
            times[k].append((time.perf_counter() - t0) / a.steps)
    with torch.no_grad(): losses = {k: float(f()) for k, f in variants.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{device_info()['device']}, B={a.batch_size} T={a.seq_len} d={a.d_model} V={a.vocab_size} "
          f"mask {a.mlm_prob:.0%}, {a.num_experts} experts x {a.n_layers} layers")
    for k in variants: print(f"{k:>6}: {med[k]:.3f} s/step  loss {losses[k]:.4f}")
    print(f"full / sparse = {med['full'] / med['sparse']:.1f}x")
    if a.out:
        from moe_course.core import save_result
        save_result(a.out, dict(benchmark="mlm_head_cost", command="python " + " ".join(sys.argv), settings=vars(a),
                                sec_per_step=med, times=times, loss=losses, ratio=med["full"] / med["sparse"],
                                loadavg=os.getloadavg()[0]), wall_time_s=_t.perf_counter() - t_start)
    return med, losses


if __name__ == "__main__":
    main()
