"""Where the gate goes (chapter 07_moe): the reference's gate on the whole expert, g(FFN(u) + u), against the gate on
the FFN only, u + g FFN(u), trained with the same seeds on the same data. CPU.

    python experiments/gate_placement.py                    # the bundled IMDB sample -> results/gate_placement_sample.json
    python experiments/gate_placement.py --data-dir ../shared/data --preset default --epochs 2 --out results/gate_placement_imdb.json
    python experiments/gate_placement.py --quick --out /tmp/gate.json      # smoke test (seconds)
"""
from __future__ import annotations
import argparse, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, find_data_dir  # experiments/common.py

GRID = [("gate on the expert (reference)", {"gate": "expert"}), ("gate on the FFN only", {"gate": "ffn"})]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="full data (<name>/<split>.parquet); default: the bundled sample")
    ap.add_argument("--preset", default="quick"); ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--num-experts", type=int, default=4); ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="300 training and 100 test reviews, 1 epoch, 1 seed")
    ap.add_argument("--out", default=None, help="record (default results/gate_placement_sample.json)")
    a = ap.parse_args(argv)
    import torch
    from datasets import DatasetDict
    from moe_course.config import get_config
    from moe_course.core import save_result
    from moe_course.data import load_text_dataset
    from moe_course.imdb import ablation_table, build_loaders, run_ablations
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if a.data_dir: dsd = load_text_dataset("imdb", source="local", data_dir=find_data_dir(a.data_dir))
    else: dsd = load_text_dataset("imdb", source="sample")
    if a.quick:
        dsd = DatasetDict(train=dsd["train"].shuffle(seed=0).select(range(300)), test=dsd["test"].shuffle(seed=0).select(range(100)))
        a.epochs, a.seeds = 1, 1
    base = get_config(a.preset, epochs=a.epochs, num_experts=a.num_experts, lr=a.lr, progress=False)
    tok = build_loaders(base, dsd=dsd)["tokenizer"]
    runs = run_ablations(base, grid=GRID, seeds=range(a.seeds), dsd=dsd, tok=tok)
    out = Path(a.out or ROOT / "results" / "gate_placement_sample.json")
    cmd = "python experiments/gate_placement.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv))
    save_result(out, dict(experiment="gate_placement", command=cmd, data="sample" if not a.data_dir else "full",
                          sizes={k: len(v) for k, v in dsd.items()}, base_config=base.to_dict(), grid=GRID,
                          seeds=list(range(a.seeds)), runs=runs), wall_time_s=time.perf_counter() - t0)
    print(ablation_table(runs).to_string()); print(f"-> {out}")


if __name__ == "__main__":
    main()
