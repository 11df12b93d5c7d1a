"""Does a better pretrained encoder make a better IMDB classifier, and do experts help there? (chapter 20_experts_carry;
the Switch paper's Table 5 question at our scale.)

The classifier is the `imdb-switch-cpu` preset (d 64, 1 layer, WordPiece 30,000, 384 tokens; 86.11% from scratch in
156 s). Its encoder is pretrained as a masked language model on the IMDB *train* reviews only (no test text: the
corpus drops the train reviews that also occur in test), with the sparse MLM head of chapter 19 (only the masked
positions are projected onto the vocabulary), once dense (N=1) and once with N experts at equal active FLOPs.
Optionally a third encoder is upcycled: the dense one after half the steps, continued with N experts.
Then each encoder, and the same shapes from scratch, is fine-tuned with the preset's recipe, several seeds each.

    python experiments/experts_carry.py --preset tiny            # seconds, the bundled sample (-> /tmp)
    python experiments/experts_carry.py --preset cpu             # full IMDB, the 2-core CPU (about 50 minutes)
    python experiments/experts_carry.py --preset cpu --upcycle   # + the upcycled encoder (about 15 minutes more)
    python experiments/experts_carry.py --preset cpu-long        # 768 tokens, whole reviews (69 minutes here)
    python experiments/experts_carry.py --preset cpu-long --emb-std 0.02 --pos-std 0.02   # BERT's start (57 minutes)
    python experiments/experts_carry.py --preset cpu-long --emb-std 0.02 --pos-std 0.02 --encoder-lr-mult 0.25 \
        --encoders runs/experts_carry_cpu-long --pretrain-record results/experts_carry_cpu-long_small.json   # ULMFiT's rates

Writes results/experts_carry_<preset>.json (device, commit, wall time) after every stage; encoders go to
runs/experts_carry_<preset>/. The test split is touched only by the final evaluation of each fine-tuning run.
"""
from __future__ import annotations
import argparse, dataclasses, json, os, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, find_data_dir  # experiments/common.py

PRESETS = {
    "tiny": dict(train=("quick", dict(source="sample", max_len=64, vocab_size=2000, d_model=32, n_heads=2, d_ff=64,
                                      num_experts=4, epochs=1)),
                 mlm=dict(steps=20, batch_size=16, lr=3e-3, eval_every=10), seeds=[0, 1]),
    "cpu": dict(train=("imdb-switch-cpu", {}), mlm=dict(steps=1000, batch_size=32, lr=3e-3, eval_every=100),
                seeds=[0, 1, 2]),
    # the same classifier reading whole reviews (768 tokens: 86.6% from scratch where 384 gave 85.8%); MLM 1,500 steps of 16 x 768
    "cpu-long": dict(train=("imdb-switch-cpu", dict(max_len=768)),
                     mlm=dict(steps=1500, batch_size=16, lr=3e-3, eval_every=150), seeds=[0, 1, 2]),
    "gpu": dict(train=("imdb-switch-gpu", dict(d_model=256, n_heads=4, d_ff=512, n_layers=4, num_experts=8, epochs=3,
                                               lr=5e-4, batch_size=64)),
                mlm=dict(steps=20000, batch_size=64, lr=1e-3, eval_every=1000), seeds=[0, 1, 2]),
}
KINDS = ("pretrained MoE", "pretrained dense", "scratch MoE", "scratch dense")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--data-dir", default=None, help="folder with imdb/{train,test}.parquet (default $MOE_COURSE_DATA)")
    ap.add_argument("--out", default=None, help="record (default results/experts_carry_<preset>.json; tiny: /tmp)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="fine-tuning seeds (default: the preset's)")
    ap.add_argument("--mlm-steps", type=int, default=None, help="pretraining steps of each encoder")
    ap.add_argument("--mlm-prob", type=float, default=0.15, help="share of tokens masked (Wettig et al. 2023)")
    ap.add_argument("--experts", type=int, default=None, help="N of the MoE (default: the preset's num_experts)")
    ap.add_argument("--finetune-lr", type=float, default=None, help="fine-tuning lr (default: the preset's)")
    ap.add_argument("--finetune-epochs", type=int, default=None, help="fine-tuning epochs (default: the preset's)")
    ap.add_argument("--emb-std", type=float, default=None, help="start every token embedding at N(0, std^2) instead of "
                    "the library's N(0, 1), e.g. 0.02 as BERT does (Adam moves each weight by about lr a step)")
    ap.add_argument("--pos-std", type=float, default=None, help="with --emb-std: start the position embedding at N(0, std^2) "
                    "too (BERT starts both at 0.02; a N(0, 1) position table drowns small token rows)")
    ap.add_argument("--encoder-lr-mult", type=float, default=None, help="fine-tune every kind with the encoder at this "
                    "multiple of the lr and the head at the lr (ULMFiT's discriminative fine-tuning), e.g. 0.25")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS) + ["upcycled MoE"])
    ap.add_argument("--upcycle", action="store_true", help="also pretrain and fine-tune an upcycled encoder")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared CPU)")
    ap.add_argument("--encoders", default=None, help="fine-tune the encoders an earlier run saved in this folder "
                    "(dense/, MoE/, upcycled/ with their tokenizer) instead of pretraining again")
    ap.add_argument("--pretrain-record", default=None, help="with --encoders: that run's record, for its MLM curves and times")
    a = ap.parse_args(argv)
    if a.pos_std is not None and a.emb_std is None: ap.error("--pos-std needs --emb-std")
    if a.encoder_lr_mult is not None and not a.encoder_lr_mult > 0: ap.error("--encoder-lr-mult must be > 0")
    import torch
    from moe_course.batching import load_tokenizer, train_tokenizer
    from moe_course.config import get_config
    from moe_course.core import save_result
    from moe_course.data import load_text_dataset, set_seed
    from moe_course.imdb import build_model
    from moe_course.experts_carry import DiscriminativeLR, carry_summary
    from moe_course.experts_pay import sparse_mlm_loss
    from moe_course.pretrain import encoder_state_dict, finetune, mlm_corpus, mlm_model, pretrain_mlm, save_encoder, upcycle
    from moe_course.transformer import count_parameters, load_encoder_file
    if a.threads: torch.set_num_threads(a.threads)
    t_start, p, tiny = time.perf_counter(), PRESETS[a.preset], a.preset == "tiny"
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "moe_course_experts_carry"
    out = Path(a.out or (tmp if tiny else ROOT / "results") / f"experts_carry_{a.preset}.json")
    run_dir = (tmp if tiny else ROOT / "runs") / f"experts_carry_{a.preset}"
    if tiny: dsd, extra = load_text_dataset("imdb", source="sample"), {}
    else:
        d = find_data_dir(a.data_dir)
        if d is None: raise SystemExit("No IMDB data found: pass --data-dir or set MOE_COURSE_DATA")
        dsd, extra = load_text_dataset("imdb", source="local", data_dir=d), dict(source="local", data_dir=d)
    preset, ov = p["train"]
    base = get_config(preset, **(ov | extra), progress=False, checkpoint=False)
    n_exp = a.experts or base.num_experts
    ft = {k: v for k, v in (("lr", a.finetune_lr), ("epochs", a.finetune_epochs)) if v is not None}
    cfgs = {"MoE": get_config(preset, **(ov | extra | ft | dict(num_experts=n_exp)), progress=False, checkpoint=False),
            "dense": get_config(preset, **(ov | extra | ft | dict(num_experts=1)), progress=False, checkpoint=False)}
    seeds = a.seeds or p["seeds"]
    mlm_kw = dict(p["mlm"], max_len=base.max_len, mlm_prob=a.mlm_prob, steps=a.mlm_steps or p["mlm"]["steps"])
    kinds = list(a.kinds) + (["upcycled MoE"] if a.upcycle and "upcycled MoE" not in a.kinds else [])

    corpus = mlm_corpus(dsd)                                  # train reviews, minus those also in test
    n_valid = max(1, len(corpus) // 100)                      # 1% of them measure the MLM loss
    mlm_train, mlm_valid = corpus[n_valid:], corpus[:n_valid]
    t0 = time.perf_counter()
    if a.encoders: tok = load_tokenizer(Path(a.encoders) / "dense" / "tokenizer.json")   # the encoders' own tokenizer
    else: tok = train_tokenizer(corpus, vocab_size=base.vocab_size)
    tok_s = time.perf_counter() - t0
    V = tok.get_vocab_size()
    print(f"corpus {len(corpus)} train reviews ({len(dsd['train']) - len(corpus)} dropped as test duplicates); "
          f"tokenizer {V} tokens in {tok_s:.0f} s", flush=True)
    rec = dict(experiment="experts_carry", preset=a.preset, emb_std=a.emb_std, pos_std=a.pos_std, encoder_lr_mult=a.encoder_lr_mult,
               seeds=seeds, num_experts=n_exp, kinds=kinds,
               finetune_config={k: c.to_dict() for k, c in cfgs.items()}, mlm_settings=mlm_kw,
               corpus=dict(reviews=len(mlm_train), valid_reviews=n_valid,
                           dropped_test_duplicates=len(dsd["train"]) - len(corpus)),
               tokenizer_time_s=tok_s, threads=torch.get_num_threads(), pretrain={}, runs=[], summary={},
               reference=dict(nbsvm_ours=0.91476, switch_reference=0.8512, imdb_switch_cpu=0.86108, goal=0.88,
                              goal_minutes=30), sample=tiny)
    save = lambda: save_result(out, rec, wall_time_s=time.perf_counter() - t_start)
    mlm = lambda model, steps, init_bias=True: pretrain_mlm(model, tok, mlm_train, **(mlm_kw | dict(steps=steps)),
        valid_texts=mlm_valid, seed=0, progress=False, loss_fn=sparse_mlm_loss, init_bias=init_bias)

    def emb_init(model, seed):                                # --emb-std (--pos-std): a smaller start of the embeddings
        if a.emb_std is None: return model
        w, g = model.embedding.tok_emb.weight, torch.Generator().manual_seed(seed)
        with torch.no_grad():
            w.copy_(torch.randn(w.shape, generator=g) * a.emb_std)
            if (pad := model.embedding.tok_emb.padding_idx) is not None: w[pad] = 0      # the padding row stays 0
            if a.pos_std is not None:                         # drawn after the token table, from the same generator
                q = model.embedding.pos_emb.weight; q.copy_(torch.randn(q.shape, generator=g) * a.pos_std)
        return model

    encoders = {}
    if a.encoders:                                            # reuse: no pretraining in this run
        pre_rec = json.loads(Path(a.pretrain_record).read_text()) if a.pretrain_record else {}
        rec["pretrain"], rec["encoders_from"] = pre_rec.get("pretrain", {}), pre_rec.get("commit")
        rec["tokenizer_time_s"] = tok_s = pre_rec.get("tokenizer_time_s", tok_s)
        for kind, key in (("pretrained dense", "dense"), ("pretrained MoE", "MoE"), ("upcycled MoE", "upcycled")):
            if kind in kinds: encoders[kind] = load_encoder_file(Path(a.encoders) / key)[0]
        kinds_to_pretrain = ()
    else: kinds_to_pretrain = (("pretrained dense", "dense"), ("pretrained MoE", "MoE"))
    for kind, key in kinds_to_pretrain:
        if kind not in kinds and not (key == "dense" and "upcycled MoE" in kinds): continue
        torch.manual_seed(0); model = emb_init(mlm_model(cfgs[key], V), 0)
        r = mlm(model, mlm_kw["steps"])
        r.update(count_parameters(model)); rec["pretrain"][key] = r
        encoders[kind] = encoder_state_dict(model); save_encoder(model, run_dir / key, tok)
        print(f"MLM {key}: {r['steps']} steps in {r['wall_time_s']:.0f} s, valid loss {r['history'][-1]['valid_loss']:.3f}",
              flush=True)
        save()
    if "upcycled MoE" in kinds and not a.encoders:            # dense for half the steps, then N experts for the rest
        half = mlm_kw["steps"] // 2
        torch.manual_seed(0); dense = emb_init(mlm_model(cfgs["dense"], V), 0)
        r1 = mlm(dense, half)
        up = upcycle(dense, n_exp, seed=0)
        r2 = mlm(up, mlm_kw["steps"] - half, init_bias=False)           # the head keeps what it learned
        rec["pretrain"]["upcycled"] = dict(dense_part=r1, moe_part=r2, wall_time_s=r1["wall_time_s"] + r2["wall_time_s"])
        encoders["upcycled MoE"] = encoder_state_dict(up); save_encoder(up, run_dir / "upcycled", tok)
        print(f"MLM upcycled: valid loss {r2['history'][-1]['valid_loss']:.3f}", flush=True); save()

    pre_s = {"pretrained MoE": "MoE", "pretrained dense": "dense", "upcycled MoE": "upcycled"}
    for seed in seeds:
        for kind in kinds:
            cfg = dataclasses.replace(cfgs["dense" if kind.endswith("dense") else "MoE"], seed=seed)
            enc = encoders.get(kind)
            if enc is None and a.emb_std is not None:       # from scratch, but with the same small embedding start
                set_seed(seed); enc = encoder_state_dict(emb_init(build_model(cfg, V, 2), seed))
            cbs = [DiscriminativeLR(a.encoder_lr_mult)] if a.encoder_lr_mult is not None else []   # every kind alike
            res = finetune(cfg, enc, tok=tok, dsd=dsd, callbacks=cbs)
            test = res.get("test") or {}
            pre = rec["pretrain"].get(pre_s.get(kind, ""), {}).get("wall_time_s", 0.0)
            row = dict(kind=kind, seed=seed, test_accuracy=test.get("accuracy"), test_f1=test.get("f1"),
                       best=res.get("best"), finetune_s=res["wall_time_s"], pretrain_s=pre,
                       pipeline_s=tok_s + pre + res["wall_time_s"], history=res.get("history"))
            rec["runs"].append(row)
            rec["summary"] = carry_summary(rec)              # chapter 20: mean, std, n, seconds of a pipeline
            print(f"seed {seed} {kind}: test accuracy {row['test_accuracy']:.4f} ({row['finetune_s']:.0f} s fine-tuning, "
                  f"{row['pipeline_s'] / 60:.1f} min in all)", flush=True)
            save()
    save()
    print(f"total {time.perf_counter() - t_start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
