"Tests of moe_course.batching: tokenizer, encoding, padding, bucketing and reproducible DataLoaders."
import numpy as np
import pytest
import torch

from moe_course.batching import (CLS_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID, LengthBucketSampler,
                                 TextClassificationDataset, clean_text, collate_batch, encode_texts, load_tokenizer,
                                 make_loaders, padding_fraction, save_tokenizer, train_tokenizer)
from moe_course.data import as_texts, load_text_dataset


@pytest.fixture(scope="module")
def imdb():
    return load_text_dataset("imdb", sample=True)


@pytest.fixture(scope="module")
def small(imdb):
    "A 400/200-row slice of the IMDB sample: enough for the loader tests, fast to encode."
    dsd = imdb.copy()
    dsd["train"], dsd["test"] = imdb["train"].select(range(400)), imdb["test"].select(range(200))
    return dsd


@pytest.fixture(scope="module")
def tok(imdb):
    return train_tokenizer(as_texts(imdb["train"], "imdb"), vocab_size=5000)


def batches_of(loader):
    return [{k: v.clone() for k, v in b.items()} for b in loader]


# ---- cleaning and tokenizer ----
@pytest.mark.parametrize("raw,clean", [("a<br />b", "a b"), ("a<br/><BR>b", "a b"), (" x \n\t y ", "x y"), ("", "")])
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_clean_text_type():
    with pytest.raises(TypeError, match="expects a str"):
        clean_text(None)


def test_special_tokens(tok):
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (PAD_ID, UNK_ID, CLS_ID, SEP_ID) == (0, 1, 2, 3)
    assert tok.get_vocab_size() <= 5000


def test_round_trip_in_vocab_words(tok):
    vocab = tok.get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and w.isascii() and len(w) > 2 and not w.startswith("#"))
    rng = np.random.default_rng(0)
    for _ in range(5):
        picked = list(rng.choice(words, size=12))
        raw = " ".join(w.upper() if i % 3 == 0 else w for i, w in enumerate(picked))
        raw = raw.replace(" ", "<br /><br />", 1) + "  "
        enc = tok.encode(raw)
        assert UNK_ID not in enc.ids
        assert tok.decode(enc.ids) == clean_text(raw).lower()


def test_round_trip_sentence_with_punctuation(tok):
    raw = "This movie was GREAT.<br /><br />I loved it, really!"
    assert tok.decode(tok.encode(raw).ids) == clean_text(raw).lower()


def test_save_load_identical_ids(tok, imdb, tmp_path):
    texts = as_texts(imdb["test"], "imdb")[:50]
    p = save_tokenizer(tok, tmp_path / "tok")
    assert p.name == "tokenizer.json" and p.exists()
    for loaded in (load_tokenizer(p), load_tokenizer(tmp_path / "tok")):
        assert encode_texts(loaded, texts, 512) == encode_texts(tok, texts, 512)
    assert loaded.to_str() == tok.to_str()
    with pytest.raises(FileNotFoundError, match="train one with train_tokenizer"):
        load_tokenizer(tmp_path / "missing.json")


def test_tokenizer_works_in_transformers(tok, tmp_path):
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(tokenizer_file=str(save_tokenizer(tok, tmp_path)))
    text = "A fine film.<br />Watch it."
    assert hf(text)["input_ids"] == tok.encode(text).ids


def test_training_is_deterministic(imdb):
    texts = as_texts(imdb["train"], "imdb")[:500]
    a, b = train_tokenizer(texts, vocab_size=3000), train_tokenizer(list(texts), vocab_size=3000)
    assert a.get_vocab() == b.get_vocab()
    assert a.to_str() == b.to_str()


def test_make_loaders_trains_the_same_tokenizer(small):
    kw = dict(max_len=64, batch_size=32, vocab_size=2000, seed=1)
    a, b = make_loaders(small, "imdb", **kw), make_loaders(small, "imdb", **kw)
    assert a["tokenizer"].get_vocab() == b["tokenizer"].get_vocab()
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a["train"], b["train"]))


def test_train_tokenizer_bad_input():
    with pytest.raises(TypeError, match="non-empty list of strings"):
        train_tokenizer([])
    with pytest.raises(ValueError, match="vocab_size must be > 5"):
        train_tokenizer(["a b c"], vocab_size=5)


def test_encode_truncates(tok, imdb):
    texts = as_texts(imdb["train"], "imdb")[:100]
    full, cut = encode_texts(tok, texts, 10**6), encode_texts(tok, texts, 64)
    for f, c in zip(full, cut):
        assert len(c) == min(len(f), 64) and c[0] == CLS_ID and c[-1] == SEP_ID
        assert c[:-1] == f[:len(c) - 1]
    assert any(len(f) > 64 for f in full)
    with pytest.raises(ValueError, match="max_len must be an int >= 2"):
        encode_texts(tok, texts, 1)
    with pytest.raises(TypeError, match="wrap a single text in a list"):
        encode_texts(tok, "a text", 8)


# ---- padding ----
def test_collate_masks_match_lengths():
    items = [{"input_ids": list(range(2, 2 + n)), "labels": n % 2} for n in (5, 2, 7, 3)]
    b = collate_batch(items)
    assert b["input_ids"].shape == (4, 7) and b["input_ids"].dtype == torch.long
    assert b["attention_mask"].dtype == torch.bool
    assert b["attention_mask"].sum(1).tolist() == [5, 2, 7, 3]
    assert (b["input_ids"][~b["attention_mask"]] == PAD_ID).all()
    assert b["labels"].tolist() == [1, 0, 1, 1]
    assert collate_batch(items, pad_id=-7)["input_ids"][1, 2].item() == -7
    with pytest.raises(ValueError, match="empty batch"):
        collate_batch([])


def test_loader_batches_are_padded_with_matching_masks(tok, small):
    loaders = make_loaders(small, "imdb", tok=tok, max_len=128, batch_size=16)
    for split in ("train", "valid", "test"):
        ds, total = loaders[split].dataset, 0
        for b in loaders[split]:
            ids, mask = b["input_ids"], b["attention_mask"]
            assert ids.shape == mask.shape and ids.shape[1] <= 128 and mask.dtype == torch.bool
            lens = mask.sum(1)
            # mask is a prefix of True of each row's length; padding positions hold PAD_ID
            assert torch.equal(mask, torch.arange(ids.shape[1])[None] < lens[:, None])
            assert (ids[~mask] == PAD_ID).all() and (ids[mask] != PAD_ID).all()
            assert (ids[:, 0] == CLS_ID).all() and (ids[torch.arange(len(ids)), lens - 1] == SEP_ID).all()
            assert lens.max() == ids.shape[1]  # dynamic: padded to the longest in the batch only
            total += int(lens.sum())
        assert total == sum(ds.lengths)  # every item seen exactly once, with its own length


# ---- bucketing ----
def test_sampler_covers_each_index_once_and_reshuffles():
    lengths = np.random.default_rng(0).integers(5, 500, size=1000)
    s = LengthBucketSampler(lengths, 32, seed=1)
    e0, e1 = list(s), list(s)
    assert len(e0) == len(s) == 32
    assert sorted(i for b in e0 for i in b) == list(range(1000))
    assert e0 != e1
    s.set_epoch(0)
    assert list(s) == e0
    assert list(LengthBucketSampler(lengths, 32, seed=1)) == e0
    assert list(LengthBucketSampler(lengths, 32, seed=2)) != e0
    assert all(len(b) == 32 for b in LengthBucketSampler(lengths, 32, drop_last=True))
    ordered = [i for b in LengthBucketSampler(lengths, 32, shuffle=False) for i in b]
    assert list(np.diff(lengths[ordered]) >= 0) == [True] * 999
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        LengthBucketSampler(lengths, 0)



@pytest.mark.parametrize("n,bs,chunk", [(1000, 32, 50), (1000, 32, 3), (77, 8, 2), (64, 8, 2), (5, 8, 50)])
def test_sampler_short_batch_always_last(n, bs, chunk):
    lengths = np.random.default_rng(n).integers(5, 500, size=n)
    s = LengthBucketSampler(lengths, bs, seed=3, chunk_batches=chunk)
    for epoch in range(6):
        s.set_epoch(epoch)
        sizes = [len(b) for b in s]
        assert sizes[:-1] == [bs] * (len(sizes) - 1)  # every batch but the last is full
        assert sizes[-1] == (n % bs or bs)
        assert sum(sizes) == n
    s.set_epoch(4); a = list(s); s.set_epoch(4)
    assert list(s) == a  # still seeded and reproducible


def test_sampler_shards_over_processes_without_loss():
    # Accelerate's BatchSamplerShard assumes only the last batch can be short: with it, no index is skipped
    from accelerate.data_loader import BatchSamplerShard
    lengths = np.random.default_rng(0).integers(5, 500, size=1000)
    for epoch in range(4):
        seen = []
        for rank in range(2):
            s = LengthBucketSampler(lengths, 32, seed=epoch, chunk_batches=3)
            seen += [i for b in BatchSamplerShard(s, num_processes=2, process_index=rank) for i in b]
        assert set(seen) == set(range(1000))


def test_dataset_set_epoch_restarts_augmentation_visits(tok):
    drop_words = lambda text, rng: " ".join(w for w in text.split() if rng.random() > 0.5)
    text = ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12"]
    run = TextClassificationDataset(text, [0], tok, 32, augment=drop_words)
    for e in range(3):  # an uninterrupted run: epochs 0, 1, 2
        run.set_epoch(e); got = run[0]["input_ids"]
    resumed = TextClassificationDataset(text, [0], tok, 32, augment=drop_words)
    resumed.set_epoch(2)  # a run resumed at epoch 2 sees the same variant
    assert resumed[0]["input_ids"] == got
    assert len({tuple(resumed[0]["input_ids"]) for _ in range(10)}) > 1  # later visits still vary


def test_bucketing_reduces_padding(tok, small):
    def padded(loader): return sum(b["input_ids"].numel() for b in loader)
    bucketed = make_loaders(small, "imdb", tok=tok, max_len=512, batch_size=16, bucket=True)["train"]
    plain = make_loaders(small, "imdb", tok=tok, max_len=512, batch_size=16, bucket=False)["train"]
    assert padded(bucketed) < 0.8 * padded(plain)
    lengths = bucketed.dataset.lengths
    rand = [list(b) for b in np.array_split(np.random.default_rng(0).permutation(len(lengths)), len(lengths) // 16)]
    assert padding_fraction(LengthBucketSampler(lengths, 16), lengths) < padding_fraction(rand, lengths)


# ---- reproducibility and splits ----
@pytest.mark.parametrize("bucket", [True, False])
def test_same_seed_same_batches(tok, small, bucket):
    kw = dict(tok=tok, max_len=64, batch_size=32, bucket=bucket)
    a, b = make_loaders(small, "imdb", seed=3, **kw), make_loaders(small, "imdb", seed=3, **kw)
    for epoch in range(2):  # the second epoch is reshuffled, identically for both
        ba, bb = batches_of(a["train"]), batches_of(b["train"])
        assert all(torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
                   for x, y in zip(ba, bb))
        if epoch == 0: first = ba
    assert not torch.equal(first[0]["input_ids"], ba[0]["input_ids"])
    c = make_loaders(small, "imdb", seed=4, **kw)
    assert a["valid"].dataset.texts != c["valid"].dataset.texts


def test_valid_held_out_from_train(tok, small):
    loaders = make_loaders(small, "imdb", tok=tok, valid_frac=0.25, max_len=32)
    tr, va, te = (loaders[k].dataset for k in ("train", "valid", "test"))
    assert (len(tr), len(va), len(te)) == (300, 100, 200)
    train_texts = as_texts(small["train"], "imdb")
    assert sorted(tr.texts + va.texts) == sorted(train_texts)
    assert te.texts == as_texts(small["test"], "imdb")


def test_tokenizer_path_accepted(tok, small, tmp_path):
    p = save_tokenizer(tok, tmp_path / "tokenizer.json")
    a = make_loaders(small, "imdb", tok=p, max_len=32)
    assert a["tokenizer"].get_vocab() == tok.get_vocab()


def test_glue_uses_validation_as_test():
    dsd = load_text_dataset("sst2", sample=True)
    dsd["train"] = dsd["train"].select(range(500))
    loaders = make_loaders(dsd, "sst2", max_len=32, vocab_size=500)
    assert len(loaders["test"].dataset) == len(dsd["validation"])
    assert loaders["tokenizer"].get_vocab_size() <= 500


def test_make_loaders_bad_input(tok, imdb):
    with pytest.raises(ValueError, match=r"valid_frac must be in \(0, 1\)"):
        make_loaders(imdb, "imdb", tok=tok, valid_frac=0)
    with pytest.raises(ValueError, match="needs a 'validation' split"):
        make_loaders(imdb, "sst2", tok=tok)
    unlabeled = load_text_dataset("rte", sample=True)
    unlabeled["validation"] = unlabeled["validation"].map(lambda r: {"label": -1}, features=None)
    with pytest.raises(ValueError, match="has no labels"):
        make_loaders(unlabeled, "rte", tok=tok)


# ---- augmentation ----
def drop_words(text, rng):
    return " ".join(w for w in text.split() if rng.random() > 0.3)


def test_augment_on_the_fly_reproducible(tok, small):
    kw = dict(tok=tok, max_len=64, batch_size=32, augment=drop_words, seed=0)
    a, b = make_loaders(small, "imdb", **kw), make_loaders(small, "imdb", **kw)
    assert a["valid"].dataset.augment is None and a["test"].dataset.augment is None
    ea, eb = batches_of(a["train"]), batches_of(b["train"])
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(ea, eb))
    plain = make_loaders(small, "imdb", tok=tok, max_len=64, batch_size=32, seed=0)
    assert any(not torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(ea, batches_of(plain["train"])))
    ds = TextClassificationDataset(["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"], [0], tok, 32, augment=drop_words)
    variants = {tuple(ds[0]["input_ids"]) for _ in range(10)}
    assert len(variants) > 1  # a new variant at each visit
    with pytest.raises(TypeError, match="augment must be callable"):
        TextClassificationDataset(["a"], [0], tok, 8, augment="drop")
