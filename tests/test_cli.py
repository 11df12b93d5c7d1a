"Tests of the `moe-course` command line (moe_course.cli)."
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from moe_course.cli import main, train_cli

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
    assert "data" in out and "train" in out
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
