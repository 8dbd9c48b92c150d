"""The command line end to end, and its one-line errors for bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--steps", "40", "--batch", "64", "--set", "net.width=16", "--set", "net.depth=1", "--quiet"]


def fewstep(*args):
    # one thread: tiny models gain nothing from more, and on a busy machine their threads spin-wait
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fewstep", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def assert_one_line_error(result, *phrases):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for p in phrases:
        assert p in lines[0], lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    teacher, student = root / "teacher", root / "cd"
    r = fewstep("train", "edm", "--out", teacher, *TINY)
    assert r.returncode == 0, r.stderr
    r = fewstep("train", "cd", "--teacher", teacher, "--out", student, *TINY, "--set", "N=8")
    assert r.returncode == 0, r.stderr
    return teacher, student


def test_train_and_sample_end_to_end(runs, tmp_path):
    teacher, student = runs
    r = fewstep("sample", student, "--steps", "1,2,4", "--n", "300", "--out", tmp_path / "cd")
    assert r.returncode == 0, r.stderr
    rows = json.load(open(tmp_path / "cd" / "metrics.json"))
    assert [row["nfe"] for row in rows] == [1, 2, 4]
    assert os.path.getsize(tmp_path / "cd" / "samples.png") > 1000
    r = fewstep("sample", teacher, "--steps", "18", "--n", "300", "--out", tmp_path / "t")
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / "t" / "metrics.json"))[0]["nfe"] == 35          # Heun, EDM's 35 NFE
    cfg = json.load(open(student / "config.json"))
    assert cfg["method"]["name"] == "cd" and cfg["method"]["options"]["N"] == 8
    assert sorted(cfg) == ["data", "method", "network", "optimizer", "process", "run"]
    assert cfg["run"]["batch"] == 64 and cfg["optimizer"] == {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999],
                                                               "weight_decay": 0.0, "lr_warmup": 0, "lr_decay": "none",
                                                               "lr_decay_steps": 40}


def test_unknown_method(tmp_path):
    assert_one_line_error(fewstep("train", "gan", "--out", tmp_path / "x"), "unknown method 'gan'", "edm")


def test_distillation_without_or_with_a_missing_teacher(tmp_path):
    assert_one_line_error(fewstep("train", "cd", "--out", tmp_path / "x"), "--teacher")
    assert_one_line_error(fewstep("train", "cd", "--teacher", tmp_path / "nope", "--out", tmp_path / "x"),
                          "not found", "fewstep train edm")
    assert not os.path.exists(tmp_path / "x" / "checkpoint.safetensors")


def test_a_consistency_run_is_not_a_teacher(runs, tmp_path):
    _, student = runs
    assert_one_line_error(fewstep("train", "cd", "--teacher", student, "--out", tmp_path / "x"), "not a diffusion teacher")


def test_impossible_step_lists(runs):
    teacher, student = runs
    for bad in ("0", "1,a", "", "-2"):
        assert_one_line_error(fewstep("sample", student, "--steps", bad), "--steps")
    assert_one_line_error(fewstep("sample", student, "--tau", "1,80"), "largest")
    assert_one_line_error(fewstep("sample", student, "--tau", "90,1"), "80")


def test_bad_method_option(tmp_path):
    assert_one_line_error(fewstep("train", "ct", "--out", tmp_path / "x", "--set", "colour=blue"), "no option", "colour")


def test_corrupt_checkpoint_via_the_cli(runs, tmp_path):
    teacher, _ = runs
    broken = tmp_path / "broken"
    os.makedirs(broken)
    for name in ("config.json", "checkpoint.safetensors"):
        data = open(teacher / name, "rb").read()
        open(broken / name, "wb").write(data[: len(data) // 3] if name.endswith("safetensors") else data)
    assert_one_line_error(fewstep("sample", broken, "--steps", "2"), "corrupt or truncated")


@pytest.mark.parametrize("setting, phrase", [("distance=l3", "unknown distance"), ("weighting=cosine", "unknown weighting"),
                                             ("boundary=foo", "boundary"), ("s0=1", "s0"), ("mu0=0", "0 < mu0 < 1"),
                                             ("net.width=abc", "net.width must be an integer"),
                                             ("net.width=-4", "width must be a positive integer"),
                                             ("data.k=abc", "data.k must be an integer"), ("data.k=0", "k must be a positive"),
                                             ("net.colour=1", "no option 'colour'"), ("net.config=huge", "names no network size")])
def test_bad_option_values(tmp_path, setting, phrase):
    assert_one_line_error(fewstep("train", "ct", "--out", tmp_path / "x", "--steps", "3", "--set", setting), phrase)
    assert not os.path.exists(tmp_path / "x" / "checkpoint.safetensors")


def test_bad_sampling_arguments(runs):
    teacher, student = runs
    assert_one_line_error(fewstep("sample", student, "--tau", "80,abc"), "--tau")
    assert_one_line_error(fewstep("sample", student, "--n", "0"), "positive integer")
    assert_one_line_error(fewstep("sample", student, "--sampler", "heun"), "consistency")
    assert_one_line_error(fewstep("sample", teacher, "--sampler", "consistency"), "heun")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A class-conditional U-Net run on a folder of 16 x 16 gray PNGs (2 classes), trained without label
    dropout: small enough to train in a second, and the wrong shape for eval's feature classifier."""
    from PIL import Image
    root = tmp_path_factory.mktemp("image_run")
    for i in range(4):
        os.makedirs(root / "data" / f"class{i % 2}", exist_ok=True)
        Image.new("L", (16, 16), color=60 * i).save(root / "data" / f"class{i % 2}" / f"{i}.png")
    run = root / "run"
    r = fewstep("train", "edm", "--data", "folder", "--net", "unet", "--set", "net.config=cpu-tiny", "--set",
                f"data.root={root / 'data'}", "--set", "data.resolution=16", "--set", "cond=true",
                "--steps", "1", "--batch", "4", "--out", run, "--quiet")
    assert r.returncode == 0, r.stderr
    return run


def test_sample_on_an_image_run_writes_grids(image_run, tmp_path):
    r = fewstep("sample", image_run, "--steps", "1,2", "--n", "6", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.load(open(tmp_path / "metrics.json"))
    assert [row["nfe"] for row in rows] == [1, 3] and all(row["images_per_sec"] > 0 for row in rows)   # Heun
    for s in (1, 2):
        assert os.path.getsize(tmp_path / f"samples_{s}steps.png") > 0
        assert tuple(torch.load(tmp_path / f"steps{s}.pt").shape) == (6, 1, 16, 16)


def test_eval_errors(image_run, runs):
    teacher, _ = runs
    assert_one_line_error(fewstep("eval", image_run, "--guidance", "2"), "label_dropout=0", "--set label_dropout=0.1")
    assert_one_line_error(fewstep("eval", image_run), "1x16x16", "1x28x28")
    assert_one_line_error(fewstep("eval", image_run, "--classifier", teacher, "--guidance", "1"),
                          "not a guidance classifier", "fewstep train classifier")


@pytest.mark.parametrize("setting, phrase", [("label_dropout=abc", "label_dropout must be a number, got 'abc'"),
                                             ("steps=2.5", "steps must be an integer"),
                                             ("cond=1", "cond must be true or false"),
                                             ("mu0=abc", "method option mu0 must be a number"),
                                             ("s1=2.5", "method option s1 must be an integer")])
def test_wrongly_typed_config_fields(tmp_path, setting, phrase):
    assert_one_line_error(fewstep("train", "ct", "--out", tmp_path / "x", "--set", setting), phrase)
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.parametrize("args, phrase", [(["--budget", "teacher=abc"], "--budget expects NAME=STEPS"),
                                          (["--budget", "foo"], "--budget expects NAME=STEPS"),
                                          (["--budget", "foo=3"], "unknown run(s) ['foo']"),
                                          (["--methods", "teacher,bogus"], "unknown run(s) ['bogus']")])
def test_bad_bench_arguments(tmp_path, args, phrase):
    assert_one_line_error(fewstep("bench", "--out", tmp_path / "b", *args), phrase)
    assert not os.path.exists(tmp_path / "b")


def test_set_accepts_config_json_section_keys(tmp_path):
    r = fewstep("train", "edm", "--out", tmp_path / "x", *TINY, "--set", "data.cond=false", "--set", "optimizer.name=adamw",
                "--set", "process.sigma_max=40", "--set", "network.name=mlp")
    assert r.returncode == 0, r.stderr
    cfg = json.load(open(tmp_path / "x" / "config.json"))
    assert cfg["optimizer"]["name"] == "adamw" and cfg["process"]["sigma_max"] == 40 and cfg["data"]["cond"] is False
    assert_one_line_error(fewstep("train", "edm", "--out", tmp_path / "y", "--set", "optimizer.colour=1"),
                          "section 'optimizer' has no field 'colour'")
