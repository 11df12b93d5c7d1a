"Tests of moe_course.augment: reproducibility, never-empty outputs, word-level operations, argument checks."
import random
from collections import Counter

import pytest

from moe_course.augment import (apply_augmentation, build_vocab, random_deletion, random_replacement,
                                random_swap)

WORDS = "the acting was wooden and the plot made no sense at all".split()
VOCAB = ["film", "story", "great", "boring", "actor", "plot", "scene"]


@pytest.mark.parametrize("fn", [
    lambda w, r: random_deletion(w, 0.3, r),
    lambda w, r: random_swap(w, 3, r),
    lambda w, r: random_replacement(w, 0.3, VOCAB, r),
])
def test_ops_deterministic_under_seed(fn):
    assert fn(WORDS, 123) == fn(WORDS, 123)
    assert fn(WORDS, random.Random(5)) == fn(WORDS, random.Random(5))
    assert fn(WORDS, 5) == fn(WORDS, random.Random(5))          # an int seed means random.Random(seed)
    assert len({tuple(fn(WORDS, s)) for s in range(30)}) > 1    # and different seeds differ


def test_ops_do_not_mutate_input():
    w = list(WORDS)
    random_deletion(w, 0.5, 0); random_swap(w, 5, 0); random_replacement(w, 0.5, VOCAB, 0)
    assert w == WORDS


def test_apply_augmentation_deterministic():
    text = " ".join(WORDS)
    for seed in range(10):
        assert apply_augmentation(text, seed, vocab=VOCAB) == apply_augmentation(text, seed, vocab=VOCAB)
    outs = {apply_augmentation(text, s, p_delete=0.2, n_swap=2, vocab=VOCAB) for s in range(20)}
    assert len(outs) > 1


def test_random_rng_continues_stream():
    g = random.Random(0)
    a, b = random_deletion(WORDS, 0.5, g), random_deletion(WORDS, 0.5, g)
    g2 = random.Random(0)
    assert random_deletion(WORDS, 0.5, g2) == a and random_deletion(WORDS, 0.5, g2) == b


@pytest.mark.parametrize("text", ["good", "not good", "a b c d e f"])
def test_never_empty(text):
    for seed in range(100):
        out = apply_augmentation(text, seed, p_delete=1.0, n_swap=4, p_replace=1.0, vocab=VOCAB)
        assert out.split(), (text, seed)
        assert len(random_deletion(text.split(), 1.0, seed)) == 1


def test_deletion_keeps_a_subsequence():
    for seed in range(20):
        out = random_deletion(WORDS, 0.4, seed)
        it = iter(WORDS)
        assert all(w in it for w in out)                       # order preserved, only removals


def test_deletion_rate_matches_p():
    kept = sum(len(random_deletion(WORDS, 0.2, s)) for s in range(3000)) / 3000
    assert kept == pytest.approx(0.8 * len(WORDS), rel=0.03)


def test_swap_is_a_permutation_and_one_swap_moves_two_words():
    for seed in range(20):
        assert Counter(random_swap(WORDS, 4, seed)) == Counter(WORDS)
    distinct = "a b c d e f g".split()
    for seed in range(20):
        assert sum(x != y for x, y in zip(random_swap(distinct, 1, seed), distinct)) == 2


def test_replacement_words_come_from_vocab():
    for seed in range(20):
        out = random_replacement(WORDS, 0.5, VOCAB, seed)
        assert len(out) == len(WORDS)
        assert all(a == b or b in VOCAB for a, b in zip(WORDS, out))
    assert random_replacement(WORDS, 1.0, ["zzz"], 0) == ["zzz"] * len(WORDS)
    # sets are sorted first, so the result does not depend on hash order
    assert random_replacement(WORDS, 0.5, set(VOCAB), 3) == random_replacement(WORDS, 0.5, sorted(VOCAB), 3)


def test_works_on_words_not_characters():
    out = apply_augmentation("wonderful heartfelt performances", 0, p_delete=0.0, n_swap=1, p_replace=0.0)
    assert sorted(out.split()) == sorted(["wonderful", "heartfelt", "performances"])
    with pytest.raises(TypeError, match="not a string"):
        random_deletion("wonderful", 0.5, 0)
    with pytest.raises(TypeError, match="not a string"):
        random_swap("wonderful", 1, 0)


def test_identity_settings_and_empty_text():
    text = "  spaced   out\ttext "
    assert apply_augmentation(text, 0, p_delete=0, n_swap=0, p_replace=0) == text
    assert apply_augmentation("", 0) == ""
    assert apply_augmentation(" \n ", 0) == " \n "
    assert random_deletion([], 0.5, 0) == [] and random_swap([], 3, 0) == []


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.1", True])
def test_bad_probability(p):
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\]"):
        random_deletion(WORDS, p, 0)
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\]"):
        random_replacement(WORDS, p, VOCAB, 0)
    with pytest.raises(ValueError, match=r"p_delete must be a probability in \[0, 1\]"):
        apply_augmentation("a b", 0, p_delete=p)
    with pytest.raises(ValueError, match=r"p_replace must be a probability in \[0, 1\]"):
        apply_augmentation("a b", 0, p_replace=p)


@pytest.mark.parametrize("n", [-1, 1.5, "2", None])
def test_bad_count(n):
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        random_swap(WORDS, n, 0)
    with pytest.raises(ValueError, match="n_swap must be an int >= 0"):
        apply_augmentation("a b", 0, n_swap=n)


def test_bad_rng_and_vocab():
    for bad in [None, 1.5, "0", True]:
        with pytest.raises(TypeError, match="rng must be a random.Random or an int seed"):
            apply_augmentation("a b", bad)
    with pytest.raises(ValueError, match="vocab is empty"):
        random_replacement(WORDS, 0.1, [], 0)
    with pytest.raises(TypeError, match="vocab must be a list of words"):
        random_replacement(WORDS, 0.1, None, 0)
    with pytest.raises(TypeError, match="text must be a str"):
        apply_augmentation(["a", "b"], 0)


def test_vocab_none_uses_the_texts_own_words():
    text = "alpha beta gamma delta"
    for seed in range(20):
        assert set(apply_augmentation(text, seed, p_delete=0, n_swap=0, p_replace=0.5).split()) <= set(text.split())


def test_build_vocab():
    texts = ["The film was great.", "the film <br />was THE best", "a film, a plot 1999"]
    assert build_vocab(texts, min_count=2) == ["film", "the", "a", "was"]          # count desc, ties alphabetical
    assert build_vocab(texts, min_count=1, max_size=2) == ["film", "the"]
    assert all(w.isalpha() and w.islower() for w in build_vocab(texts, min_count=1))
    assert build_vocab(texts, min_count=10) == []
    with pytest.raises(TypeError, match="not one string"):
        build_vocab("the film", min_count=1)
    with pytest.raises(ValueError, match="min_count must be an int >= 0"):
        build_vocab(texts, min_count=-1)


def test_works_as_dataset_augment_callable():
    from functools import partial
    aug = partial(apply_augmentation, p_delete=0.1, n_swap=1, p_replace=0.1, vocab=VOCAB)
    assert aug("a fine film", random.Random(0)) == apply_augmentation("a fine film", 0, vocab=VOCAB)
