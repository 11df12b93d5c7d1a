"Tests of moe_course.vit: synthetic data, augmentation, the ViT with dense/Switch/random/hash FFNs, parameter formula."
import pytest
import torch

from moe_course.moe import Switch
from moe_course.transformer import count_parameters
from moe_course.vit import (FFN_KINDS, SHAPE_CLASSES, VIT_REFERENCE, BatchAugment, ViT, image_loaders, load_cifar10,
                            make_shapes, random_crop_flip, reference_vits, shapes_loaders, vit_num_parameters,
                            vit_param_table)

TINY = dict(patch_size=8, d_model=16, n_heads=2, n_layers=2, d_ff=24)


def n_params(m): return sum(p.numel() for p in m.parameters())


def tiny(ffn, num_experts=4, **kw):
    return ViT(ffn=ffn, num_experts=1 if ffn == "dense" and num_experts is None else num_experts, **(TINY | kw))


# -- synthetic data -----------------------------------------------------------------------------------------------
def test_shapes_deterministic_under_seed():
    a, b = make_shapes(32, seed=5), make_shapes(32, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = make_shapes(32, seed=6)
    assert not torch.equal(a[0], c[0])
    assert a[0].dtype == torch.uint8 and a[0].shape == (32, 3, 32, 32)
    assert a[1].min() >= 0 and a[1].max() < len(SHAPE_CLASSES) == 10


def test_shapes_all_classes_and_sizes():
    x, y = make_shapes(500, size=16, seed=0)
    assert x.shape == (500, 3, 16, 16) and set(y.tolist()) == set(range(10))
    # the shape is drawn: images of one class are not all identical and differ from the background
    assert x.float().std() > 10


@pytest.mark.parametrize("kw", [dict(n=0), dict(n=4, size=4)])
def test_shapes_bad_input(kw):
    with pytest.raises(ValueError, match="need n >= 1"): make_shapes(**kw)


def test_loaders_split_and_batches():
    dls = shapes_loaders(100, 20, batch_size=8, seed=1)
    assert len(dls["train"].dataset) == 90 and len(dls["valid"].dataset) == 10 and len(dls["test"].dataset) == 20
    b = next(iter(dls["train"]))
    assert set(b) == {"pixel_values", "labels"} and b["pixel_values"].shape == (8, 3, 32, 32)
    with pytest.raises(ValueError, match="valid_frac"): image_loaders(make_shapes(10), make_shapes(4), valid_frac=1.5)
    with pytest.raises(ValueError, match="n labels"): image_loaders((torch.zeros(3, 3, 8, 8), torch.zeros(2)), make_shapes(2))


# -- CIFAR-10 loading from a local folder --------------------------------------------------------------------------
def _fake_cifar(root, fmt):
    import datasets, numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        ims = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
        labels = [i % 3 for i in range(n)]
        if fmt == "parquet":
            feats = datasets.Features(img=datasets.Image(), label=datasets.ClassLabel(num_classes=10))
            datasets.Dataset.from_dict(dict(img=ims, label=labels), features=feats).to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
        else:
            for i, (im, l) in enumerate(zip(ims, labels)):
                (root / split / f"c{l}").mkdir(parents=True, exist_ok=True); im.save(root / split / f"c{l}" / f"{i}.png")


@pytest.mark.parametrize("fmt", ["parquet", "imagefolder"])
def test_load_cifar10_local(tmp_path, fmt):
    _fake_cifar(tmp_path, fmt)
    d = load_cifar10(tmp_path)
    assert d["train"][0].shape == (6, 3, 32, 32) and d["train"][0].dtype == torch.uint8
    assert d["test"][0].shape == (4, 3, 32, 32) and len(d["test"][1]) == 4


def test_load_cifar10_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"): load_cifar10(tmp_path / "nope")


# -- augmentation ------------------------------------------------------------------------------------------------
def test_crop_flip_seeded_and_valid():
    x = make_shapes(8, seed=0)[0].float()
    g = lambda: torch.Generator().manual_seed(3)
    a, b = random_crop_flip(x, 4, True, g()), random_crop_flip(x, 4, True, g())
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, random_crop_flip(x, 4, True, torch.Generator().manual_seed(4)))
    # zero offset + no flip would be the identity; every output is a 32x32 window of the padded image (maybe flipped)
    xp = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(8):
        wins = [xp[i, :, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(-1)) for w in wins)


def test_batch_augment_train_only():
    x = make_shapes(4)[0].float()
    aug = BatchAugment(4, True, seed=0)
    assert torch.equal(aug.eval()(x), x) and not torch.equal(aug.train()(x), x)
    assert n_params(aug) == 0
    with pytest.raises(ValueError, match=r"\[B,C,H,W\]"): random_crop_flip(torch.zeros(3, 8, 8))


# -- routing through the ViT -------------------------------------------------------------------------------------
def test_random_router_has_no_parameters_and_ignores_input():
    m = tiny("random")
    switches = [b.ffn for b in m.blocks]
    assert all(isinstance(s, Switch) and n_params(s.router) == 0 for s in switches)
    m.eval()
    r = switches[0].router
    e1 = r(torch.randn(50, 16)).expert_index
    e2 = r(torch.randn(50, 16) * 100 + 3).expert_index      # completely different tokens
    assert torch.equal(e1, e2)                              # eval: the same seeded draw whatever the input


def test_random_routing_reproducible_with_seed():
    x = make_shapes(6, seed=2)[0]
    outs = []
    for _ in range(2):
        torch.manual_seed(0); m = tiny("random", augment_pad=2, augment_flip=True, seed=7); m.train()
        outs.append([m(x) for _ in range(2)])                # two training steps: router and augmentation streams
    for a, b in zip(*outs):
        assert torch.equal(a.logits, b.logits)
        assert all(torch.equal(d1.tokens_per_expert, d2.tokens_per_expert) for d1, d2 in zip(a.diagnostics, b.diagnostics))
    torch.manual_seed(0); other = tiny("random", seed=8).train()(x)
    assert any(not torch.equal(d1.tokens_per_expert, d2.tokens_per_expert) for d1, d2 in zip(outs[0][0].diagnostics, other.diagnostics))


def test_hash_routing_by_position():
    m = tiny("hash").eval()
    r = m.blocks[0].ffn.router
    pos = torch.arange(17).repeat(3)                         # the same positions in three images
    e = r(torch.randn(51, 16), pos).expert_index
    assert torch.equal(e[:17], e[17:34]) and torch.equal(e[:17], e[34:])
    assert torch.equal(e, r(torch.randn(51, 16), pos).expert_index)   # independent of the token's content


@pytest.mark.parametrize("ffn", FFN_KINDS)
def test_forward_backward_each_routing(ffn):
    m = tiny(ffn, num_experts=1 if ffn == "dense" else 4, augment_pad=2, augment_flip=True)
    out = m(make_shapes(5)[0])
    assert out.logits.shape == (5, 10) and torch.isfinite(out.logits).all()
    (torch.nn.functional.cross_entropy(out.logits, torch.arange(5)) + 0.01 * out.aux_loss).backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[:3])
    assert (len(out.diagnostics) == 0) == (ffn == "dense")
    if ffn == "switch": assert out.aux_loss > 0 and m.blocks[0].ffn.router.weight.grad is not None


def test_float_and_uint8_inputs_agree():
    m = tiny("dense").eval()
    x = make_shapes(2)[0]
    assert torch.allclose(m(x).logits, m(x.float() / 255).logits)
    with pytest.raises(ValueError, match="pixel_values must be"): m(torch.zeros(2, 3, 16, 16))


@pytest.mark.parametrize("kw,match", [(dict(ffn="moe"), "ffn must be"), (dict(pool="max"), "pool must be"),
                                      (dict(patch_size=5), "multiple of patch_size"),
                                      (dict(ffn="switch", num_experts=1), "num_experts >= 2")])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match): ViT(**kw)


# -- parameter counts ------------------------------------------------------------------------------------------------
CASES = [dict(ffn=f, num_experts=n, **kw) for f in FFN_KINDS for n in (1, 3, 8) if not (f != "dense" and n == 1)
         for kw in (dict(), dict(pool="mean", patch_size=8, d_model=24, n_heads=3, n_layers=3, d_ff=40),
                    dict(representation_size=20, num_classes=7, image_size=24, in_channels=1, mean=(0.5,), std=(0.5,)))]


@pytest.mark.parametrize("kw", CASES)
def test_parameter_formula(kw):
    m = ViT(**kw)
    f = vit_num_parameters(**kw)
    assert f["total"] == n_params(m)
    assert f["active"] == count_parameters(m)["active"]
    d, L, N = kw.get("d_model", 64), kw.get("n_layers", 2), kw["num_experts"]
    assert f["router"] == (L * d * N if kw["ffn"] == "switch" else 0)


def test_switch_minus_random_is_the_router():
    for d, L, N in [(16, 1, 2), (32, 3, 5), (48, 2, 8)]:
        kw = dict(d_model=d, n_heads=4, n_layers=L, d_ff=20, num_experts=N)
        counts = {f: n_params(ViT(ffn=f, **kw)) for f in FFN_KINDS}
        assert counts["switch"] - counts["random"] == L * d * N
        assert counts["random"] == counts["hash"] == counts["dense"]


def test_reference_counts_exact():
    counts = {k: n_params(m) for k, m in reference_vits().items()}
    assert counts == dict(dense=12_798_490, switch=12_812_938, random=12_798_490)
    assert [r["total"] for r in vit_param_table()] == [12_798_490, 12_812_938, 12_798_490]
    assert 12_812_938 - 12_798_490 == VIT_REFERENCE["n_layers"] * VIT_REFERENCE["d_model"] * VIT_REFERENCE["num_experts"]
