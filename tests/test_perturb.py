"Tests for moe_course.perturb: seeded perturbations, whole-split perturbation, evaluation under perturbation."
import random

import datasets
import pytest
import torch
from torch import nn

from moe_course.perturb import (PERTURBATIONS, CONTRACTIONS, HOMOGLYPHS, perturb, perturb_dataset, word_swap_contract,
                                word_swap_extend, word_swap_random_character_deletion)
from moe_course.robustness import evaluate_under_perturbation, predict, robustness_suite

TEXT = ("This movie is not good and I am sure it will not win anything. The acting was terrible, "
        "the story dull, but they are trying and it is watchable. I do not recommend it.")
CONTRACTED = "It's bad, I don't like it and they're wrong, isn't it? I'm out."
CHAR_LEVEL = [n for n in PERTURBATIONS if n not in ("word_swap_contract", "word_swap_extend")]


def _input_for(name):
    return CONTRACTED if name == "word_swap_extend" else TEXT


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_deterministic_under_seed_and_changes_text(name):
    text = _input_for(name)
    a, b = perturb(text, name, pct=0.3, seed=7), perturb(text, name, pct=0.3, seed=7)
    assert a == b and a != text
    fn = PERTURBATIONS[name]
    assert fn(text, 0.3, random.Random(7)) == a           # int seed == random.Random(seed)
    outs = {perturb(text, name, pct=0.3, seed=s) for s in range(6)}
    assert len(outs) > 1                                 # the seed matters


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_nothing_to_perturb_returns_input(name):
    for text in ["", "12 345 !!", "an ox is at my tv"]:    # no word of >= 3 letters, no (un)contractible phrase
        assert perturb(text, name, pct=1.0, seed=0) == text
    assert perturb(TEXT, name, pct=0.0, seed=0) == TEXT     # pct = 0 changes nothing


def test_contract_and_extend_round_trip_and_case():
    assert word_swap_contract("It is fine. You are right.", pct=1.0) == "It's fine. You're right."
    assert word_swap_extend("I'm sure it won't.", pct=1.0) == "I am sure it will not."
    for long, short in CONTRACTIONS.items():
        assert word_swap_extend(word_swap_contract(long, 1.0), 1.0).lower() == (long if long != "cannot" else "cannot")
    assert word_swap_contract("Nothing here to change.", 1.0) == "Nothing here to change."


def test_fraction_of_sites():
    words = " ".join(["wonderful"] * 20)
    out = word_swap_random_character_deletion(words, pct=0.25, rng=0)
    assert len(words) - len(out) == 5                     # ceil(0.25 * 20) words lose one letter each
    assert sum(w != "wonderful" for w in out.split()) == 5


@pytest.mark.parametrize("name", [n for n in CHAR_LEVEL if n != "combination"])  # combination also contracts
def test_punctuation_and_spacing_kept(name):
    out = perturb(TEXT, name, pct=1.0, seed=3)
    glyphs = set(HOMOGLYPHS.values())
    strip = lambda s: [c for c in s if not c.isalpha() and c not in glyphs]
    assert strip(out) == strip(TEXT)


def test_perturb_dataset_keeps_labels_and_is_order_independent():
    texts = [TEXT, CONTRACTED, "fine", TEXT]
    ds = datasets.Dataset.from_dict(dict(text=texts, label=[1, 0, 1, 0]))
    out = perturb_dataset(ds, "word_swap_qwerty", seed=1, pct=0.5)
    assert out["label"] == [1, 0, 1, 0] and out["text"] != texts
    assert out["text"][2] == "fine" or len(out["text"][2]) == 4
    plain = perturb_dataset(texts, "word_swap_qwerty", seed=1, pct=0.5)
    assert plain == perturb_dataset(texts, "word_swap_qwerty", seed=1, pct=0.5)
    assert plain[1:] == perturb_dataset(texts, "word_swap_qwerty", seed=1, pct=0.5)[1:]
    assert perturb_dataset(texts, "word_swap_qwerty", seed=1, pct=0.5, workers=2) == plain


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown perturbation"): perturb(TEXT, "word_swap_typo")
    with pytest.raises(ValueError, match="unknown perturbation"): perturb_dataset([TEXT], "nope")
    with pytest.raises(ValueError, match="pct"): perturb(TEXT, "word_swap_qwerty", pct=1.5)
    with pytest.raises(TypeError, match="rng"): word_swap_contract(TEXT, 0.1, rng="seed")
    with pytest.raises(TypeError, match="list of texts"): perturb_dataset(TEXT, "word_swap_qwerty")


class _CountA(nn.Module):
    "Predicts class 1 iff token id 7 occurs: a deterministic stand-in classifier."
    def __init__(self): super().__init__(); self.w = nn.Parameter(torch.zeros(1))
    def forward(self, input_ids, attention_mask=None):
        has = ((input_ids == 7) & attention_mask).any(-1).float()
        return torch.stack([1 - has, has], -1) + 0 * self.w


class _Tok:
    "Minimal 🤗-style tokenizer: ids by word, 'good' -> 7."
    pad_token_id = 0
    def __call__(self, texts, truncation=True, max_length=None):
        ids = [[7 if w == "good" else 5 for w in t.split()][:max_length] or [5] for t in texts]
        return {"input_ids": ids}


def test_evaluate_under_perturbation_whole_split():
    texts = ["good film indeed"] * 6 + ["bad film indeed"] * 6
    labels = [1] * 6 + [0] * 6
    model, tok = _CountA(), _Tok()
    assert predict(model, tok, texts).tolist() == labels
    rows = evaluate_under_perturbation(model, tok, texts, labels, pct=1.0, names=["word_swap_random_character_deletion"])
    assert [r["perturbation"] for r in rows] == ["clean", "word_swap_random_character_deletion"]
    assert rows[0]["accuracy"] == 1.0 and rows[0]["n"] == 12
    assert rows[1]["accuracy"] == 0.5 and rows[1]["changed"] == 1.0   # every 'good' loses a letter
    assert rows[1]["delta"] == pytest.approx(-0.5)
    suite = robustness_suite({"a": (model, tok), "b": (model, tok)}, texts, labels, names=["word_swap_contract"])
    assert len(suite) == 4 and {r["model"] for r in suite} == {"a", "b"}
    with pytest.raises(ValueError, match="labels"): evaluate_under_perturbation(model, tok, texts, labels[:3])
