"""Bad input, end to end: every mistake a user can make gives exactly one line on stderr that names the
problem and the fix, exit code 2 (130 for Ctrl-C), no traceback, and leaves every existing file as it was.

Most cases call `fewstep.cli.main` in this process (`cli`): the same exit code and output as the command,
without torch's start-up each time, and with monkeypatch to inject what cannot be made for real as root (a
read-only or full disk). Ctrl-C and the bare entry point run as real subprocesses. Python warnings are
printed to stderr inside `cli`, as a user would see them, so that one would break the one-line check.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import fewstep.checkpoint
import fewstep.evaluate
import fewstep.train
from fewstep.checkpoint import load_checkpoint
from fewstep.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--steps", "3", "--batch", "16", "--set", "net.width=8", "--set", "net.depth=1", "--quiet"]
MAX_LINE = 300          # a line a person reads (paths aside), not a torch signature dump

#----------------------------------------------------------------------------
# Helpers.


def _show_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@pytest.fixture
def cli(capsys):
    """cli(*args) -> (returncode, stdout, stderr) of `fewstep ARGS` run in this process."""
    def run(*args):
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning       # pytest would record them: show them as a user sees them
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:                     # argparse (bad flags, --version) exits
                code = e.code
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


def fewstep_process(*args, **popen):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("FEWSTEP_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "fewstep", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **popen)


def assert_one_line_error(result, *phrases, code=2):
    """Exit code `code`, exactly one short line on stderr, no traceback, and every phrase in that line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(re.sub(r"/[^\s,;:()']+", "/PATH", lines[0])) < MAX_LINE, lines[0]       # paths aside
    for p in phrases:
        assert p in lines[0], lines[0]
    return lines[0]


def snapshot(*roots):
    """{path: sha256 (None for a folder)} of everything under roots: equal snapshots mean nothing was
    added, removed or changed."""
    seen = {}
    for root in map(str, roots):
        if not os.path.exists(root):
            continue
        for folder, _, files in os.walk(root):
            seen[folder] = None
            for name in files:
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    seen[path] = hashlib.sha256(f.read()).hexdigest()
    return seen


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def checkpoint_step(run):
    return load_checkpoint(os.path.join(run, "checkpoint.safetensors"))[1]["k"]


def tmp_files(folder):
    return [n for n in os.listdir(folder) if n.startswith(".tmp-")]


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def kill(p):
    if p.poll() is None:
        p.kill()
    p.communicate(timeout=30)


def wait_for(path, p, timeout=120):
    """Wait until `path` exists while the process p keeps running."""
    t0 = time.time()
    while not os.path.exists(path):
        assert p.poll() is None, f"exited early ({p.returncode}): {p.communicate()[1]}"
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


def named(*cases):
    """Parametrize rows (argv, phrases), each named by its argv."""
    return [pytest.param(argv, phrases, id=" ".join(argv).replace("{", "").replace("}", "")) for argv, phrases in cases]


def interrupted(p, err):
    """The result of a process sent SIGINT, its death by SIGINT counted as exit code 130: a shell reports both as
    $? = 130. Under `python -m`, CPython 3.11 kills itself with SIGINT at exit, after fewstep's line and
    sys.exit(130), when the KeyboardInterrupt passed through code that an extension ran with PyRun_* (a global
    flag that catching it does not clear; seen when the signal arrives while torch imports)."""
    code = 130 if p.returncode == -signal.SIGINT else p.returncode
    return SimpleNamespace(returncode=code, stderr=err)


def without_sigint_ignored():
    signal.signal(signal.SIGINT, signal.SIG_DFL)    # a non-interactive shell's children inherit SIGINT ignored

#----------------------------------------------------------------------------
# Trained runs, shared by the module (tests that change a run work on a copy).


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    r = SimpleNamespace(root=root, edm=str(root / "edm"), cd=str(root / "cd"), ct=str(root / "ct"),
                        ct16=str(root / "ct16"), edm3=str(root / "edm3"), image=str(root / "image"))
    wide = [*TINY, "--set", "net.width=16"]
    for argv in (["train", "edm", "--out", r.edm, *TINY],
                 ["train", "cd", "--teacher", r.edm, "--out", r.cd, *TINY],
                 ["train", "ct", "--out", r.ct, *TINY],
                 ["train", "ct", "--out", r.ct16, *wide],
                 ["train", "edm", "--data", "gaussian", "--set", "data.dim=3", "--out", r.edm3, *TINY]):
        assert main(argv) == 0, argv
    os.makedirs(root / "images")                   # 28 x 28 gray: what eval's feature classifier takes
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (28, 28), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    assert main(["train", "ct", "--data", "folder", "--set", f"data.root={root / 'images'}", "--set", "data.resolution=28",
                 "--net", "unet", "--set", "net.config=cpu-tiny", "--steps", "1", "--batch", "4", "--out", r.image,
                 "--quiet"]) == 0
    return r


@pytest.fixture
def places(tmp_path):
    """Bad places for --out: a file, a folder of other files (kept byte for byte), and one under /proc."""
    (tmp_path / "afile").write_text("not a folder\n")
    os.makedirs(tmp_path / "other")
    (tmp_path / "other" / "notes.txt").write_text("my notes\n")
    return SimpleNamespace(file=str(tmp_path / "afile"), other=str(tmp_path / "other"), proc="/proc/fewstep_x")

#----------------------------------------------------------------------------
# --out: a file, empty, under /proc, a folder that is not a run.


@pytest.mark.parametrize("where, phrases", [
    ("file", ["is a file, not a folder", "pass a new folder for the run"]),
    ("empty", ["--out", "expected a folder path, got an empty string"]),
    ("proc", ["cannot create the run folder /proc/fewstep_x", "choose a writable place"]),
    ("other", ["is a folder of other files (notes.txt, ...), not a fewstep run", "pass a new or empty folder"]),
], ids=["file", "empty", "proc", "other"])
def test_train_out_that_cannot_be_a_run(cli, places, tmp_path, where, phrases):
    out = {"file": places.file, "empty": "", "proc": places.proc, "other": places.other}[where]
    before = snapshot(tmp_path)
    assert_one_line_error(cli("train", "edm", "--out", out, *TINY), *phrases)
    assert snapshot(tmp_path) == before
    assert not os.path.exists(places.proc)


@pytest.mark.parametrize("command", ["sample", "edit", "eval"])
@pytest.mark.parametrize("where, phrases", [
    ("file", ["is a file, not a folder", "choose another --out"]),
    ("empty", ["--out is empty", "leave --out out for a new numbered one"]),
    ("proc", ["cannot create the output folder /proc/fewstep_x", "choose a writable place"]),
], ids=["file", "empty", "proc"])
def test_output_commands_refuse_an_unusable_out(cli, runs, places, tmp_path, monkeypatch, command, where, phrases):
    out = {"file": places.file, "empty": "", "proc": places.proc}[where]
    argv = {"sample": ["sample", runs.ct, "--n", 10], "edit": ["edit", "interpolate", runs.image, "--frames", 2],
            "eval": ["eval", runs.image, "--n", 4, "--steps", 1]}[command]
    # eval measures in the shipped classifier's features first: skip that work, it is not what is checked
    monkeypatch.setattr(fewstep.evaluate, "load_feature_net", lambda: None)
    monkeypatch.setattr(fewstep.evaluate, "reference_features", lambda net: None)
    before = snapshot(tmp_path, runs.ct, runs.image)
    assert_one_line_error(cli(*argv, "--out", out), *phrases)
    assert snapshot(tmp_path, runs.ct, runs.image) == before       # no RUN/samples/NNN either
    assert not os.path.exists(places.proc)


@pytest.mark.parametrize("command", ["sample", "edit"])
def test_outputs_go_beside_other_files_without_touching_them(cli, runs, places, command):
    notes = sha(os.path.join(places.other, "notes.txt"))
    argv = (["sample", runs.ct, "--n", 10, "--steps", 1] if command == "sample"
            else ["edit", "interpolate", runs.image, "--frames", 2])
    r = cli(*argv, "--out", places.other)
    assert r.returncode == 0, r.stderr
    assert sha(os.path.join(places.other, "notes.txt")) == notes
    assert len(os.listdir(places.other)) > 1
    assert_one_line_error(cli(*argv, "--out", places.other), "already exists", "--overwrite")   # and never over them

#----------------------------------------------------------------------------
# A read-only disk and a full disk (root ignores chmod: the OS errors are injected).


def test_read_only_disk_for_a_new_run(cli, tmp_path, monkeypatch):
    run, makedirs = str(tmp_path / "run"), os.makedirs

    def read_only(path, *args, **kwargs):
        if str(path).startswith(run):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return makedirs(path, *args, **kwargs)
    monkeypatch.setattr(os, "makedirs", read_only)
    assert_one_line_error(cli("train", "edm", "--out", run, *TINY),
                          f"cannot create the run folder {run} (Read-only file system)", "choose a writable place")
    assert not os.path.exists(run)


def test_read_only_disk_for_a_resumed_run_changes_nothing(cli, runs, tmp_path, monkeypatch):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    before = snapshot(run)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(tempfile, "mkstemp", read_only)         # every write of a run is a temporary file first
    assert_one_line_error(cli("resume", run, "--steps", 6, "--quiet"), "Read-only file system",
                          "the last good checkpoint (step 3) is kept")
    assert snapshot(run) == before


def test_read_only_disk_for_sample_outputs(cli, runs, monkeypatch):
    mkdir = os.mkdir

    def read_only(path, *args, **kwargs):
        if "samples" in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return mkdir(path, *args, **kwargs)
    before = snapshot(runs.ct)
    monkeypatch.setattr(os, "mkdir", read_only)
    assert_one_line_error(cli("sample", runs.ct, "--n", 10), "cannot create the output folder",
                          "(Read-only file system)", "choose a writable place")
    assert snapshot(runs.ct) == before


def disk_full(monkeypatch):
    """save_file writes part of the checkpoint, then the disk is full."""
    def save_file(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fewstep.checkpoint, "save_file", save_file)


def test_full_disk_while_checkpointing_a_resumed_run_keeps_the_checkpoint(cli, runs, tmp_path, monkeypatch):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    ckpt, log = sha(os.path.join(run, "checkpoint.safetensors")), open(os.path.join(run, "metrics.jsonl")).read()
    disk_full(monkeypatch)
    assert_one_line_error(cli("resume", run, "--steps", 6, "--quiet"), "No space left on device", "free space")
    assert sha(os.path.join(run, "checkpoint.safetensors")) == ckpt and checkpoint_step(run) == 3
    assert open(os.path.join(run, "metrics.jsonl")).read().startswith(log)
    assert tmp_files(run) == []


def test_full_disk_message_names_the_kept_checkpoint_and_resume(cli, runs, tmp_path, monkeypatch):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    disk_full(monkeypatch)
    assert_one_line_error(cli("resume", run, "--steps", 6, "--quiet"), "No space left on device",
                          "the last good checkpoint (step 3) is kept", f"fewstep resume {run}")


def test_full_disk_before_the_first_checkpoint_leaves_no_folder(cli, tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    disk_full(monkeypatch)
    assert_one_line_error(cli("train", "edm", "--out", run, *TINY), "cannot write", "No space left on device", "free space")
    assert not os.path.exists(run)
    assert os.listdir(tmp_path) == []


def test_full_disk_while_logging_keeps_the_checkpoint(cli, runs, tmp_path, monkeypatch):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    ckpt = sha(os.path.join(run, "checkpoint.safetensors"))

    def log_metrics(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fewstep.train, "log_metrics", log_metrics)
    assert_one_line_error(cli("resume", run, "--steps", 6, "--quiet"), f"cannot write to {run} (No space left on device)",
                          "free space", "the last good checkpoint (step 3) is kept")
    assert sha(os.path.join(run, "checkpoint.safetensors")) == ckpt and tmp_files(run) == []

#----------------------------------------------------------------------------
# Config files: --config and a run's config.json.

BAD_JSON = {"folder": None, "list": "[1, 2]\n", "string": '"edm"\n', "invalid": "{bad\n", "missing": None}


def write_bad_json(path, kind):
    if kind == "folder":
        os.makedirs(path)
    elif kind != "missing":
        with open(path, "w") as f:
            f.write(BAD_JSON[kind])
    return str(path)


@pytest.mark.parametrize("kind, phrases", [
    ("folder", ["is a folder, not a JSON file", "pass the file"]),
    ("list", ["holds a JSON list, not an object {...}", "fix or replace it"]),
    ("string", ["not an object {...}", "fix or replace it"]),
    ("invalid", ["is not valid JSON", "fix or delete it"]),
    ("missing", ["not found", "check the path"]),
], ids=["folder", "list", "string", "invalid", "missing"])
def test_bad_config_file(cli, tmp_path, kind, phrases):
    config = write_bad_json(tmp_path / "config.json", kind)
    before = snapshot(tmp_path)
    assert_one_line_error(cli("train", "edm", "--out", tmp_path / "run", "--config", config, *TINY),
                          f"config file {config}", *phrases)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["sample", "info", "resume", "train --resume"])
@pytest.mark.parametrize("kind, phrase", [("folder", "is a folder, not a JSON file"), ("list", "holds a JSON list"),
                                          ("string", "not an object {...}")], ids=["folder", "list", "string"])
def test_bad_run_config(cli, runs, tmp_path, command, kind, phrase):
    run = str(tmp_path / "run")
    os.makedirs(run)
    for name in ("checkpoint.safetensors", "metrics.jsonl"):
        shutil.copy(os.path.join(runs.ct, name), run)
    write_bad_json(os.path.join(run, "config.json"), kind)
    before = snapshot(tmp_path)
    argv = {"sample": ["sample", run, "--n", 10], "info": ["info", run], "resume": ["resume", run, "--steps", 6],
            "train --resume": ["train", "ct", "--out", run, "--resume", *TINY]}[command]
    assert_one_line_error(cli(*argv), f"run config {run}/config.json", phrase)
    assert snapshot(tmp_path) == before

#----------------------------------------------------------------------------
# A damaged metrics.jsonl.


def test_garbage_metrics_line_on_resume(cli, runs, tmp_path):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write('{"k": 1, "loss": 0.5}\nGARBAGE\n')
    before = snapshot(run)
    assert_one_line_error(cli("resume", run, "--steps", 6), f"{run}/metrics.jsonl line 3 is not a metrics record",
                          "delete that line or the file")
    assert snapshot(run) == before
    assert_one_line_error(cli("info", run), "metrics.jsonl line 3")


def test_metrics_line_without_a_step(cli, runs, tmp_path):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write("[1, 2]\n")
    before = snapshot(run)
    assert_one_line_error(cli("resume", run, "--steps", 6), "metrics.jsonl line 2 is not a metrics record",
                          "not a record with a step k", "delete that line")
    assert snapshot(run) == before


def test_metrics_that_are_not_text(cli, runs, tmp_path):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    with open(os.path.join(run, "metrics.jsonl"), "ab") as f:
        f.write(b"\xff\xfe garbage\n")
    before = snapshot(run)
    assert_one_line_error(cli("resume", run, "--steps", 6), "metrics.jsonl", "delete")
    assert snapshot(run) == before


def test_metrics_that_is_a_folder(cli, runs, tmp_path):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    os.remove(os.path.join(run, "metrics.jsonl"))
    os.makedirs(os.path.join(run, "metrics.jsonl"))
    assert_one_line_error(cli("resume", run, "--steps", 6), "metrics.jsonl", "delete")

#----------------------------------------------------------------------------
# Network and data options of the right type but an impossible value.


@pytest.mark.parametrize("args, phrases", named(
    (["--set", "net.width=-4"], ["width must be a positive integer, got -4", "fix the --set net.KEY values"]),
    (["--set", "net.depth=0"], ["depth must be a positive integer, got 0", "fix the --set net.KEY values"]),
    (["--set", "net.dropout=1.5"], ["dropout must be in [0, 1), got 1.5", "fix the --set net.KEY values"]),
    (["--set", "net.dropout=-0.5"], ["dropout must be in [0, 1), got -0.5"]),
    (["--set", "net.emb=foo"], ["unknown noise embedding 'foo'", "'fourier' or 'positional'"]),
    (["--set", "net.width=1e9"], ["net.width must be an integer, got 1000000000.0", "--set net.width=128"]),
    (["--set", "net.config=huge"], ["net.config='huge' names no network size", "--net unet", "cpu-tiny"]),
    (["--set", "data.k=abc"], ["data.k must be an integer, got 'abc'", "--set data.k=8"]),
    (["--set", "data.k=0"], ["k must be a positive integer, got 0", "fix the --set data.KEY values"]),
    (["--set", "data.std=-1"], ["std must be a positive number, got -1", "fix the --set data.KEY values"]),
    (["--set", "data.radius=1e400"], ["radius must be a positive number, got inf"]),
    (["--data", "folder"], ["dataset 'folder' needs the option root", "--set data.root=VALUE"]),
    (["--data", "gaussian", "--set", "data.dim=0"], ["dim must be a positive integer, got 0"]),
    (["--net", "unet"], ["needs image data", "use --net mlp"]),
    (["--set", "sigma_max=1e400"], ["sigma_max must be a positive number, got inf"]),
    (["--set", "device=tpu"], ["device must be auto, cuda or cpu"]),
    (["--set", "streams=3"], ["batch (16) must be a multiple of streams (3)"]),
    (["--set", "foo"], ["--set expects key=value, got 'foo'", "--set net.width=256"]),
))
def test_impossible_network_and_data_options(cli, tmp_path, args, phrases):
    assert_one_line_error(cli("train", "edm", "--out", tmp_path / "run", *TINY, *args), *phrases)
    assert os.listdir(tmp_path) == []


def test_network_dim_that_does_not_match_the_data(cli, tmp_path):
    assert_one_line_error(cli("train", "edm", "--out", tmp_path / "run", *TINY, "--set", "net.dim=3"), "dim")
    assert os.listdir(tmp_path) == []


def test_network_too_large_to_allocate(cli, tmp_path):
    line = assert_one_line_error(cli("train", "edm", "--out", tmp_path / "run", *TINY, "--set", "net.width=100000000"),
                                 "net.width")
    assert "alloc_cpu" not in line and "enforce fail" not in line, line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("init", ["false", "true"])
def test_teacher_of_another_shape(cli, runs, tmp_path, init):
    assert_one_line_error(cli("train", "cd", "--teacher", runs.edm3, "--out", tmp_path / "run", *TINY,
                              "--set", f"init_from_teacher={init}"),
                          f"teacher run {runs.edm3} makes samples of shape (3,)", "(gmm) has shape (2,)",
                          "distill a teacher trained on the same data")
    assert os.listdir(tmp_path) == []

#----------------------------------------------------------------------------
# Learning rates and seeds.

BIG = str(2 ** 70)


@pytest.mark.parametrize("args, phrases", named(
    (["--lr", "1e39"], ["lr must be at most 1", "try --lr 1e-3"]),
    (["--lr", "nan"], ["argument --lr: expected a finite number, got 'nan'", "see fewstep train --help"]),
    (["--lr", "inf"], ["argument --lr: expected a finite number, got 'inf'"]),
    (["--lr", "-1"], ["lr must be a positive number, got -1"]),
    (["--lr", "0"], ["lr must be a positive number, got 0"]),
    (["--set", "lr=1e39"], ["lr must be at most 1", "try --lr 1e-3"]),
    (["--set", "lr=nan"], ["lr must be a number, got 'nan'", "--set lr=0.001"]),
    (["--ema", "1"], ["ema must be in [0, 1), got 1"]),
    (["--seed", BIG], [f"argument --seed: expected a seed in [0, 2**62), got '{BIG}'", "see fewstep train --help"]),
    (["--seed", "-1"], ["argument --seed: expected a seed in [0, 2**62), got '-1'"]),
    (["--set", f"seed={BIG}"], [f"seed must be an integer in [0, 2**62), got {BIG}"]),
    (["--set", "seed=-1"], ["seed must be an integer in [0, 2**62), got -1"]),
    (["--set", "seed=1.5"], ["seed must be an integer, got 1.5", "--set seed=0"]),
))
def test_impossible_learning_rates_and_seeds(cli, tmp_path, args, phrases):
    assert_one_line_error(cli("train", "edm", "--out", tmp_path / "run", *TINY, *args), *phrases)
    assert os.listdir(tmp_path) == []


def test_sample_seed_out_of_range(cli, runs):
    before = snapshot(runs.ct)
    for seed in (BIG, "-1"):
        assert_one_line_error(cli("sample", runs.ct, "--seed", seed), "argument --seed: expected a seed in [0, 2**62)",
                              "see fewstep sample --help")
    assert snapshot(runs.ct) == before

#----------------------------------------------------------------------------
# argparse errors and the bare command.


@pytest.mark.parametrize("argv, phrases", named(
    (["train", "edm"], ["the following arguments are required: --out", "see fewstep train --help"]),
    (["train", "edm", "--out", "x", "--bogus"], ["unrecognized arguments: --bogus", "see fewstep --help"]),
    (["train", "edm", "--out", "x", "--steps", "abc"], ["argument --steps: expected a positive integer, got 'abc'"]),
    (["sample", "RUN", "--which", "bogus"], ["argument --which: invalid choice: 'bogus'", "'ema', 'net', 'target'"]),
    (["sample", "RUN", "--n", "0"], ["argument --n: expected a positive integer, got '0'"]),
    (["eval", "RUN", "--guidance", "nan"], ["argument --guidance: expected a finite number"]),
    (["edit", "blur", "RUN"], ["argument task: invalid choice: 'blur'"]),
    (["bogus"], ["invalid choice: 'bogus'", "see fewstep --help"]),
))
def test_argparse_errors_are_one_line(cli, tmp_path, monkeypatch, argv, phrases):
    monkeypatch.chdir(tmp_path)              # "x" and "RUN" are never created: the parser stops first
    assert_one_line_error(cli(*argv), *phrases)
    assert os.listdir(tmp_path) == []


def test_no_arguments_prints_help_and_exits_0():
    p = fewstep_process()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert out.startswith("usage: fewstep") and "train" in out and err == ""


def test_version(cli):
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"fewstep {fewstep.__version__}", r

#----------------------------------------------------------------------------
# --tau.


@pytest.mark.parametrize("tau", ["nan", "inf", "80,-1", "80,abc"])
def test_impossible_taus(cli, runs, tau):
    before = snapshot(runs.ct)
    assert_one_line_error(cli("sample", runs.ct, "--tau", tau, "--n", 10),
                          f"--tau must be positive numbers separated by commas, largest first, like 80,0.8; got '{tau}'")
    assert snapshot(runs.ct) == before


def test_taus_given_to_a_teacher(cli, runs):
    before = snapshot(runs.edm)
    assert_one_line_error(cli("sample", runs.edm, "--tau", "80,1", "--n", 10),
                          "--tau lists the time points of a consistency or trajectory model", "samples with --steps (and --sampler)")
    assert snapshot(runs.edm) == before


@pytest.mark.parametrize("tau", ["80,80", "0.001"])
def test_taus_refused_after_the_output_folder_exists(cli, runs, tmp_path, tau):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    before = snapshot(run)
    assert_one_line_error(cli("sample", run, "--tau", tau, "--n", 10), "tau")
    assert snapshot(run) == before


def test_empty_tau_is_not_silently_ignored(cli, runs, tmp_path):
    assert_one_line_error(cli("sample", runs.ct, "--tau", "", "--n", 10, "--out", tmp_path / "s"), "--tau")

#----------------------------------------------------------------------------
# A checkpoint that does not belong to its run's config.json.


@pytest.mark.parametrize("command", ["sample", "resume"])
def test_checkpoint_of_another_config(cli, runs, tmp_path, command):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    shutil.copy(os.path.join(runs.ct16, "checkpoint.safetensors"), run)      # net.width 16 into a width-8 run
    before = snapshot(run)
    argv = ["sample", run, "--n", 10] if command == "sample" else ["resume", run, "--steps", 6]
    assert_one_line_error(cli(*argv), f"checkpoint {run}/checkpoint.safetensors was trained with another config than "
                          f"{run}/config.json (net_kwargs differ)", "put back the run's own config.json or checkpoint")
    assert snapshot(run) == before


def test_corrupt_checkpoint_on_resume(cli, runs, tmp_path):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    path = os.path.join(run, "checkpoint.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 3])
    before = snapshot(run)
    assert_one_line_error(cli("resume", run, "--steps", 6), "is corrupt or truncated", "restore it from a copy")
    assert snapshot(run) == before

#----------------------------------------------------------------------------
# Ctrl-C.


@pytest.mark.parametrize("delay", [0.4, 1.0])
def test_ctrl_c_while_starting(runs, delay):
    # a long sample: whether the signal lands while torch imports or while it samples, one line and 130
    p = fewstep_process("sample", runs.ct, "--n", 5000000, "--steps", "4", "--out", runs.root / f"ctrl-c-{delay}",
                        preexec_fn=without_sigint_ignored)
    try:
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        kill(p)
    assert_one_line_error(interrupted(p, err), "fewstep: interrupted", code=130)


def test_ctrl_c_while_fewstep_cli_imports(runs):
    # deterministic stand-in for that race: the KeyboardInterrupt arrives while `from .cli import main` runs
    code = ("import runpy, sys\n"
            "class CtrlC:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'fewstep.cli': raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, CtrlC())\n"
            f"sys.argv = ['fewstep', 'info', {runs.ct!r}]\n"
            "runpy.run_module('fewstep', run_name='__main__', alter_sys=True)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert_one_line_error(r, "fewstep: interrupted", code=130)


def test_ctrl_c_before_the_first_checkpoint(tmp_path):
    run = str(tmp_path / "run")
    p = fewstep_process("train", "edm", "--out", run, "--steps", 100000, "--batch", 16, "--set", "net.width=8",
                        "--set", "net.depth=1", "--set", "ckpt_every=100000", "--set", "log_every=50", "--quiet",
                        preexec_fn=without_sigint_ignored)
    try:
        wait_for(os.path.join(run, "metrics.jsonl"), p)         # training is under way
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        kill(p)
    line = assert_one_line_error(interrupted(p, err), "before the first checkpoint; nothing was saved", code=130)
    assert "resume" not in line and "intact" not in line, line
    assert not os.path.exists(run)


def test_ctrl_c_after_a_checkpoint(tmp_path):
    run = str(tmp_path / "run")
    p = fewstep_process("train", "edm", "--out", run, "--steps", 100000, "--batch", 16, "--set", "net.width=8",
                        "--set", "net.depth=1", "--set", "ckpt_every=20", "--quiet", preexec_fn=without_sigint_ignored)
    try:
        wait_for(os.path.join(run, "checkpoint.safetensors"), p)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        kill(p)
    k = checkpoint_step(run)
    assert k > 0 and k % 20 == 0
    assert_one_line_error(interrupted(p, err), "interrupted at step",
                          f"the checkpoint of step {k} is intact", f"continue with fewstep resume {run}", code=130)
    assert tmp_files(run) == []

#----------------------------------------------------------------------------
# Resuming: from the folder alone, after a killed checkpoint write, with nothing to do.


def test_resume_removes_what_a_killed_checkpoint_write_left(cli, runs, tmp_path):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    with open(os.path.join(run, ".tmp-abcdcheckpoint.safetensors"), "wb") as f:
        f.write(os.urandom(3 * 2 ** 20))
    r = cli("resume", run, "--steps", 6, "--quiet")
    assert r.returncode == 0, r.stderr
    assert tmp_files(run) == [] and checkpoint_step(run) == 6
    assert "trained ct from step 3 to 6" in r.stdout


def test_train_resume_needs_nothing_but_the_folder(cli, runs, tmp_path):
    run = copy_run(runs.cd, str(tmp_path / "run"))           # a distilled run: no --teacher, net or batch flags
    r = cli("train", "cd", "--out", run, "--resume", "--steps", 6, "--quiet")
    assert r.returncode == 0, r.stderr
    assert checkpoint_step(run) == 6 and "trained cd from step 3 to 6" in r.stdout


def test_resume_without_steps_keeps_the_runs_own_steps(cli, runs, tmp_path):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    before = snapshot(run)
    r = cli("resume", run, "--quiet")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert f"{run} is already trained to step 3 of 3; nothing to do" in r.stdout
    assert f"fewstep resume {run} --steps N" in r.stdout
    after = snapshot(run)
    assert {p: h for p, h in after.items() if p in before} == before     # every file as it was (steps not 4000)
    assert json.load(open(os.path.join(run, "config.json")))["run"]["steps"] == 3


def test_resume_to_fewer_steps_than_trained_changes_nothing(cli, runs, tmp_path):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    config = sha(os.path.join(run, "config.json"))
    cli("resume", run, "--steps", 2, "--quiet")
    assert sha(os.path.join(run, "config.json")) == config


def test_resume_without_a_checkpoint(cli, runs, tmp_path):
    run = str(tmp_path / "run")
    os.makedirs(run)
    shutil.copy(os.path.join(runs.ct, "config.json"), run)
    before = snapshot(tmp_path)
    assert_one_line_error(cli("resume", run), f"{run} has no checkpoint to resume",
                          f"start it again with fewstep train ct --out {run} --resume")
    assert snapshot(tmp_path) == before


def test_resume_with_another_config_or_over_a_trained_run(cli, runs, tmp_path):
    run = copy_run(runs.ct, str(tmp_path / "run"))
    before = snapshot(run)
    assert_one_line_error(cli("train", "ct", "--out", run, "--resume", *TINY, "--set", "net.width=16"),
                          "--resume with a different config (net_kwargs changed)", f"resume with the settings in {run}/config.json")
    assert_one_line_error(cli("train", "edm", "--out", run, *TINY), f"{run} already holds a trained run",
                          f"continue it with: fewstep resume {run}")
    assert snapshot(run) == before

#----------------------------------------------------------------------------
# What else a user runs into.


@pytest.mark.parametrize("command", [["sample"], ["info"], ["resume"], ["eval"], ["edit", "interpolate"]])
def test_a_run_that_does_not_exist(cli, tmp_path, command):
    missing = str(tmp_path / "missing")
    assert_one_line_error(cli(*command, missing), f"run folder {missing!r} does not exist",
                          "train one first (fewstep train METHOD --out RUN)")
    assert os.listdir(tmp_path) == []


def test_target_weights_of_a_teacher(cli, runs):
    before = snapshot(runs.edm)
    assert_one_line_error(cli("sample", runs.edm, "--which", "target", "--n", 10),
                          "has no 'target' weights", "choose one of: ema, net")
    assert snapshot(runs.edm) == before


def test_samplers_that_do_not_fit_the_run(cli, runs):
    assert_one_line_error(cli("sample", runs.ct, "--sampler", "heun"), "samples with --sampler consistency")
    assert_one_line_error(cli("sample", runs.edm, "--sampler", "bogus"), "unknown sampler 'bogus'", "choose one of")


@pytest.mark.parametrize("argv, phrases", named(
    (["eval", "{ct}"], ["is not an image model", "use fewstep sample for 2-D runs"]),
    (["edit", "interpolate", "{ct}"], ["fewstep edit works on image runs", "flat 'gmm' data"]),
    (["edit", "interpolate", "{image}", "--frames", "1"], ["interpolation takes 2 to 256 frames, got 1", "--frames 8"]),
    (["edit", "interpolate", "{image}", "--frames", "-3"], ["2 to 256 frames, got -3"]),
    (["edit", "interpolate", "{image}", "--steps", "0"], ["--steps must be at least 1, got 0"]),
    (["edit", "interpolate", "{image}", "--seeds", "1"], ["--seeds expects 2 integers in [0, 2**62) separated by commas, got '1'"]),
    (["edit", "inpaint", "{image}", "--from-data", "1", "--box", "4,4,0,0"], ["does not fit in a 28 x 28 image"]),
    (["edit", "superres", "{image}", "--from-data", "1", "--factor", "1"], ["factor must be an integer >= 2", "--factor 4"]),
    (["edit", "colorize", "{image}", "--from-data", "1"], ["colorization needs a run trained on RGB images"]),
    (["edit", "inpaint", "{image}", "--from-data", "1", "--samples", "-1", "--box", "0,0,4,4"], ["--samples must be at least 1"]),
    (["eval", "{image}", "--steps", "0"], ["--steps must be positive integers separated by commas"]),
    (["sample", "{ct}", "--steps", "1,a"], ["--steps must be positive integers separated by commas"]),
    (["methods", "bogus"], ["unknown method 'bogus'", "choose one of"]),
))
def test_other_commands(cli, runs, argv, phrases):
    argv = [a.format(ct=runs.ct, image=runs.image) for a in argv]
    before = snapshot(runs.ct, runs.image)
    assert_one_line_error(cli(*argv), *phrases)
    assert snapshot(runs.ct, runs.image) == before


def test_edit_zero_samples(cli, runs, tmp_path):
    assert_one_line_error(cli("edit", "inpaint", runs.image, "--from-data", 1, "--box", "0,0,4,4", "--samples", 0,
                              "--out", tmp_path / "e"), "--samples must be at least 1")


def test_edit_seed_out_of_range(cli, runs, tmp_path):
    assert_one_line_error(cli("edit", "interpolate", runs.image, "--seeds", f"1,{BIG}", "--out", tmp_path / "e"),
                          "--seeds")
    assert os.listdir(tmp_path) == []
