"""The Makefile's targets run what the README promises, and their commands work.

For demo, demo-fmnist, demo-edit and bench: `make -n TARGET` with tiny budgets (the Makefile's DEMO_ARGS,
FM_ARGS, BENCH_ARGS, RGB_STEPS, RGB_CD_STEPS and *_OUT variables exist for this), checked against the
README, then the printed script run with `bash -e` from the repository root: a broken command in a target
fails here. SETUP= skips the virtual environment step (the tests have their own) and PY= is this Python.
"""

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from fewstep.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist"
needs_make = pytest.mark.skipif(shutil.which("make") is None or shutil.which("bash") is None, reason="needs make and bash")
needs_fmnist = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="needs dataset-fashion-mnist (make data)")
pytestmark = needs_make

TINY = {"DEMO_ARGS": "--fast", "FM_ARGS": "--budget teacher=2,cd=2 --n 20",
        "BENCH_ARGS": "--budget teacher=2,cd=2,ct=2,ict=2 --n 20", "RGB_STEPS": "2", "RGB_CD_STEPS": "2"}
EDIT_TASKS = ("inpaint", "colorize", "superres", "stroke", "denoise", "interpolate")


def clean_env(**extra):
    """This environment without the variables of an enclosing make (`make test`), which would change
    what a nested make prints, with one thread per process as the other CLI tests use."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    return {**env, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", **extra}


def outputs(tmp_path):
    return {"DEMO_OUT": str(tmp_path / "demo"), "FM_OUT": str(tmp_path / "fm"), "EDIT_OUT": str(tmp_path / "edit"),
            "BENCH_OUT": str(tmp_path / "bench")}


def make_n(target, variables):
    """The commands `make -n TARGET VAR=VALUE ...` prints, as one script."""
    r = subprocess.run(["make", "-n", "--no-print-directory", target, *(f"{k}={v}" for k, v in variables.items())],
                       cwd=ROOT, capture_output=True, text=True, env=clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def tiny_script(target, tmp_path):
    return make_n(target, {"SETUP": "", "PY": sys.executable, **outputs(tmp_path), **TINY})


def commands(script):
    """The script's commands, continuation lines joined, each as a token list."""
    return [shlex.split(line) for line in script.replace("\\\n", " ").splitlines() if line.strip()]


def fewstep_commands(script):
    """The `PY -m fewstep ...` commands of a script (also after `test ... ||`), as token lists from the
    subcommand on."""
    found = []
    for tokens in commands(script):
        for i in range(len(tokens) - 2):
            if tokens[i] == sys.executable and tokens[i + 1:i + 3] == ["-m", "fewstep"]:
                found.append(tokens[i + 3:])
    return found


def options(tokens):
    """{--flag: value or True} of a token list."""
    opts, i = {}, 0
    while i < len(tokens):
        if tokens[i].startswith("--"):
            has_value = i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
            opts[tokens[i]] = tokens[i + 1] if has_value else True
            i += 2 if has_value else 1
        else:
            i += 1
    return opts


def run_script(script, tmp_path, name):
    """The printed commands run by bash -e from the repository root."""
    path = tmp_path / f"{name}.sh"
    path.write_text(script)
    r = subprocess.run(["bash", "-e", str(path)], cwd=ROOT, capture_output=True, text=True, env=clean_env(), timeout=900)
    assert r.returncode == 0, f"{name} failed (exit {r.returncode}):\n{script}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r


def assert_png(path):
    assert os.path.isfile(path) and os.path.getsize(path) > 0, path
    with Image.open(path) as image:
        assert image.format == "PNG", path
        image.load()


def checkpoint_k(run):
    return load_checkpoint(os.path.join(run, "checkpoint.safetensors"))[1]["k"]


def check_bench(out, expected):
    """bench.json and bench.md hold one row per model and step count (expected: model -> [(steps, NFE)]),
    with finite metrics; the plot, a grid per row and each run's 2-step checkpoint exist."""
    rows = json.load(open(os.path.join(out, "bench.json")))
    assert [(r["model"], r["steps"], r["nfe"]) for r in rows] == [(m, s, n) for m, pairs in expected.items() for s, n in pairs]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("fd", "precision", "recall", "images_per_sec", "train_sec_per_step")), r
        assert r["fd"] > 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and r["images_per_sec"] > 0, r
    table = [line for line in open(os.path.join(out, "bench.md")).read().splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | steps | NFE | FD | precision | recall |") and len(table) == 1 + len(rows), table
    for line, r in zip(table[1:], rows):
        assert line.startswith(f"| {r['model']} | {r['steps']} | {r['nfe']} |"), line
    assert_png(os.path.join(out, "fd_vs_nfe.png"))
    names = {"teacher, Euler": "teacher", "teacher, Heun": "teacher", "CD": "cd", "CT": "ct", "iCT": "ict"}
    for r in rows:
        assert_png(os.path.join(out, f"{names[r['model']]}_{r['steps']}steps.png"))
    for name in {names[m] for m in expected}:
        assert checkpoint_k(os.path.join(out, name)) == 2


def readme_edit_commands():
    """The `fewstep edit ...` commands of the README's zero-shot editing table, as token lists."""
    text = open(os.path.join(ROOT, "README.md")).read()
    found = [shlex.split(c)[1:] for c in re.findall(r"`(fewstep edit [^`]+)`", text) if "demo_fmnist/" in c]
    assert len(found) == len({tokens[1] for tokens in found}), found          # one command per task
    return {tokens[1]: tokens for tokens in found}

#----------------------------------------------------------------------------


def test_default_commands_are_the_readmes():
    """Without the test's variables the targets write where the README says, with the real budgets."""
    def default(target):
        return fewstep_commands(make_n(target, {"PY": sys.executable}))

    assert default("demo") == [["demo", "--out", "demo_out"]]
    assert default("bench") == [["bench", "--out", "bench_out"]]
    assert default("demo-fmnist") == [["bench", "--methods", "teacher,cd", "--out", "demo_fmnist"]]
    found = default("demo-edit")
    assert [options(t)["--steps"] for t in found if t[0] == "train"] == ["2000", "600"]      # README: 2000 and 600
    assert {options(t)["--out"] for t in found if t[0] == "edit"} == {"edit_out"}
    assert "-m fewstep demo" in make_n("demo", {}) and os.path.join(".venv", "bin", "python") in make_n("demo", {})


@pytest.mark.slow
def test_make_demo(tmp_path):
    script = tiny_script("demo", tmp_path)
    demo_out = outputs(tmp_path)["DEMO_OUT"]
    assert fewstep_commands(script) == [["demo", "--out", demo_out, "--fast"]]
    run_script(script, tmp_path, "demo")
    assert_png(os.path.join(demo_out, "demo.png"))
    table = open(os.path.join(demo_out, "metrics.md")).read()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| model")]
    for model in ("CD", "CT", "iCT"):
        assert [(r[1], r[2]) for r in rows if r[0] == model] == [("1", "1"), ("2", "2"), ("4", "4")], table
    assert ["18", "35"] == [r[1:3] for r in rows if r[0] == "teacher, Heun"][0], table
    for name in ("teacher", "cd", "ct", "ict"):
        assert os.path.isfile(os.path.join(demo_out, name, "checkpoint.safetensors"))


@pytest.fixture(scope="module")
def fm_out(tmp_path_factory):
    """`make demo-fmnist`'s commands run once (tiny budget): the teacher and CD bench on Fashion-MNIST."""
    if not os.path.isdir(FMNIST):
        pytest.skip("needs dataset-fashion-mnist (make data)")
    tmp_path = tmp_path_factory.mktemp("make_fm")
    script = tiny_script("demo-fmnist", tmp_path)
    fm = outputs(tmp_path)["FM_OUT"]
    bench = ["bench", "--methods", "teacher,cd", "--out", fm, "--budget", "teacher=2,cd=2", "--n", "20"]
    assert fewstep_commands(script) == [bench]
    run_script(script, tmp_path, "demo-fmnist")
    return tmp_path, bench


@pytest.mark.slow
@needs_fmnist
def test_make_demo_fmnist(fm_out):
    tmp_path, _ = fm_out
    fm = outputs(tmp_path)["FM_OUT"]
    check_bench(fm, {"teacher, Euler": [(4, 4), (8, 8), (16, 16)], "teacher, Heun": [(5, 9), (9, 17)],
                     "CD": [(1, 1), (2, 2), (4, 4)]})
    assert json.load(open(os.path.join(fm, "cd", "config.json")))["data"]["cond"] is False      # the unconditional path


@pytest.mark.slow
@needs_fmnist
def test_bench_table_names_the_command_that_made_it(fm_out):
    tmp_path, bench = fm_out
    text = open(os.path.join(outputs(tmp_path)["FM_OUT"], "bench.md")).read()
    command = re.search(r"Command: `([^`]*)`", text).group(1)
    assert shlex.split(command)[1:] == bench or options(shlex.split(command)).items() >= options(bench).items(), command
    assert "'ct'" not in text.split("Training steps:")[1].splitlines()[0]


@pytest.mark.slow
@needs_fmnist
def test_make_demo_edit_twice(fm_out):
    """demo-edit after demo-fmnist: trains what is missing (the RGB runs; its fallback for a missing CD is
    demo-fmnist's command), draws every README picture with the README's command; and again."""
    tmp_path, bench = fm_out
    out = outputs(tmp_path)
    fm, edit = out["FM_OUT"], out["EDIT_OUT"]
    script = tiny_script("demo-edit", tmp_path)
    found = fewstep_commands(script)
    assert found[0] == bench, "demo-edit's fallback must be demo-fmnist's command"
    assert f"test -f {fm}/cd/checkpoint.safetensors ||" in script
    trains = [t for t in found if t[0] == "train"]
    assert [(t[1], options(t)["--out"], options(t)["--steps"]) for t in trains] == \
        [("edm", f"{fm}/rgb_teacher", "2"), ("cd", f"{fm}/rgb_cd", "2")]
    assert all(options(t)["--data"] == "fashion-mnist-rgb" and options(t).get("--resume") for t in trains)
    edits = {t[1]: t for t in found if t[0] == "edit"}
    assert sorted(edits) == sorted(EDIT_TASKS)
    readme = readme_edit_commands()
    assert sorted(readme) == sorted(EDIT_TASKS)
    for task, promised in readme.items():
        promised = [token.replace("demo_fmnist", fm) for token in promised]
        made = edits[task]
        assert made[:3] == promised[:3], (made, promised)                        # edit TASK RUN
        assert options(promised).items() <= options(made).items(), (made, promised)
        assert options(made)["--out"] == edit and options(made)["--overwrite"] is True

    first = run_script(script, tmp_path, "demo-edit")
    assert "[bench]" not in first.stdout                            # demo-fmnist's runs were reused
    for task in EDIT_TASKS:
        assert_png(os.path.join(edit, f"{task}.png"))
        assert_png(os.path.join(edit, f"{task}_0_0.png"))
    assert checkpoint_k(os.path.join(fm, "rgb_teacher")) == 2 and checkpoint_k(os.path.join(fm, "rgb_cd")) == 2
    mtimes = {t: os.path.getmtime(os.path.join(fm, t, "checkpoint.safetensors")) for t in ("rgb_teacher", "rgb_cd")}

    # again: finished runs are reused (--resume), the pictures replaced (--overwrite)
    for task in EDIT_TASKS:
        os.remove(os.path.join(edit, f"{task}.png"))
    second = run_script(script, tmp_path, "demo-edit-again")
    assert second.stdout.count("already trained to step 2") == 2, second.stdout
    assert mtimes == {t: os.path.getmtime(os.path.join(fm, t, "checkpoint.safetensors")) for t in mtimes}
    for task in EDIT_TASKS:
        assert_png(os.path.join(edit, f"{task}.png"))


@pytest.mark.slow
@needs_fmnist
def test_make_bench(tmp_path):
    script = tiny_script("bench", tmp_path)
    bench_out = outputs(tmp_path)["BENCH_OUT"]
    assert fewstep_commands(script) == [["bench", "--out", bench_out, "--budget", "teacher=2,cd=2,ct=2,ict=2", "--n", "20"]]
    run_script(script, tmp_path, "bench")
    check_bench(bench_out, {"teacher, Euler": [(4, 4), (8, 8), (16, 16)], "teacher, Heun": [(5, 9), (9, 17)],
                            **{m: [(1, 1), (2, 2), (4, 4)] for m in ("CD", "CT", "iCT")}})
