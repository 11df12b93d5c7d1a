"Tests of moe_course.inference: the 🤗 model folder, TextClassifier (predict, evaluate, routing), sharing and bad input."
import json, shutil, warnings
from pathlib import Path
import pytest, torch
from moe_course.batching import collate_batch, encode_texts, train_tokenizer
from moe_course.data import as_texts, load_text_dataset
from moe_course.inference import MODEL_FILES, TextClassifier, check_model_dir
from moe_course.routing_view import plot_routing, routing_html
from moe_course.moe import Switch
from moe_course.transformer import SwitchTransformerClassifier, no_token_dropping

pytestmark = pytest.mark.filterwarnings("ignore:.*longer than max_len")   # reviews are long; one test checks the warning

@pytest.fixture(scope="module")
def texts():
    return as_texts(load_text_dataset("imdb", source="sample")["train"], "imdb")[:200]

@pytest.fixture(scope="module")
def tok(texts): return train_tokenizer(texts, vocab_size=500)

def make_clf(tok, num_experts=4, router="switch", seed=0, **kw):
    torch.manual_seed(seed)
    m = SwitchTransformerClassifier(tok.get_vocab_size(), 2, max_len=32, d_model=16, n_heads=2, d_ff=32, n_layers=2,
                                    num_experts=num_experts, router=router, **kw)
    info = dict(name="tiny", dataset="imdb", source="sample", test=dict(accuracy=0.5, f1=0.4), commit="abc1234")
    return TextClassifier(m, tok, ["neg", "pos"], batch_size=8, device="cpu", info=info)

@pytest.fixture(scope="module")
def clf(tok): return make_clf(tok)

@pytest.fixture
def saved(clf, tmp_path):
    clf.save_pretrained(tmp_path / "m")
    return tmp_path / "m"

def batch_of(clf, texts):
    b = collate_batch([dict(input_ids=x, labels=0) for x in encode_texts(clf.tokenizer, texts, clf.max_len)])
    return b["input_ids"], b["attention_mask"]

# --- save and load -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_experts,router", [(4, "switch"), (1, "switch"), (4, "hash")])
def test_model_from_pretrained_of_save_pretrained_gives_bit_identical_logits(tok, texts, tmp_path, num_experts, router):
    m = make_clf(tok, num_experts, router).model
    m.save_pretrained(tmp_path)
    m2 = SwitchTransformerClassifier.from_pretrained(tmp_path)
    assert not m2.training and m2._hub_mixin_config == m._hub_mixin_config
    ids, mask = batch_of(make_clf(tok), texts[:6])
    with torch.no_grad(): assert torch.equal(m2(ids, mask).logits, m.eval()(ids, mask).logits)

def test_text_classifier_round_trip_is_bit_identical(clf, saved, texts):
    again = TextClassifier.from_pretrained(saved)
    assert again.labels == clf.labels and again.batch_size == clf.batch_size and again.info == clf.info
    ids, mask = batch_of(clf, texts[:8])
    with torch.no_grad(): assert torch.equal(again.model(ids, mask).logits, clf.model(ids, mask).logits)
    assert again.predict(texts[:8], progress=False) == clf.predict(texts[:8], progress=False)

def test_folder_follows_the_hugging_face_conventions(clf, saved, texts):
    from huggingface_hub import ModelCard
    from safetensors.torch import load_file
    from transformers import AutoTokenizer
    assert {p.name for p in saved.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                                  "tokenizer_config.json", "README.md"}
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["num_experts"] == 4 and cfg["vocab_size"] == clf.tokenizer.get_vocab_size() and cfg["max_len"] == 32
    assert cfg["id2label"] == {"0": "neg", "1": "pos"} and cfg["label2id"] == {"neg": 0, "pos": 1}
    sd, st = clf.model.state_dict(), load_file(saved / "model.safetensors")
    assert set(st) == set(sd) and all(torch.equal(st[k], sd[k]) for k in sd)
    hf = AutoTokenizer.from_pretrained(saved)                        # cross-check: transformers reads our tokenizer
    plain = [" ".join(t.split()[:20]) for t in texts[:5]]
    assert [hf(t)["input_ids"] for t in plain] == encode_texts(clf.tokenizer, plain, 10_000)
    assert hf.pad_token_id == 0 and hf.model_max_length == 32
    card = ModelCard.load(saved / "README.md")
    assert card.data.library_name == "moe-course" and card.data.datasets == ["stanfordnlp/imdb"]
    for s in ("## Data", "## Metrics", "| test | 0.5000 | 0.4000 |", "commit `abc1234`", "bundled sample"): assert s in card.text

def test_push_to_hub_uploads_the_saved_folder(clf, saved, tmp_path, monkeypatch, texts):
    import huggingface_hub.hub_mixin as hm
    got = {}
    class FakeApi:                                                    # no network: record what would be uploaded
        def __init__(self, token=None): pass
        def create_repo(self, repo_id, **kw): return type("R", (), {"repo_id": repo_id})()
        def upload_folder(self, repo_id, folder_path, **kw):
            got[repo_id] = tmp_path / repo_id; shutil.copytree(folder_path, got[repo_id]); return "url"
    monkeypatch.setattr(hm, "HfApi", FakeApi)
    assert clf.push_to_hub("someone/tiny-switch") == "url"
    up = got["someone/tiny-switch"]
    assert sorted(p.name for p in up.iterdir()) == sorted(p.name for p in saved.iterdir())
    assert TextClassifier.from_pretrained(up).predict(texts[:4], progress=False) == clf.predict(texts[:4], progress=False)
    clf.model.push_to_hub("someone/model-only")                        # the bare model has the mixin's method too
    assert {"config.json", "model.safetensors"} <= {p.name for p in got["someone/model-only"].iterdir()}

# --- bad input -----------------------------------------------------------------------------------------------------
def test_missing_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder at .*moe-course train"):
        TextClassifier.from_pretrained(tmp_path / "runs" / "nothing" / "model")

def test_hub_id_that_cannot_be_downloaded():
    with pytest.raises(FileNotFoundError, match="could not be downloaded from the Hugging Face Hub"):
        TextClassifier.from_pretrained("nobody-here/no-such-model", local_files_only=True)

@pytest.mark.parametrize("name", MODEL_FILES)
def test_half_written_folder_names_the_missing_file(saved, name):
    (saved / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"incomplete, {name} missing"): TextClassifier.from_pretrained(saved)
    with pytest.raises(FileNotFoundError, match="train again"): check_model_dir(saved)

@pytest.mark.parametrize("name,msg", [("model.safetensors", "cut short"), ("config.json", "not valid JSON"),
                                      ("tokenizer.json", "cannot be read")])
def test_truncated_files(saved, name, msg):
    p = saved / name
    p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2])
    with pytest.raises(ValueError, match=msg): TextClassifier.from_pretrained(saved)

def test_weights_of_another_config(saved, tmp_path, tok):
    other = tmp_path / "other"; make_clf(tok, num_experts=2).save_pretrained(other)
    shutil.copy(other / "model.safetensors", saved / "model.safetensors")
    with pytest.raises(ValueError, match="do not load"): TextClassifier.from_pretrained(saved)

def test_tokenizer_that_does_not_match_the_model(clf, saved):
    small = train_tokenizer(["a very small corpus", "of two short texts"], vocab_size=60)
    small.save(str(saved / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model was built for 5\d\d"):
        TextClassifier.from_pretrained(saved)
    with pytest.raises(ValueError, match="do not belong together"): TextClassifier(clf.model, small)

@pytest.mark.parametrize("given,err,msg", [("", ValueError, "text 0 is empty"), (["fine", "  \n "], ValueError, "text 1 is empty"),
                                           ([], ValueError, "no text to classify"), (["ok", 3], TypeError, "text 1 is a int")])
def test_empty_or_wrong_texts(clf, given, err, msg):
    with pytest.raises(err, match=msg): clf(given)

def test_long_text_is_truncated_with_one_warning(clf, texts):
    long = [" ".join(texts[:3]), " ".join(texts[3:6]), "short"]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = clf.predict(long, progress=False)
    assert len(out) == 3 and len(w) == 1
    assert "2 of 3 text(s) are longer than max_len=32 tokens and were truncated" in str(w[0].message)
    ids = clf._encode(long[:1])[0]
    assert len(ids) == 32 and ids[-1] == 3                            # cut to max_len, [SEP] kept
    with warnings.catch_warnings():
        warnings.simplefilter("error"); clf.predict(["short", "texts only"], progress=False)   # no warning

@pytest.mark.parametrize("dataset,split,msg", [("imdb", "dev", "unknown split 'dev' of imdb: choose one of train, test"),
                                               ("imdb", "validation", "choose one of train, test"),
                                               ("yelp", "test", "unknown dataset"), ("yelp", None, "unknown dataset")])
def test_unknown_split_or_dataset(clf, dataset, split, msg):
    with pytest.raises(ValueError, match=msg): clf.evaluate(dataset, split, source="sample", progress=False)

def test_split_without_labels(clf, monkeypatch):
    import datasets, moe_course.data
    unlabelled = datasets.DatasetDict(test=datasets.Dataset.from_dict(dict(sentence=["a film"], label=[-1], idx=[0])))
    monkeypatch.setattr(moe_course.data, "load_text_dataset", lambda *a, **k: unlabelled)   # like GLUE's test sets
    with pytest.raises(ValueError, match="'test' split of sst2 has no labels .*: evaluate on 'validation'"):
        clf.evaluate("sst2", "test", progress=False)

# --- predict, evaluate, routing --------------------------------------------------------------------------------------
def test_predict_returns_label_and_probability(clf, texts):
    one = clf(texts[0])
    assert set(one) == {"label", "score"} and one["label"] in ("neg", "pos") and 0.5 <= one["score"] <= 1
    many = clf(texts[:20], progress=False)
    assert len(many) == 20 and all(r["label"] in ("neg", "pos") and 0.5 <= r["score"] <= 1 for r in many)
    ids, mask = batch_of(clf, texts[:8])                              # score = softmax probability of the label
    with torch.no_grad(), no_token_dropping(clf.model): p = clf.model(ids, mask).logits.softmax(-1)   # as predict runs
    assert [r["score"] for r in many[:8]] == pytest.approx(p.max(-1).values.tolist(), abs=1e-6)

def test_progress_bar_only_when_asked_and_long(clf, texts, capsys):
    clf.predict(texts[:40], progress=False); assert "predict" not in capsys.readouterr().err
    clf.predict(texts[:40], progress=True); assert "predict" in capsys.readouterr().err
    clf.predict(texts[:3], progress=True); assert "predict" not in capsys.readouterr().err    # one batch: no bar

def test_routing_matches_the_switch_diagnostics(tok, texts):
    c = make_clf(tok, capacity_factor=0.5)                            # small capacity: some tokens are dropped
    c.drop_tokens = True                                              # capacity as in training (predict drops none)
    r = c(texts[0], routing=True)["routing"]
    ids, mask = batch_of(c, texts[:1])
    with torch.no_grad(): diags = c.model(ids, mask).diagnostics
    assert r["tokens"] == [c.tokenizer.id_to_token(i) for i in ids[0].tolist()] and len(r["layers"]) == 2
    for layer, d in zip(r["layers"], diags):
        assert len(layer["expert"]) == len(layer["gate"]) == len(layer["dropped"]) == len(r["tokens"])
        assert [layer["expert"].count(e) for e in range(4)] == d.tokens_per_expert.tolist()
        assert sum(layer["dropped"]) == int(d.dropped) > 0
        assert all(0 < g <= 1 for g in layer["gate"])
        C = int(d.capacity)                                           # earlier tokens win: the first C never dropped
        assert not any(layer["dropped"][:C])

def test_routing_of_a_dense_model(tok):
    with pytest.raises(ValueError, match="no Switch layer"): make_clf(tok, num_experts=1)("a film", routing=True)

def test_routing_html_escapes_and_marks_drops():
    r = dict(tokens=["[CLS]", "<b>", "&", "od", "##d", "[SEP]"],
             layers=[dict(expert=[0, 1, 1, 2, 2, 0], gate=[0.9, 0.5, 1.0, 0.7, 0.6, 0.8], dropped=[False] * 4 + [True, False])])
    h = routing_html(r)
    assert h.count("<span title=") == 6 and "&lt;b&gt;" in h and "&amp;" in h and "<b>" not in h.replace("<b>layer", "")
    assert h.count("line-through;color") == 1 and 'title="expert 2, gate 0.60, dropped (over capacity)"' in h
    assert ">od</span><span" in h and " <span" in h                 # ##d joins its word; words are spaced
    assert "expert 2</span>" in h and "expert 3" not in h             # a key for each expert used

def test_routing_html_and_png(tok, tmp_path):
    c = make_clf(tok, capacity_factor=0.5); c.drop_tokens = True
    r = c("an odd film, really odd odd odd odd odd odd and more", routing=True)["routing"]
    h = routing_html(r)
    assert h.count("<span title=") == 2 * len(r["tokens"]) and "layer 2" in h
    assert h.count("line-through;color") == sum(map(sum, (l["dropped"] for l in r["layers"]))) > 0
    fig = plot_routing(r, path=tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG" and len([a for a in fig.axes if a.texts]) == 2

def test_evaluate_agrees_with_sklearn(clf):
    from sklearn.metrics import confusion_matrix, f1_score
    m = clf.evaluate("imdb", "test", source="sample", batch_size=100, progress=False)
    ds = load_text_dataset("imdb", source="sample")["test"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = [clf.labels.index(r["label"]) for r in clf.predict(as_texts(ds, "imdb"), batch_size=100, progress=False)]
    assert m["n"] == len(ds) == sum(map(sum, m["confusion"]))
    assert m["confusion"] == confusion_matrix(ds["label"], pred).tolist()
    assert m["f1"] == pytest.approx(f1_score(ds["label"], pred, average="macro"), abs=1e-9)
    assert m["accuracy"] == pytest.approx(sum(p == y for p, y in zip(pred, ds["label"])) / len(ds), abs=1e-12)

# --- a score does not depend on the other texts of its batch ---------------------------------------------------------
@pytest.mark.parametrize("router", ["switch", "expert_choice"])
def test_a_score_does_not_depend_on_the_batch(tok, texts, router):
    clf = make_clf(tok, num_experts=4, router=router, capacity_factor=0.5)    # crowded experts: capacity would bite
    long = " ".join(texts[1:4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = clf.predict([texts[0]], progress=False)[0]["score"]
        beside = clf.predict([texts[0], long], progress=False)[0]["score"]
        one_by_one = clf.predict([long, texts[0]], batch_size=1, progress=False)[1]["score"]
        assert beside == pytest.approx(alone, abs=1e-5) and one_by_one == pytest.approx(alone, abs=1e-5)
        clf.drop_tokens = True                                                # per-batch capacity, as in training
        assert clf.predict([texts[0], long], progress=False)[0]["score"] != pytest.approx(alone, abs=1e-5)
    m = [x for x in clf.model.modules() if isinstance(x, Switch)][0]
    assert m.capacity_factor == 0.5                                           # the model's own setting is kept

def test_evaluate_is_the_same_for_every_batch_size(tok):
    clf = make_clf(tok, num_experts=4, capacity_factor=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = (clf.evaluate("imdb", "test", source="sample", batch_size=bs, progress=False) for bs in (7, 64))
    assert a["accuracy"] == b["accuracy"] and a["confusion"] == b["confusion"]

def test_texts_of_unknown_words_only_warn(clf):
    with pytest.warns(UserWarning, match=r"1 of 2 text\(s\) \(e.g. text 1\) hold no word the vocabulary knows, only \[UNK\]"):
        clf(["a good film", "映画 🎬"])
