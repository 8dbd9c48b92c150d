"""fewstep compare (fewstep/compare.py): every registered method is compared or excused with a reason, the
teacher-call table, one-line errors, and `compare --fast` from the command line on the 2-D mixture and on
Fashion-MNIST with a subset of methods: rows for every method, the files, the header, and a second call
that reuses every run."""

import json
import math
import os
import sys
import time

import pytest
import torch

import fewstep.train

from fewstep.compare import METHOD_NAMES, NOT_COMPARED, teacher_calls
from fewstep.config import TrainConfig
from fewstep.errors import FewstepError, Interrupted
from fewstep.methods import METHODS
from fewstep.methods.trajectory import ConsistencyTrajectory

sys.path.insert(0, os.path.dirname(__file__))
from test_user_paths import FMNIST, assert_png, cli, ok, one_line_error  # noqa: E402


def test_every_registered_method_is_compared_or_excused():
    library = {name for name, m in METHODS.items() if m.__module__.startswith("fewstep.")}   # not tests' toy-two
    assert set(METHOD_NAMES) | set(NOT_COMPARED) == library, library ^ (set(METHOD_NAMES) | set(NOT_COMPARED))
    assert not set(METHOD_NAMES) & set(NOT_COMPARED)


@pytest.mark.parametrize("method, options, calls", [
    ("cd", {}, 2), ("cd", {"solver": "euler"}, 1), ("ct", {}, 0), ("ict", {}, 0), ("rf", {}, 0), ("pd", {"N0": 16}, 2),
    ("dmd", {}, 1), ("sds", {}, 1), ("add", {}, 1), ("kd", {}, 0), ("reflow", {}, 0), ("lcm", {"w_max": 0.0}, 1),
])
def test_teacher_calls_per_sample_and_step(method, options, calls):
    assert teacher_calls(TrainConfig(method=method, method_kwargs=options)) == calls


def test_teacher_calls_of_ctm_and_of_a_guided_teacher():
    ctm = ConsistencyTrajectory(None, max_solver_steps=1).teacher_calls()
    assert teacher_calls(TrainConfig(method="ctm", method_kwargs={"max_solver_steps": 1})) == ctm == 2.0
    assert teacher_calls(TrainConfig(method="cd", teacher_guidance=2.0)) == 4           # (w + 1) D_c - w D_u


def test_bad_method_is_one_line_and_writes_nothing(tmp_path):
    line = one_line_error(cli("compare", "--methods", "cd,nope", "--out", tmp_path / "c"), "nope", "teacher", "ctm", "lcm")
    assert "choose from" in line and not os.path.exists(tmp_path / "c")
    one_line_error(cli("compare", "--data", "3d", "--out", tmp_path / "c"), "3d", "2d, fmnist")
    one_line_error(cli("compare", "--seeds", "0,x", "--out", tmp_path / "c"), "--seeds")
    one_line_error(cli("compare", "--methods", "", "--out", tmp_path / "c"), "--methods")      # not "all methods"
    one_line_error(cli("compare", "--n", "3", "--out", tmp_path / "c"), "--n 3", "--n 10")
    assert not os.path.exists(tmp_path / "c")


def test_missing_fashion_mnist_says_make_data(tmp_path, monkeypatch):
    monkeypatch.setattr("fewstep.compare.FASHION_MNIST_ROOT", str(tmp_path / "nowhere"))
    one_line_error(cli("compare", "--data", "fmnist", "--fast", "--out", tmp_path / "c"), "make data", "--data 2d")
    assert not os.path.exists(tmp_path / "c")


def timed_compare(*args):
    t0 = time.perf_counter()
    result = ok(cli("compare", "--fast", *args))
    return result, time.perf_counter() - t0


def check_outputs(out, data, rows_by_method, metrics):
    """compare.json has the rows asked for with finite metrics and costs; compare.md its header and table."""
    report = json.load(open(os.path.join(out, "compare.json")))
    rows = report["datasets"][data]["rows"]
    got = {}
    for r in rows:
        got.setdefault(r["method"], []).append((r["sampler"], r["steps"]))
        values = [r[k][0] if isinstance(r[k], list) else r[k] for k in metrics + ("samples_per_s", "train_s", "peak_mb")]
        assert all(math.isfinite(v) and v >= 0 for v in values), r
        assert r["train_s"] > 0 and r["peak_mb"] > (0 if torch.cuda.is_available() else 50), r
        student = not r["method"].startswith("teacher") and r["method"] not in ("ct", "ict", "ct-continuous", "rf")
        assert (r["with_teacher_s"] > r["train_s"]) if student else (r["with_teacher_s"] == r["train_s"]), r
    assert got == rows_by_method, got
    text = open(os.path.join(out, "compare.md")).read()
    assert text.startswith("# fewstep compare\n\nCommand: `fewstep compare --data " + data), text[:200]
    assert "CPU cores" in text and "Budget rule: one EDM teacher trained 2B = 40 steps" in text
    assert ("torch.cuda.max_memory_allocated" if torch.cuda.is_available() else "peak resident set") in text
    assert "Not compared: " in text
    assert sum(line.startswith("|") for line in text.splitlines()) == 2 + len(rows)          # header, rule, rows
    return report


@pytest.mark.slow
def test_fast_2d_compare_then_reuse(tmp_path):
    out = str(tmp_path / "c")
    first, seconds = timed_compare("--data", "2d", "--methods", "cd,kd", "--out", out)
    for name in ("teacher", "cd", "kd"):
        assert f"[compare] 2d seed 0 {name}: trained" in first.stderr, first.stderr
    few = [(s, k) for s in ("consistency",) for k in (1, 2, 4, 8)]
    check_outputs(out, "2d", {"teacher (edm)": [("heun", 18)] + [("euler", k) for k in (1, 2, 4, 8)] + [("ddpm", 18)],
                              "cd": few, "kd": [("consistency", 1)]},
                  ("swd", "modes_hit", "weight_tv"))
    assert_png(os.path.join(out, "2d_samples.png"))
    again, seconds_again = timed_compare("--data", "2d", "--methods", "cd,kd", "--out", out)
    assert "[compare] 0 run(s) trained, 3 reused" in again.stderr, again.stderr
    assert " trained (" not in again.stderr and "pairs-" not in again.stderr, again.stderr
    assert seconds_again < seconds / 2, (seconds, seconds_again)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="needs dataset-fashion-mnist (make data)")
def test_fast_fmnist_compare_then_reuse(tmp_path):
    out = str(tmp_path / "c")
    first, seconds = timed_compare("--data", "fmnist", "--methods", "add", "--n", "50", "--out", out)
    report = check_outputs(out, "fmnist", {"teacher (edm)": [("heun", 18)] + [("euler", k) for k in (1, 2, 4, 8)]
                                           + [("ddpm", 18)], "add": [("consistency", k) for k in (1, 2, 4)]},
                           ("fd", "precision", "recall"))
    assert report["datasets"]["fmnist"]["rows"][-1]["teacher_calls"] == 1
    for name in ("fmnist_samples.png", "fmnist_fd_vs_nfe.png"):
        assert_png(os.path.join(out, name))
    again, seconds_again = timed_compare("--data", "fmnist", "--methods", "add", "--n", "50", "--out", out)
    assert "[compare] 0 run(s) trained, 2 reused" in again.stderr, again.stderr
    assert seconds_again < seconds / 2, (seconds, seconds_again)


def test_an_interrupted_run_resumes_and_its_seconds_are_scaled(tmp_path, monkeypatch):
    """A teacher stopped at step 10 of 40 is resumed by compare's child process, not retrained; its seconds
    are the finishing call's times 40 / 30, and compare.json records where it resumed."""
    from fewstep.compare import base_config, config_of, make_settings, plan, train_runs
    from fewstep.train import train
    s = make_settings(fast=True)
    base, runs = base_config("2d", s), plan("2d", s)
    cfg = config_of(runs["teacher"], base, 0, None)
    real_step = fewstep.train.train_step

    def ctrl_c_at_step_10(state):
        if state.k == 10:                       # the checkpoint of step 10 is written (ckpt_every 5)
            raise KeyboardInterrupt
        return real_step(state)
    monkeypatch.setattr(fewstep.train, "train_step", ctrl_c_at_step_10)
    with pytest.raises(Interrupted, match="interrupted at step 10"):
        train(cfg, str(tmp_path / "teacher"), progress=False)
    monkeypatch.undo()
    lines = []
    done = train_runs(str(tmp_path), base, runs, ["teacher"], 0, "[t]", lines.append)
    assert done["teacher"]["resumed_at"] == 10 and not done["teacher"]["reused"], done
    assert "resumed at step 10: scaled" in lines[0], lines
    record = json.load(open(tmp_path / "teacher" / "compare_run.json"))
    raw = json.load(open(tmp_path / "logs" / "teacher.result.json"))["seconds"]          # the child's own clock
    assert record["resumed_at"] == 10 and record["seconds"] == pytest.approx(raw * 40 / 30) and raw > 0

    # a run that finished but lost its record is not retrained: its seconds are the ones metrics.jsonl logged
    os.remove(tmp_path / "teacher" / "compare_run.json")
    again = train_runs(str(tmp_path), base, runs, ["teacher"], 0, "[t]", lines.append)["teacher"]
    log = [json.loads(line) for line in open(tmp_path / "teacher" / "metrics.jsonl")]     # every 2 steps, k rising
    assert [r["k"] for r in log] == list(range(2, 42, 2)), [r["k"] for r in log]
    logged = sum(2 * r["sec_per_step"] for r in log)
    assert again["resumed_at"] == 40 and again["seconds"] == pytest.approx(logged) and 0 < logged < 60, again
    record = json.load(open(tmp_path / "teacher" / "compare_run.json"))
    # a later call with another budget does not continue this teacher to its own steps: one line, nothing trained
    with pytest.raises(FewstepError, match="another compare call .steps differ.; pass a new --out"):
        other = make_settings(fast=True, budget=10)
        train_runs(str(tmp_path), base_config("2d", other), plan("2d", other), ["teacher"], 0, "[t]", lines.append)
    assert json.load(open(tmp_path / "teacher" / "compare_run.json")) == record


def test_rows_over_seeds_are_mean_and_sample_sd_and_the_table_shows_them():
    from fewstep.compare import summary, table_2d
    costs = {"sampler": "consistency", "nfe": 1, "teacher_calls": 2.0}
    rs = [{**costs, "swd": 0.1, "modes_hit": 1.0, "weight_tv": 0.1, "off_mode": 0.0, "samples_per_s": 100.0,
           "train_s": 10.0, "with_teacher_s": 30.0, "peak_mb": 300.0},
          {**costs, "swd": 0.3, "modes_hit": 0.5, "weight_tv": 0.2, "off_mode": 0.5, "samples_per_s": 300.0,
           "train_s": 20.0, "with_teacher_s": 50.0, "peak_mb": 400.0}]
    row = summary("cd", 1, rs)
    assert row["swd"] == pytest.approx([0.2, math.sqrt(0.02)]) and row["modes_hit"] == pytest.approx([0.75, 0.5 ** 0.5 / 2])
    assert row["off_mode"] == pytest.approx([0.25, math.sqrt(0.125)])
    assert (row["train_s"], row["with_teacher_s"], row["samples_per_s"], row["peak_mb"]) == (15.0, 40.0, 200.0, 400.0)
    assert row["seeds"] == 2 and row["teacher_calls"] == 2.0
    line = table_2d([row]).splitlines()[-1]
    assert line == ("| cd | consistency | 1 | 1 | 0.200 ± 0.141 | 0.75 ± 0.35 | 0.150 ± 0.071 | 0.25 ± 0.35 | "
                    "200 | 15.0 | 40.0 | 2.0 | 400 |"), line
