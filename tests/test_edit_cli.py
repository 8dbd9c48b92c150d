"""`fewstep edit` end to end on tiny runs trained on a folder of 8 x 8 RGB images, and its one-line errors."""

import os

import numpy as np
import pytest
from PIL import Image

from fewstep.cli import main
from fewstep.config import TrainConfig
from fewstep.train import train

NET = {"config": "cpu-tiny", "channel_mult": [1, 2]}


def write_png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit")
    rng = np.random.default_rng(0)
    os.makedirs(root / "images")
    for i in range(6):
        write_png(root / "images" / f"{i}.png", rng.integers(0, 256, (8, 8, 3)))
    base = dict(data="folder", data_kwargs={"root": str(root / "images"), "resolution": 8}, net="unet",
                net_kwargs=NET, batch=4, steps=2, log_every=1)
    for method in ("ct", "edm"):
        train(TrainConfig(method=method, **base), str(root / method), progress=False)
    return root


def edit(*args):
    return main(["edit", *map(str, args)])


def assert_one_line_error(code, capsys, *phrases):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    for p in phrases:
        assert p in err[0], err[0]


@pytest.mark.parametrize("method", ["ct", "edm"])
def test_inpainting_keeps_the_input_pixels_in_the_written_png(runs, method, tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (8, 8, 3))
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:6, 1:5] = 255
    out = tmp_path / "out"
    assert edit("inpaint", runs / method, "--input", write_png(tmp_path / "in.png", image),
                "--mask", write_png(tmp_path / "mask.png", mask), "--samples", 2, "--steps", 2, "--out", out) == 0
    for j in range(2):
        result = np.asarray(Image.open(out / f"inpaint_0_{j}.png"))
        assert result.shape == (8, 8, 3)
        assert np.array_equal(result[mask == 0], image[mask == 0])
    assert os.path.getsize(out / "inpaint.png") > 0


def test_every_task_writes_its_grid(runs, tmp_path):
    image = write_png(tmp_path / "in.png", np.random.default_rng(2).integers(0, 256, (8, 8, 3)))
    low = write_png(tmp_path / "low.png", np.random.default_rng(3).integers(0, 256, (4, 4, 3)))
    for task, extra in [("colorize", ["--input", image]), ("superres", ["--input", low, "--factor", 2]),
                        ("stroke", ["--input", image, "--sigma", 2.0]), ("denoise", ["--input", image, "--add-noise"]),
                        ("interpolate", ["--frames", 3]), ("inpaint", ["--from-data", 2, "--box", "0,0,4,4"])]:
        assert edit(task, runs / "ct", *extra, "--out", tmp_path / "out") == 0, task
        assert os.path.getsize(tmp_path / "out" / f"{task}.png") > 0, task
    high = np.asarray(Image.open(tmp_path / "out" / "superres_0_0.png")).astype(float).reshape(4, 2, 4, 2, 3)
    unclipped = ((high > 0) & (high < 255)).all(axis=(1, 3))               # the PNG clips to 0..255
    error = np.abs(high.mean(axis=(1, 3)) - np.asarray(Image.open(low)))[unclipped]
    assert unclipped.sum() >= 12 and error.max() <= 1.0                    # averages back, up to uint8 rounding


def test_bad_input_is_one_line(runs, tmp_path, capsys):
    rgb = write_png(tmp_path / "rgb.png", np.zeros((8, 8, 3)))
    gray = write_png(tmp_path / "gray.png", np.zeros((8, 8)))
    big = write_png(tmp_path / "big.png", np.zeros((16, 16, 3)))
    mask = write_png(tmp_path / "mask.png", np.zeros((5, 5)))
    cases = [
        (["inpaint", runs / "ct", "--input", rgb, "--mask", mask], ["mask", "5 x 5", "8 x 8"]),
        (["inpaint", runs / "ct", "--input", gray, "--box", "0,0,4,4"], ["1 channel", "RGB"]),
        (["inpaint", runs / "ct", "--input", big, "--box", "0,0,4,4"], ["16 x 16", "resize"]),
        (["inpaint", runs / "ct", "--input", rgb], ["--mask", "--box"]),
        (["inpaint", runs / "ct", "--input", rgb, "--box", "0,0,9,4"], ["does not fit"]),
        (["inpaint", runs / "ct", "--input", tmp_path / "nope.png", "--box", "0,0,4,4"], ["not found"]),
        (["denoise", runs / "ct", "--input", rgb, "--sigma", "500"], ["sigma", "range"]),
        (["stroke", runs / "ct", "--input", rgb, "--sigma", "0"], ["sigma", "range"]),
        (["superres", runs / "ct", "--input", rgb, "--factor", "3"], ["factor", "divide"]),
        (["denoise", runs / "ct"], ["--input", "--from-data"]),
        (["interpolate", runs / "ct", "--frames", "1"], ["frames"]),
        (["interpolate", runs / "ct", "--steps", "0"], ["--steps"]),
    ]
    for argv, phrases in cases:
        assert_one_line_error(edit(*argv), capsys, *phrases)


def test_colorization_needs_an_rgb_run(tmp_path, capsys):
    os.makedirs(tmp_path / "gray")
    for i in range(4):
        write_png(tmp_path / "gray" / f"{i}.png", np.full((8, 8), 40 * i))
    run = str(tmp_path / "ct")
    train(TrainConfig(method="ct", data="folder", data_kwargs={"root": str(tmp_path / "gray"), "resolution": 8},
                      net="unet", net_kwargs=NET, batch=4, steps=1), run, progress=False)
    code = edit("colorize", run, "--input", write_png(tmp_path / "g.png", np.zeros((8, 8))))
    assert_one_line_error(code, capsys, "RGB", "fashion-mnist-rgb")
