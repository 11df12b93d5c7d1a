"Tests of the `moe-course` command line (moe_course.cli)."
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from moe_course.cli import main, read_texts, train_cli

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")

def cli(*args, timeout=300):
    "Run the console script (or, if not installed, the same entry point through python)."
    exe = shutil.which("moe-course", path=str(Path(sys.executable).parent))
    cmd = [exe, *args] if exe else [sys.executable, "-c", "import sys; from moe_course.cli import main; sys.exit(main())", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)

def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("data", "train", "predict", "evaluate"))
    assert main([]) == 2

def test_unknown_command(capsys):
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err

def test_data_check_runs():
    r = cli("data", "--check")
    assert r.returncode == 0, r.stderr
    for name in ("imdb", "sst2", "rte", "amazon_polarity"): assert name in r.stdout
    assert "sample" in r.stdout

def test_data_check_bad_dir(capsys, tmp_path):
    assert main(["data", "--check", "--data-dir", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err

@pytest.mark.parametrize("args,msg", [
    (["--router", "top2"], "invalid choice: 'top2'"),
    (["--num-experts", "many"], "invalid int value: 'many'"),
    (["--epochs", "0"], "epochs must be a positive integer"),
    (["--d-model", "30"], "must be divisible by n_heads"),
    (["--label-smoothing", "1.5"], "label_smoothing must be in [0, 1)"),
    (["--preset", "nope"], "invalid choice: 'nope'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--resume"], "--resume needs --out-dir"),
    (["--capacity-factor", "inf"], "capacity_factor must be a finite number"),
    (["--resume", "--overwrite", "--out-dir", "x"], "--overwrite replaces it: choose one"),
])
def test_train_bad_values_error_clearly(args, msg, capsys):
    with pytest.raises(SystemExit) as e: train_cli(args)
    assert e.value.code == 2
    assert msg in capsys.readouterr().err

def test_flags_override_preset(capsys):
    assert train_cli(["--preset", "imdb-switch-gpu", "--num-experts", "16", "--router", "hash", "--no-fgm", "--show-config"]) == 0
    out = capsys.readouterr().out
    assert "num_experts=16" in out and "router='hash'" in out and "fgm=False" in out and "max_len=512" in out

def test_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"  # in-process (the console script itself is exercised by test_data_check_runs)
    assert main(["train", "--preset", "quick", "--epochs", "1", "--max-len", "32", "--out-dir", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "validation accuracy" in stdout and "test accuracy" in stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "completed" and 0 <= m["test"]["accuracy"] <= 1 and len(m["history"]) == 1
    for f in ("curves.png", "last.pt", "tokenizer.json", "config.json"): assert (out / f).exists()

# --- predict and evaluate on a model trained by `moe-course train` -------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    "`moe-course train --preset quick` for one epoch on the bundled sample: the run folder (with model/)."
    out = tmp_path_factory.mktemp("quick") / "run"
    assert main(["train", "--preset", "quick", "--epochs", "1", "--out-dir", str(out)]) == 0
    return out

def test_train_writes_the_model_folder(quick_run):
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in (quick_run / "model").iterdir()}
    card = (quick_run / "model" / "README.md").read_text()
    test_acc = json.loads((quick_run / "metrics.json").read_text())["test"]["accuracy"]
    assert f"| test | {test_acc:.4f} |" in card and "commit `" in card and "imdb" in card

def test_predict_cli_on_the_trained_model(quick_run, tmp_path):
    model = str(quick_run / "model")
    r = cli("predict", model, "A wonderful, moving film.", "Dull and far too long.", "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(rows) == 2 and all(set(x) == {"label", "score"} and x["label"] in ("neg", "pos") and 0.5 <= x["score"] <= 1
                                  for x in rows)
    (tmp_path / "r.txt").write_text("Great film.\n\nAwful.\nFine.\n")
    (tmp_path / "r.csv").write_text("id,review\n1,Great film.\n2,Awful.\n3,Fine.\n")
    (tmp_path / "r.jsonl").write_text('{"text": "Great film."}\n{"text": "Awful."}\n{"text": "Fine."}\n')
    for args in (["--file", str(tmp_path / "r.txt")], ["--file", str(tmp_path / "r.csv"), "--column", "review"],
                 ["--file", str(tmp_path / "r.jsonl")], ["Great film.", "Awful.", "Fine."]):
        assert main(["predict", model, *args, "--no-progress"]) == 0
    r = cli("predict", model, "An odd film.", "--routing", "--no-progress")
    rt = json.loads(r.stdout)["routing"]
    assert rt["tokens"][0] == "[CLS]" and len(rt["layers"]) == 1 and len(rt["layers"][0]["expert"]) == len(rt["tokens"])

def test_evaluate_matches_the_accuracy_the_training_run_reported(quick_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(quick_run / "model"), "--dataset", "imdb", "--split", "test", "--out", str(tmp_path / "m.json"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    trained = json.loads((quick_run / "metrics.json").read_text())["test"]
    rec = json.loads((tmp_path / "m.json").read_text())
    assert rec["metrics"]["accuracy"] == trained["accuracy"] and rec["metrics"]["f1"] == trained["f1"]
    assert f"accuracy {trained['accuracy']:.4f}" in out and "confusion matrix" in out and rec["commit"] and rec["wall_time_s"] > 0
    assert sum(map(sum, rec["metrics"]["confusion"])) == rec["metrics"]["n"] == 1000

@pytest.mark.parametrize("args,msg", [
    (["{run}/none", "text"], "no model folder at"),
    (["{run}", "text"], "model.safetensors missing"),                       # the run folder, not its model/
    (["{model}", ""], "text 0 is empty"),
    (["{model}", "--file", "{tmp}/empty.txt"], "holds no review"),
    (["{model}", "--file", "{tmp}/bad.csv"], "has no column 'text' (its columns: id, review)"),
    (["{model}", "--file", "{tmp}/none.txt"], "no file"),
    (["{model}", "--file", "{tmp}/latin1.txt"], "latin1.txt is not UTF-8 text"),
    (["{model}", "ok", "--batch-size", "0"], "batch_size must be an int >= 1, got 0"),
])
def test_predict_cli_bad_input(quick_run, tmp_path, capsys, args, msg):
    (tmp_path / "empty.txt").write_text(""); (tmp_path / "bad.csv").write_text("id,review\n1,ok\n")
    (tmp_path / "latin1.txt").write_bytes("Un film très émouvant.\n".encode("latin-1"))
    fill = dict(run=quick_run, model=quick_run / "model", tmp=tmp_path)
    capsys.readouterr()
    assert main(["predict", *[a.format(**fill) for a in args], "--no-progress"]) == 2
    o = capsys.readouterr()
    assert msg in o.err and o.err.startswith("moe-course predict: error:") and o.out == ""

def test_predict_cli_long_text_warns_once(quick_run, capsys):
    capsys.readouterr()
    assert main(["predict", str(quick_run / "model"), "great " * 100, "good " * 100, "--no-progress"]) == 0
    o = capsys.readouterr()
    assert o.err.count("warning: 2 of 2 text(s) are longer than max_len=64 tokens") == 1 and len(o.out.splitlines()) == 2

def test_predict_cli_needs_texts_or_a_file(quick_run, capsys):
    with pytest.raises(SystemExit) as e: main(["predict", str(quick_run / "model")])
    assert e.value.code == 2 and "give the texts to classify, or --file FILE" in capsys.readouterr().err

def test_evaluate_cli_unknown_split(quick_run, capsys):
    assert main(["evaluate", str(quick_run / "model"), "--split", "dev"]) == 2
    assert "unknown split 'dev' of imdb: choose one of train, test" in capsys.readouterr().err

def test_train_resume_without_checkpoint_starts_fresh(tmp_path, capsys):
    out = tmp_path / "fresh"
    assert main(["train", "--preset", "quick", "--epochs", "1", "--max-len", "32", "--out-dir", str(out), "--resume"]) == 0
    stdout = capsys.readouterr().out
    assert f"--resume: no checkpoint (last.pt) in {out}: starting a fresh run there" in stdout
    assert (out / "last.pt").exists() and json.loads((out / "metrics.json").read_text())["status"] == "completed"

# --- read_texts: the files `moe-course predict --file` reads -------------------------------------------------------
def test_empty_files(tmp_path):
    for name, body in [("a.txt", "\n  \n"), ("b.csv", ""), ("c.csv", "text\n"), ("d.jsonl", "\n")]:
        (tmp_path / name).write_text(body)
        with pytest.raises(ValueError, match="holds no review"): read_texts(tmp_path / name)

def test_csv_or_jsonl_without_the_text_column(tmp_path):
    (tmp_path / "r.csv").write_text("id,review\n1,Great film.\n")
    with pytest.raises(ValueError, match=r"has no column 'text' \(its columns: id, review\): name the text column"):
        read_texts(tmp_path / "r.csv")
    assert read_texts(tmp_path / "r.csv", column="review") == ["Great film."]
    (tmp_path / "r.jsonl").write_text('{"review": "Great film."}\n')
    with pytest.raises(ValueError, match="line 1 has no 'text' field"): read_texts(tmp_path / "r.jsonl")
    (tmp_path / "r.tsv").write_text("x")
    with pytest.raises(ValueError, match="use .txt"): read_texts(tmp_path / "r.tsv")
    with pytest.raises(FileNotFoundError, match="no file"): read_texts(tmp_path / "none.txt")

def test_read_texts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("Great film.\n\nTerrible, plot.\n")
    (tmp_path / "a.csv").write_text('text,id\n"Great, film.",1\nTerrible.,2\n')
    (tmp_path / "a.jsonl").write_text('{"text": "Great film."}\n\n"Terrible."\n')
    assert read_texts(tmp_path / "a.txt") == ["Great film.", "Terrible, plot."]
    assert read_texts(tmp_path / "a.csv") == ["Great, film.", "Terrible."]
    assert read_texts(tmp_path / "a.jsonl") == ["Great film.", "Terrible."]

# --- safe runs: the output folder, resume, the data folder, errors as one line ---------------------------------------
Q = ["train", "--preset", "quick", "--epochs", "1", "--max-len", "32"]

def _sample_copy(folder, **edits):
    "The imdb sample (first 200 rows of each split) as parquet files in `folder`, with columns replaced by `edits[split]`."
    import pyarrow as pa, pyarrow.parquet as pq
    from moe_course.data import sample_dir
    for split in ("train", "test"):
        t = pq.read_table(sample_dir() / "imdb" / f"{split}.parquet").slice(0, 200)
        for col, values in edits.get(split, {}).items():
            t = t.drop_columns([col]) if values is None else t.set_column(t.schema.get_field_index(col), col, pa.array(values))
        (folder / "imdb").mkdir(parents=True, exist_ok=True); pq.write_table(t, folder / "imdb" / f"{split}.parquet")
    return folder

def test_train_refuses_a_folder_that_is_not_this_runs(tmp_path, capsys):
    mine = tmp_path / "mine"; mine.mkdir(); (mine / "config.json").write_text('{"my": "settings"}')
    assert main([*Q, "--out-dir", str(mine)]) == 2
    assert "is not empty" in capsys.readouterr().err and (mine / "config.json").read_text() == '{"my": "settings"}'
    run = tmp_path / "run"
    assert main([*Q, "--out-dir", str(run)]) == 0
    before = (run / "last.pt").read_bytes(); capsys.readouterr()
    assert main([*Q, "--seed", "1", "--out-dir", str(run)]) == 2          # a second run with another seed
    assert "continue it with resume (--resume), replace it with overwrite (--overwrite)" in capsys.readouterr().err
    assert (run / "last.pt").read_bytes() == before
    assert main([*Q, "--seed", "1", "--out-dir", str(run), "--overwrite"]) == 0
    assert json.loads((run / "config.json").read_text())["seed"] == 1

def test_resume_compares_the_config_before_touching_anything(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*Q, "--out-dir", str(run)]) == 0
    cfg_before, ck_before = (run / "config.json").read_text(), (run / "last.pt").read_bytes(); capsys.readouterr()
    assert main([*Q, "--d-model", "64", "--resume", "--out-dir", str(run)]) == 2
    assert "d_model 32 -> 64" in capsys.readouterr().err
    assert main([*Q, "--dataset", "sst2", "--lr", "0.05", "--resume", "--out-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "dataset 'imdb' -> 'sst2'" in err and "lr 0.003 -> 0.05" in err and err.startswith("moe-course train: error:")
    assert (run / "config.json").read_text() == cfg_before and (run / "last.pt").read_bytes() == ck_before
    assert main(["train", "--preset", "quick", "--epochs", "2", "--max-len", "32", "--resume", "--out-dir", str(run)]) == 0
    assert "taking the new epochs (1 -> 2)" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 2

def test_an_explicit_data_dir_means_that_folder(tmp_path, capsys):
    assert main([*Q, "--data-dir", str(tmp_path / "nonexistent"), "--out-dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moe-course train: error:") and "nonexistent does not exist" in err
    data = _sample_copy(tmp_path / "data")
    assert main([*Q, "--data-dir", str(data), "--out-dir", str(tmp_path / "b")]) == 0
    info = json.loads((tmp_path / "b" / "model" / "config.json").read_text())["moe_course"]
    assert info["source"] == "local" and info["sizes"]["test"] == 200        # that folder's 200 test rows, not the sample

@pytest.mark.parametrize("edits,msg", [
    (dict(train=dict(label=[0, 1, 5] * 66 + [0, 1])), "has labels 0, 1, 5; expected the integers 0, 1"),
    (dict(train=dict(label=[-1] + [0, 1] * 99 + [1])), "has labels -1, 0, 1"),
    (dict(train=dict(label=["pos", "neg"] * 100)), "string labels"),
    (dict(train=dict(text=[None] + ["fine"] * 199)), "1 row(s) without text"),
    (dict(test=dict(label=None)), "lacks column(s) ['label']"),                # missing from one split only
])
def test_bad_data_is_one_error_line_before_any_file(tmp_path, capsys, edits, msg):
    data, out = _sample_copy(tmp_path / "data", **edits), tmp_path / "run"
    assert main([*Q, "--data-dir", str(data), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moe-course train: error:") and msg in err and err.count("\n") == 1
    assert not out.exists() or not any(out.iterdir())                        # no partial files

def test_io_errors_are_one_line_with_exit_2(quick_run, tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*Q, "--epochs", "2", "--max-epochs-this-run", "1", "--out-dir", str(run)]) == 0
    ck = run / "last.pt"; ck.write_bytes(ck.read_bytes()[:2000]); capsys.readouterr()
    assert main([*Q, "--epochs", "2", "--resume", "--out-dir", str(run)]) == 2          # a truncated checkpoint
    assert "cut short" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main([*Q, "--out-dir", str(tmp_path / "file" / "run")]) == 2                 # a folder that cannot be made
    assert "cannot write" in capsys.readouterr().err

def test_evaluate_checks_where_it_writes_before_the_work(quick_run, tmp_path, capsys):
    (tmp_path / "file").write_text(""); capsys.readouterr()
    for out, msg in ((tmp_path, "is a folder"), (tmp_path / "file" / "m.json", "cannot write")):
        assert main(["evaluate", str(quick_run / "model"), "--out", str(out), "--no-progress"]) == 2
        o = capsys.readouterr()
        assert msg in o.err and o.err.startswith("moe-course evaluate: error:") and "accuracy" not in o.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]              # no .tmp left behind
