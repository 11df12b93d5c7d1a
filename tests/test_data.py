"Tests of moe_course.data: sources, schemas, offline behaviour and the error messages."
import logging, os, random, shutil, socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from moe_course import data
from moe_course.data import (DATASETS, SAMPLE_DIR, as_texts, check_sources, eval_split, hub_reachable,
                             load_text_dataset, set_seed, text_columns)

FULL = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data from the repo root
needs_full = pytest.mark.skipif(not (FULL / "imdb" / "train.parquet").exists(), reason=f"full data not at {FULL}")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    "No test depends on the caller's data settings."
    for k in ("MOE_COURSE_DATA", "MOE_COURSE_SAMPLES", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def no_network(monkeypatch):
    "Every attempt to open a network connection fails at once."
    def refuse(*a, **k): raise OSError("network blocked by test")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@needs_full
def test_full_imdb_25k():
    dsd = load_text_dataset("imdb", data_dir=FULL)
    assert (len(dsd["train"]), len(dsd["test"])) == (25_000, 25_000)
    assert dsd["train"].column_names == ["text", "label"]  # rating and id dropped, as on the Hub
    assert dsd["train"].features["label"].names == ["neg", "pos"]
    assert sum(dsd["test"]["label"]) == 12_500


@needs_full
@pytest.mark.parametrize("name", ["sst2", "rte", "amazon_polarity"])
def test_full_others_match_files(name):
    dsd = load_text_dataset(name, source="local", data_dir=str(FULL))
    for split, ds in dsd.items():
        assert len(ds) == pq.read_metadata(FULL / name / f"{split}.parquet").num_rows
        assert ds.column_names == list(DATASETS[name]["columns"])


def test_env_var_is_a_local_source(monkeypatch, caplog):
    monkeypatch.setenv("MOE_COURSE_DATA", str(SAMPLE_DIR))
    with caplog.at_level(logging.WARNING, logger="moe_course.data"):
        dsd = load_text_dataset("rte")
    assert len(dsd["train"]) == pq.read_metadata(SAMPLE_DIR / "rte" / "train.parquet").num_rows
    assert "NOT comparable" not in caplog.text


@pytest.mark.parametrize("name", list(DATASETS))
def test_samples_offline(name, no_network, caplog):
    with caplog.at_level(logging.INFO, logger="moe_course.data"):
        dsd = load_text_dataset(name, sample=True)
    spec = DATASETS[name]
    assert list(dsd) == [s for s in spec["splits"] + spec["optional"] if (SAMPLE_DIR / name / f"{s}.parquet").exists()]
    for ds in dsd.values():
        assert ds.column_names == list(spec["columns"])
        assert ds.features["label"].num_classes == 2
    notes = [r for r in caplog.records if "NOT comparable" in r.getMessage()]
    assert [r.levelno for r in notes] == [logging.INFO]  # asked for: a note, not a warning


def test_auto_falls_back_to_samples_without_network(no_network, caplog):
    assert hub_reachable() is False
    with caplog.at_level(logging.WARNING, logger="moe_course.data"):
        dsd = load_text_dataset("imdb")
    assert len(dsd["train"]) == pq.read_metadata(SAMPLE_DIR / "imdb" / "train.parquet").num_rows
    assert "bundled sample" in caplog.text
    assert any(r.levelno == logging.WARNING and "NOT comparable" in r.getMessage() for r in caplog.records)


def test_samples_are_balanced_and_sized():
    for name, (n_train, n_test) in {"imdb": (2000, 1000), "amazon_polarity": (1000, 500)}.items():
        dsd = load_text_dataset(name, sample=True)
        assert (len(dsd["train"]), len(dsd["test"])) == (n_train, n_test)
        assert sum(dsd["train"]["label"]) == n_train // 2 and sum(dsd["test"]["label"]) == n_test // 2
    total = sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file())
    assert total < 10 * 2**20


def test_samples_dir_override(monkeypatch, tmp_path):
    shutil.copytree(SAMPLE_DIR / "rte", tmp_path / "rte")
    monkeypatch.setenv("MOE_COURSE_SAMPLES", str(tmp_path))
    assert data.sample_dir() == tmp_path
    assert len(load_text_dataset("rte", sample=True)["validation"]) > 0
    monkeypatch.setenv("MOE_COURSE_SAMPLES", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="MOE_COURSE_SAMPLES"):
        load_text_dataset("rte", sample=True)


# ---- one clear error per bad input ----
def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown dataset 'imbd'.*'imdb', 'sst2', 'rte', 'amazon_polarity'"):
        load_text_dataset("imbd", sample=True)
    with pytest.raises(ValueError, match="valid names"):
        text_columns(None)


def test_bad_source():
    with pytest.raises(ValueError, match="source must be one of"):
        load_text_dataset("imdb", source="web")
    with pytest.raises(ValueError, match="needs data_dir= or the MOE_COURSE_DATA"):
        load_text_dataset("imdb", source="local")


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*MOE_COURSE_DATA"):
        load_text_dataset("imdb", data_dir=tmp_path / "nope")


def test_missing_split_file(tmp_path):
    (tmp_path / "imdb").mkdir()
    shutil.copy(SAMPLE_DIR / "imdb" / "train.parquet", tmp_path / "imdb" / "train.parquet")
    with pytest.raises(FileNotFoundError, match=r"test\.parquet is missing"):
        load_text_dataset("imdb", data_dir=tmp_path)


def test_missing_column(tmp_path):
    (tmp_path / "imdb").mkdir()
    for split in ("train", "test"):
        pq.write_table(pa.table({"review": ["good", "bad"], "label": [1, 0]}), tmp_path / "imdb" / f"{split}.parquet")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['text'\]"):
        load_text_dataset("imdb", source="local", data_dir=tmp_path)


def test_unreachable_hub(no_network):
    with pytest.raises(ConnectionError, match="not reachable.*sample=True"):
        load_text_dataset("sst2", source="hub")


def test_hub_offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE"):
        load_text_dataset("imdb", source="hub")


# ---- helpers ----
@pytest.mark.parametrize("name", list(DATASETS))
def test_as_texts(name):
    ds = load_text_dataset(name, sample=True)[eval_split(name)]
    texts = as_texts(ds, name)
    assert len(texts) == len(ds) and all(isinstance(t, str) and t for t in texts)
    row = ds[0]
    expected = {"imdb": row.get("text"), "sst2": row.get("sentence"),
                "rte": f"{row.get('sentence1')} {row.get('sentence2')}",
                "amazon_polarity": f"{row.get('title')}. {row.get('content')}"}[name]
    assert texts[0] == expected


def test_as_texts_wrong_columns():
    ds = load_text_dataset("sst2", sample=True)["validation"]
    with pytest.raises(ValueError, match="need column"):
        as_texts(ds, "imdb")


def test_set_seed():
    def draw(): return random.random(), float(np.random.rand()), torch.randn(3).tolist()
    set_seed(123); a = draw()
    set_seed(123); b = draw()
    set_seed(124); c = draw()
    assert a == b and a != c
    with pytest.raises(TypeError, match="seed must be an int"):
        set_seed(1.5)


def test_check_sources(no_network):
    rows = check_sources()
    assert [r["name"] for r in rows] == list(DATASETS)
    assert all(r["hub_reachable"] is False and r["auto"] == "sample" and r["sample"] for r in rows)
    rows = check_sources(SAMPLE_DIR)
    assert all(r["auto"] == "local" and r["local"] == r["sample"] for r in rows)
    assert all(r["auto"].startswith("error") for r in check_sources("/no/such/folder"))


# --- labels and texts are checked when the data loads ----------------------------------------------------------------
def _write(folder, train, test=None):
    (folder / "imdb").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(train), folder / "imdb" / "train.parquet")
    pq.write_table(pa.table(test or dict(text=["good", "bad"], label=[1, 0])), folder / "imdb" / "test.parquet")
    return folder

@pytest.mark.parametrize("train,msg", [
    (dict(text=["a", "b", "c"], label=[0, 1, 5]), "imdb/train from {d}/imdb has labels 0, 1, 5; expected the integers 0, 1"),
    (dict(text=["a", "b", "c"], label=[0, -1, 1]), "has labels -1, 0, 1; expected the integers 0, 1"),
    (dict(text=["a", "b"], label=["pos", "neg"]), "has string labels (e.g. "),
    (dict(text=["a", None, " "], label=[0, 1, 0]), "has 2 row(s) without text (missing or blank: rows 1, 2)"),
])
def test_labels_and_texts_are_checked_when_the_data_loads(tmp_path, train, msg):
    with pytest.raises(ValueError) as e: load_text_dataset("imdb", source="local", data_dir=_write(tmp_path, train))
    assert msg.format(d=tmp_path) in str(e.value)

def test_a_column_missing_from_one_split_is_named(tmp_path):
    _write(tmp_path, dict(text=["a", "b"], label=[0, 1]), dict(text=["c", "d"]))
    with pytest.raises(ValueError, match=r"imdb/test .* lacks column\(s\) \['label'\]"):
        load_text_dataset("imdb", source="local", data_dir=tmp_path)

def test_an_unlabelled_glue_test_split_loads(tmp_path):
    for split, lab in (("train", [0, 1]), ("validation", [1, 0]), ("test", [-1, -1])):
        (tmp_path / "sst2").mkdir(exist_ok=True)
        pq.write_table(pa.table(dict(sentence=["a", "b"], label=lab, idx=[0, 1])), tmp_path / "sst2" / f"{split}.parquet")
    assert load_text_dataset("sst2", source="local", data_dir=tmp_path)["test"]["label"] == [-1, -1]

def test_a_data_dir_is_never_ignored():
    with pytest.raises(ValueError, match="source='local'"): load_text_dataset("imdb", source="sample", data_dir="/nonexistent")
