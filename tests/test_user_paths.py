"""Every user path end to end on real data at a tiny budget, unconditional and class-conditional.

The command line runs in subprocesses (`python -m fewstep ...`, as a user types it); the library through
its documented imports. Fashion-MNIST runs train 2 steps at batch 8 on the default (cpu-tiny) U-Net; a
folder run trains on 24 PNGs of 16 x 16 that the test writes. The unconditional image paths matter most:
a release once shipped `fewstep eval`, `sample` and `bench` broken on every unconditional image run
because every image test was conditional.

To stay within a few minutes on 2 cores, the unconditional Fashion-MNIST path (training, sample, eval,
inpainting, resume) and the `~` folder run go through real subprocesses; the conditional variant and the
repeated calls run the same `fewstep.cli.main` in this process (`cli`), which gives the same exit code
and output without the 1.5 s start of torch. `fewstep bench --methods teacher,cd --budget teacher=2,cd=2
--n 20` (unconditional) is tests/test_makefile.py's: it is `make demo-fmnist`'s command, run there once.
"""

import glob
import io
import json
import math
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.checkpoint import load_checkpoint
from fewstep.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="needs dataset-fashion-mnist (make data)")
pytestmark = pytest.mark.slow            # every test here trains or loads a model in a fresh process

TINY_IMAGES = ["--net", "unet", "--batch", "8", "--steps", "2", "--seed", "0", "--quiet"]
VARIANTS = {"unconditional": [], "conditional": ["--set", "cond=true", "--set", "label_dropout=0.1"]}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALREADY = "already exists; pass --overwrite"
TASKS = ("inpaint", "superres", "denoise", "stroke", "interpolate")


def fewstep(*args, cwd=None, home=None):
    """`python -m fewstep ARGS` as a user runs it: output to pipes (not a terminal), one thread."""
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "fewstep", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def cli(*args, home=None):
    """`fewstep ARGS` in this process: cli.main's exit code and its stdout/stderr, like a subprocess result."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(out), redirect_stderr(err):
        if home is not None:
            mp.setenv("HOME", str(home))
        code = main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def runner(runs):
    """Real subprocesses for the unconditional runs (the paths that matter most), in-process otherwise."""
    return fewstep if runs.variant == "unconditional" else cli


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def one_line_error(result, *phrases):
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for p in phrases:
        assert p in lines[0], lines[0]
    return lines[0]


def assert_png(path, size=None):
    """A non-empty, readable PNG file (size: its (width, height))."""
    assert os.path.isfile(path) and os.path.getsize(path) > 0, path
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC, path
    with Image.open(path) as image:
        image.load()
        if size is not None:
            assert image.size == size, (path, image.size)


def read_config(run):
    """A run's config.json (in sections) as the flat fields of TrainConfig."""
    from fewstep.config import TrainConfig
    return TrainConfig.from_dict(read_json(os.path.join(run, "config.json"))).flat()


def read_json(path):
    assert os.path.getsize(path) > 0, path
    with open(path) as f:
        return json.load(f)


def finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def checkpoint_k(run):
    return load_checkpoint(os.path.join(run, "checkpoint.safetensors"))[1]["k"]


def snapshot(folder):
    """{name: bytes} of a folder's files, to show that a later command left them alone."""
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def numbered(parent):
    return sorted(os.listdir(parent)) if os.path.isdir(parent) else []


def copy_run(run, dest):
    """A private copy of a trained run without its earlier outputs (so numbering starts at 000)."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("samples", "eval", "edit", "tensorboard"))
    return dest

#----------------------------------------------------------------------------
# Runs, each trained once per module: an EDM teacher and CD from it, per variant, per data source.


def train_pair(root, data_args, variant, home=None):
    teacher, cd = root / "teacher", root / "cd"
    extra = [*data_args, *TINY_IMAGES, *VARIANTS[variant]]
    runs = SimpleNamespace(teacher=teacher, cd=cd, cond=variant == "conditional", variant=variant, home=home)
    run = runner(runs)
    ok(run("train", "edm", *extra, "--out", teacher, home=home))
    ok(run("train", "cd", "--teacher", teacher, *extra, "--out", cd, home=home))
    return runs


def fmnist_runs(tmp_path_factory, variant):
    if not os.path.isdir(FMNIST):
        pytest.skip("needs dataset-fashion-mnist (make data)")
    return train_pair(tmp_path_factory.mktemp(f"fm_{variant}"), ["--data", "fashion-mnist"], variant)


@pytest.fixture(scope="module")
def fm_unconditional(tmp_path_factory):
    return fmnist_runs(tmp_path_factory, "unconditional")


@pytest.fixture(scope="module")
def fm_conditional(tmp_path_factory):
    return fmnist_runs(tmp_path_factory, "conditional")


@pytest.fixture(scope="module", params=list(VARIANTS))
def fm(request):
    return request.getfixturevalue(f"fm_{request.param}")


@pytest.fixture(scope="module", autouse=True)
def shared_reference_features():
    """The in-process evals share the test split's features (4 s each to compute; the subprocess evals
    still compute their own): they depend only on the shipped classifier and the data."""
    import fewstep.evaluate as evaluate_module
    real, cache = evaluate_module.reference_features, {}

    def cached(feature_net, n=10000):
        if n not in cache:
            cache[n] = real(feature_net, n)
        return cache[n]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate_module, "reference_features", cached)
        yield


def write_folder(root, variant):
    """24 random 16 x 16 PNGs: RGB in one flat folder (unconditional), or gray in two class subfolders."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(24):
        if variant == "unconditional":
            path, array = root / f"img{i:02d}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        else:
            path, array = root / f"class{i % 2}" / f"img{i:02d}.png", rng.integers(0, 256, (16, 16), dtype=np.uint8)
        os.makedirs(path.parent, exist_ok=True)
        Image.fromarray(array).save(path)
        files.append(path)
    return sorted(files)            # the dataset's order: sorted subfolders, then sorted names


@pytest.fixture(scope="module", params=list(VARIANTS))
def folder(request, tmp_path_factory):
    """Folder runs: the unconditional one names its data as ~/pictures (HOME = the test's folder)."""
    variant = request.param
    home = tmp_path_factory.mktemp(f"folder_{variant}")
    files = write_folder(home / "pictures", variant)
    root = "~/pictures" if variant == "unconditional" else str(home / "pictures")
    runs = train_pair(home, ["--data", "folder", "--set", f"data.root={root}", "--set", "data.resolution=16"],
                      variant, home=home)
    runs.files, runs.root, runs.channels = files, root, 3 if variant == "unconditional" else 1
    return runs

#----------------------------------------------------------------------------
# Fashion-MNIST: train, info, sample, eval, edit, resume.


@needs_fmnist
def test_fmnist_runs_and_info(fm):
    for run, method in ((fm.teacher, "edm"), (fm.cd, "cd")):
        cfg = read_config(run)
        assert (cfg["method"], cfg["data"], cfg["net"], cfg["batch"], cfg["steps"]) == (method, "fashion-mnist", "unet", 8, 2)
        assert cfg["net_kwargs"]["config"] == "cpu-tiny"                     # the default U-Net size
        assert cfg["cond"] is fm.cond and cfg["label_dropout"] == (0.1 if fm.cond else 0.0)
        assert checkpoint_k(run) == 2
        with open(run / "metrics.jsonl") as f:
            assert [json.loads(line)["k"] for line in f if line.strip()][-1] == 2
        info = ok(cli("info", run)).stdout
        assert "trained    2 of 2 steps" in info and f"method     {method}" in info
        assert ("class-conditional" in info) is fm.cond
    assert read_config(fm.cd)["teacher"] == str(fm.teacher)


@needs_fmnist
def test_fmnist_sample_teacher_and_cd(fm, tmp_path):
    for run, nfe in ((fm.teacher, [1, 3]), (fm.cd, [1, 2])):          # Heun: 2 steps = 3 NFE; a CM: 1 per step
        out = tmp_path / run.name
        r = ok(runner(fm)("sample", run, "--steps", "1,2", "--n", 8, "--out", out))
        rows = read_json(out / "metrics.json")
        assert [row["steps"] for row in rows] == [1, 2] and [row["nfe"] for row in rows] == nfe, rows
        assert all(finite(row["images_per_sec"]) and row["images_per_sec"] > 0 for row in rows)
        assert "wrote" in r.stdout
        for s in (1, 2):
            assert_png(out / f"samples_{s}steps.png")
            x = torch.load(out / f"steps{s}.pt")
            assert x.shape == (8, 1, 28, 28) and torch.isfinite(x).all() and x.abs().max() <= 1


@needs_fmnist
def test_fmnist_eval(fm):
    """eval --steps 1,2 on CD (with classifier-free guidance when conditional): a row per step count,
    finite metrics, table, plot and grids, in a new RUN/eval/NNN."""
    before = numbered(fm.cd / "eval")
    guidance = ["--guidance", "1.0"] if fm.cond else []
    r = ok(runner(fm)("eval", fm.cd, "--n", 20, "--steps", "1,2", "--quiet", *guidance))
    new = sorted(set(numbered(fm.cd / "eval")) - set(before))
    assert new == [f"{len(before):03d}"], new
    out = fm.cd / "eval" / new[0]
    rows = read_json(out / "metrics.json")
    calls = 2 if fm.cond else 1                    # classifier-free guidance evaluates the model twice a step
    assert [row["steps"] for row in rows] == [1, 2] and [row["nfe"] for row in rows] == [calls, 2 * calls], rows
    for row in rows:
        assert finite(row["fd"]) and row["fd"] > 0, row
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1, row
        assert finite(row["images_per_sec"]) and row["images_per_sec"] > 0, row
    table = open(out / "metrics.md").read().splitlines()
    assert len(table) == 4 and table[2].startswith(f"| 1 | {calls} |") and table[3].startswith(f"| 2 | {2 * calls} |"), table
    assert all(0 <= row["class_match"] <= 1 for row in rows) if fm.cond else "class_match" not in rows[0], rows
    for name in ("fd_vs_nfe.png", "samples_1steps.png", "samples_2steps.png"):
        assert_png(out / name)
    assert len([line for line in r.stdout.splitlines() if line.startswith("steps")]) == 2, r.stdout


def edit_args(task, cond):
    extra = {"inpaint": ["--box", "7,7,21,21"], "superres": ["--factor", 4], "denoise": ["--sigma", 0.5],
             "stroke": ["--sigma", 0.8], "interpolate": ["--frames", 4]}[task]
    if task == "interpolate":      # takes no images; a conditional run needs --label
        return extra + (["--label", 1] if cond else [])
    return extra + ["--from-data", 2] + ([] if task == "denoise" else ["--samples", 2])


@needs_fmnist
@pytest.mark.parametrize("which", ["teacher", "cd"])
def test_fmnist_edit_every_task(fm, which, tmp_path):
    from fewstep.data.images import FashionMNIST
    run = getattr(fm, which)
    # the unconditional CD's inpainting as a user runs it (a subprocess), the rest in-process
    edit = {"inpaint": runner(fm) if which == "cd" else cli}
    nfe = 3 if which == "teacher" else 2                                 # --steps 2: Heun 3 NFE, a CM 2
    for task in TASKS:
        out = tmp_path / task
        r = ok(edit.get(task, cli)("edit", task, run, *edit_args(task, fm.cond), "--steps", 2, "--out", out))
        assert f"({nfe} NFE per result)" in r.stdout, r.stdout
        assert_png(out / f"{task}.png")
        rows, samples = (1, 4) if task == "interpolate" else (2, 1 if task == "denoise" else 2)
        results = sorted(glob.glob(str(out / f"{task}_*_*.png")))
        assert len(results) == rows * samples, results
        for path in results:
            assert_png(path, (28, 28))
    # inpainting keeps every known pixel of the test image, in the PNG the user gets
    originals = FashionMNIST("test").images[:2, 0].numpy()
    hole = np.zeros((28, 28), dtype=bool)
    hole[7:21, 7:21] = True
    for i in range(2):
        for j in range(2):
            result = np.asarray(Image.open(tmp_path / "inpaint" / f"inpaint_{i}_{j}.png"))
            assert np.array_equal(result[~hole], originals[i][~hole]), (i, j)
            assert not np.array_equal(result[hole], originals[i][hole])        # the hole was generated


@needs_fmnist
def test_interpolate_takes_no_images_and_a_conditional_run_needs_a_label(fm_conditional, tmp_path):
    r = cli("edit", "interpolate", fm_conditional.cd, "--from-data", 2, "--frames", 3, "--out", tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "fewstep: error: interpolate mixes two seeds' noise (--seeds) and takes no input images; leave out "
        "--input and --from-data and pass --label K"], r.stderr
    r = cli("edit", "interpolate", fm_conditional.cd, "--frames", 3, "--out", tmp_path)
    assert r.returncode == 2 and "pass --label K" in r.stderr and "--from-data" not in r.stderr, r.stderr
    assert not os.listdir(tmp_path)


@needs_fmnist
def test_fmnist_resume_and_info(fm, tmp_path):
    run = copy_run(fm.cd, tmp_path / "cd")
    r = ok(runner(fm)("resume", run, "--steps", 3, "--quiet"))
    assert "from step 2 to 3" in r.stdout, r.stdout
    assert checkpoint_k(run) == 3 and read_config(run)["steps"] == 3
    assert "trained    3 of 3 steps" in ok(cli("info", run)).stdout
    r = ok(cli("resume", run, "--quiet"))                                   # nothing left to do: says so
    assert "already trained to step 3" in r.stdout and checkpoint_k(run) == 3


#----------------------------------------------------------------------------
# A folder of images: train, sample, edit; eval refuses a 16 px run in one line.


def test_folder_train_sample_edit(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(folder.home))              # the in-process calls resolve ~ like the subprocesses
    C, run = folder.channels, runner(folder)
    cfg = read_config(folder.cd)
    # the root is stored absolute, ~ expanded (against the HOME of training), so the run loads from anywhere
    assert cfg["data_kwargs"]["root"] == str(folder.home / "pictures") and cfg["cond"] is folder.cond
    info = ok(cli("info", folder.cd)).stdout
    assert "trained    2 of 2 steps" in info and ("class-conditional" in info) is folder.cond
    out = tmp_path / "cd"
    ok(run("sample", folder.cd, "--steps", "1,2", "--n", 6, "--out", out, home=folder.home))
    assert [row["nfe"] for row in read_json(out / "metrics.json")] == [1, 2]
    for s in (1, 2):
        assert_png(out / f"samples_{s}steps.png")
        assert torch.load(out / f"steps{s}.pt").shape == (6, C, 16, 16)
    ok(cli("sample", folder.teacher, "--steps", "2", "--n", 6, "--out", tmp_path / "teacher"))
    assert [row["nfe"] for row in read_json(tmp_path / "teacher" / "metrics.json")] == [3]
    # inpainting keeps the known pixels of the first two images of the folder
    out = tmp_path / "edit"
    ok(run("edit", "inpaint", folder.cd, "--from-data", 2, "--box", "4,4,12,12", "--samples", 2, "--steps", 2,
           "--out", out, home=folder.home))
    hole = np.zeros((16, 16), dtype=bool)
    hole[4:12, 4:12] = True
    for i in range(2):
        original = np.asarray(Image.open(folder.files[i]))
        for j in range(2):
            result = np.asarray(Image.open(out / f"inpaint_{i}_{j}.png"))
            assert result.shape == original.shape and np.array_equal(result[~hole], original[~hole]), (i, j)
    for task, extra in (("superres", ["--from-data", 2, "--factor", 4]), ("denoise", ["--from-data", 2]),
                        ("stroke", ["--from-data", 2]),
                        ("interpolate", ["--frames", 3] + (["--label", 0] if folder.cond else []))):
        ok(cli("edit", task, folder.teacher, *extra, "--steps", 2, "--out", out))
        assert_png(out / f"{task}.png")
        assert_png(out / f"{task}_0_0.png", (16, 16))
    one_line_error(run("eval", folder.cd, "--n", 20, "--steps", 1, home=folder.home), f"{C}x16x16", "1x28x28")
    assert not os.path.exists(folder.cd / "eval")


@pytest.fixture
def relative_root_run(tmp_path, monkeypatch):
    """A folder run trained from tmp_path/work with data.root=pictures (relative to that directory)."""
    write_folder(tmp_path / "work" / "pictures", "unconditional")
    monkeypatch.chdir(tmp_path / "work")
    ok(cli("train", "edm", "--data", "folder", "--set", "data.root=pictures", "--set", "data.resolution=16",
           *TINY_IMAGES, "--steps", 1, "--out", "run"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "work" / "run"


def test_folder_run_samples_from_another_directory(relative_root_run, tmp_path):
    # the relative data.root was stored as an absolute path, so the run loads from any working directory
    assert read_config(relative_root_run)["data_kwargs"]["root"] == str(tmp_path / "work" / "pictures")
    r = ok(cli("sample", relative_root_run, "--steps", 1, "--n", 2, "--out", tmp_path / "samples"))
    assert "images/s" in r.stdout
    assert_png(tmp_path / "samples" / "samples_1steps.png")
    assert json.load(open(tmp_path / "samples" / "metrics.json"))[0]["nfe"] == 1


#----------------------------------------------------------------------------
# Python.


@needs_fmnist
def test_python_api(fm_unconditional, fm_conditional, tmp_path):
    from fewstep.config import TrainConfig
    from fewstep.data.images import FashionMNIST
    from fewstep.editing import Inpainting, box_hole, solve_inverse
    from fewstep.evaluate import evaluate, sample_images
    from fewstep.generate import generate
    from fewstep.runs import load_model
    from fewstep.train import train

    run = str(tmp_path / "ct")                       # an unconditional CT run trained from Python
    state = train(TrainConfig(method="ct", data="fashion-mnist", net="unet", batch=8, steps=2), run, progress=False)
    assert state.k == 2 and checkpoint_k(run) == 2
    for path, cond in ((run, False), (fm_unconditional.teacher, False), (fm_conditional.cd, True)):
        model, cfg = load_model(str(path))
        assert cfg.cond is cond and cfg.batch == 8
        x, nfe, rate = sample_images(model, cfg, 6, 2, seed=3)
        assert x.shape == (6, 1, 28, 28) and torch.isfinite(x).all() and rate > 0
        assert nfe == (3 if cfg.method == "edm" else 2)
        assert torch.equal(sample_images(model, cfg, 6, 2, seed=3)[0], x)             # seeded
        labels = {"class_labels": torch.tensor([0, 1, 2, 3])} if cond else None
        y, nfe = generate(model, cfg, 4, 1, generator=torch.Generator().manual_seed(0), cond=labels)
        assert y.shape == (4, 1, 28, 28) and nfe == 1 and torch.isfinite(y).all()
    rows = evaluate(run, [1], n=20, progress=False)
    assert [r["nfe"] for r in rows] == [1] and finite(rows[0]["fd"]) and rows[0]["fd"] > 0
    assert read_json(os.path.join(run, "eval", "000", "metrics.json")) == rows
    # the README's inpainting snippet, on the unconditional CD run and on the conditional one (with labels)
    test = FashionMNIST("test")
    y = test.images[:2].float() / 127.5 - 1
    c = Inpainting(box_hole((28, 28), (7, 7, 21, 21)))
    for path, cond in ((fm_unconditional.cd, None), (fm_conditional.cd, {"class_labels": test.labels[:2]})):
        model, cfg = load_model(str(path))
        x, nfe = solve_inverse(model, cfg, c.measure(y), c, steps=2, generator=torch.Generator().manual_seed(0), cond=cond)
        assert x.shape == y.shape and nfe == 2
        assert torch.equal(x[..., ~c.hole], y[..., ~c.hole]) and not torch.equal(x[..., c.hole], y[..., c.hole])

#----------------------------------------------------------------------------
# Outputs never overwrite.


@needs_fmnist
def test_outputs_are_numbered_and_never_overwritten(fm_unconditional, tmp_path):
    run = copy_run(fm_unconditional.cd, tmp_path / "cd")
    commands = {
        "samples": ["sample", run, "--steps", "1", "--n", 4],
        "edit": ["edit", "denoise", run, "--from-data", 1],
        "eval": ["eval", run, "--steps", "1", "--n", 20, "--quiet"],
    }
    for kind, argv in commands.items():
        ok(cli(*argv))
        first = snapshot(run / kind / "000")
        ok(cli(*argv))
        assert numbered(run / kind) == ["000", "001"] and snapshot(run / kind / "001").keys() == first.keys()
        assert snapshot(run / kind / "000") == first
        one_line_error(fewstep(*argv, "--out", run / kind / "000") if kind == "samples" else
                       cli(*argv, "--out", run / kind / "000"), ALREADY)
        assert snapshot(run / kind / "000") == first
        ok(cli(*argv, "--out", run / kind / "000", "--overwrite"))
        assert snapshot(run / kind / "000").keys() == first.keys() and numbered(run / kind) == ["000", "001"]
    # a task's outputs block only that task: another task may write into the same folder
    ok(cli("edit", "inpaint", run, "--from-data", 1, "--box", "0,0,8,8", "--out", run / "edit" / "000"))
    assert_png(run / "edit" / "000" / "inpaint.png")
    assert_png(run / "edit" / "000" / "denoise.png")
    assert "samples/000, samples/001, eval/000, eval/001, edit/000, edit/001" in ok(cli("info", run)).stdout

#----------------------------------------------------------------------------
# Progress off a terminal.


def test_progress_off_a_terminal_is_a_few_plain_lines(tmp_path):
    tiny = ["--set", "net.width=16", "--set", "net.depth=1", "--batch", 64]
    r = ok(fewstep("train", "edm", "--steps", 1000, *tiny, "--out", tmp_path / "run"))
    lines = r.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 12 and "\r" not in r.stderr and "\x1b" not in r.stderr, r.stderr
    assert lines[-1].startswith("edm ") and "step 1000/1000" in lines[-1]
    assert "trained edm from step 0 to 1000" in r.stdout
