"""The distillation families' user paths end to end at a tiny budget: `fewstep train kd|pd|rf|reflow|dmd|sds|add`,
then `sample` and `eval` on what they made, on the 2-D mixture and on Fashion-MNIST, unconditional and
class-conditional, from the command line (one real subprocess, the rest through `fewstep.cli.main` in this
process) and from Python; reflow of a flow and KD of a flow; every bad option in one line."""

import json
import os

import pytest
import torch

from fewstep.config import TrainConfig
from fewstep.runs import load_model
from test_user_paths import FMNIST, cli, fewstep, needs_fmnist, ok, one_line_error, read_json

pytestmark = pytest.mark.slow

TOY = ["--data", "gmm", "--set", "data.weights=[1,2,3,4,5,6,7,8]", "--set", "net.width=32", "--set", "net.depth=1",
       "--batch", "64", "--quiet"]
PAIRS = ["--set", "pairs=32", "--set", "pair_steps=2"]
METHODS = {             # method -> its options at a tiny budget
    "kd": PAIRS, "pd": ["--set", "N0=4"], "rf": [], "reflow": PAIRS, "dmd": PAIRS,
    "dmd2": ["--set", "reg_weight=0", "--set", "fake_updates=2", "--set", "gan_weight=0.5"],
    "sds": [], "sds-batch": ["--set", "estimator=batch"], "add": [], "ctm": ["--set", "N=6"],
}


def method_of(name):
    return {"dmd2": "dmd", "sds-batch": "sds"}.get(name, name)


def sampled(run, name):
    """The run a user samples: the last round of a PD lineage."""
    return os.path.join(run, "steps-1") if name == "pd" else run


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory):
    run = tmp_path_factory.mktemp("toy") / "teacher"
    ok(cli("train", "edm", *TOY, "--steps", "20", "--out", run))
    return run


@pytest.mark.parametrize("name", list(METHODS))
def test_toy_train_and_sample(name, toy_teacher, tmp_path):
    run = tmp_path / name
    teacher = [] if name == "rf" else ["--teacher", toy_teacher]
    ok(cli("train", method_of(name), *teacher, *TOY, *METHODS[name], "--steps", "4", "--out", run))
    rows = read_json(os.path.join(ok(cli("sample", sampled(run, name), "--steps", "1", "--n", "200",
                                         "--out", tmp_path / "s")) and tmp_path / "s", "metrics.json"))
    assert rows[0]["nfe"] == 1 and 0 < rows[0]["sliced_w2"] < 10
    if name in ("kd", "reflow", "dmd"):         # pairs cached beside the teacher, reused by the next run
        assert len(os.listdir(os.path.join(toy_teacher, "pairs"))) == 1


def test_pd_runs_every_round_and_resumes(toy_teacher, tmp_path):
    out = tmp_path / "pd"
    args = ("train", "pd", "--teacher", toy_teacher, *TOY, "--set", "N0=8", "--steps", "3", "--out", out)
    ok(cli(*args))
    lineage = read_json(os.path.join(out, "lineage.json"))
    assert [r["steps"] for r in lineage["rounds"]] == [4, 2, 1]
    assert lineage["rounds"][0]["teacher"] == str(toy_teacher)
    assert lineage["rounds"][2]["teacher"] == os.path.abspath(out / "steps-2")     # each round taught by the last
    for r in lineage["rounds"]:
        cfg = read_json(os.path.join(r["run"], "config.json"))
        assert cfg["method"]["options"]["N"] == r["steps"] and cfg["method"]["teacher"] == r["teacher"]
    before = os.path.getmtime(out / "steps-1" / "checkpoint.safetensors")
    ok(cli(*args, "--resume"))                           # every round finished: nothing is retrained
    assert os.path.getmtime(out / "steps-1" / "checkpoint.safetensors") == before
    ok(cli("sample", out / "steps-4", "--steps", "4,2,1", "--n", "50", "--out", tmp_path / "s"))
    one_line_error(cli("sample", out / "steps-4", "--steps", "3", "--n", "50", "--out", tmp_path / "t"),
                   "grid of 4 steps")
    assert not os.path.exists(tmp_path / "t")
    one_line_error(cli("sample", out, "--steps", "1"), "rounds of progressive distillation", "steps-1")
    one_line_error(cli(*args), "already holds a trained run")


def test_reflow_of_a_flow_and_kd_of_a_flow(toy_teacher, tmp_path):
    ok(cli("train", "rf", *TOY, "--steps", "4", "--out", tmp_path / "rf"))
    ok(cli("train", "reflow", "--teacher", tmp_path / "rf", *TOY, *PAIRS, "--steps", "3", "--out", tmp_path / "rf2"))
    ok(cli("train", "kd", "--teacher", tmp_path / "rf2", *TOY, *PAIRS, "--steps", "3", "--out", tmp_path / "kd"))
    model, cfg = load_model(tmp_path / "rf2")
    assert model.process.name == "flow" and cfg.teacher == str(tmp_path / "rf")
    name = os.listdir(tmp_path / "rf2" / "pairs")[0]
    assert name.startswith("euler2-n32")                 # a flow's pairs: its own Euler


def test_python_api(toy_teacher, tmp_path):
    from fewstep.generate import generate
    from fewstep.rounds import train_progressive
    from fewstep.train import train
    base = dict(data="gmm", data_kwargs={"weights": list(range(1, 9))}, net_kwargs={"width": 32, "depth": 1},
                batch=64, steps=3)
    state = train(TrainConfig(method="dmd", teacher=str(toy_teacher), method_kwargs={"pairs": 32, "pair_steps": 2},
                              **base), str(tmp_path / "dmd"), progress=False)
    assert sorted(state.optimizers) == ["fake", "net"]
    state = train_progressive(TrainConfig(method="pd", teacher=str(toy_teacher), method_kwargs={"N0": 4}, **base),
                              str(tmp_path / "pd"), progress=False)
    assert state.method.N == 1
    model, cfg = load_model(str(tmp_path / "pd" / "steps-1"))
    x, nfe = generate(model, cfg, 10, 1, generator=torch.Generator().manual_seed(0))
    assert x.shape == (10, 2) and nfe == 1 and torch.isfinite(x).all()


@pytest.mark.parametrize("args, phrases", [
    (["kd", "--set", "pairs=0"], ["pairs must be a positive integer"]),
    (["pd", "--set", "N=3"], ["N0 / N must be a power of two"]),
    (["pd", "--set", "N0=12"], ["N0 must be a power of two"]),
    (["sds", "--set", "estimator=mean"], ["unknown SDS estimator"]),
    (["dmd", "--set", "t_min=0.9", "--set", "t_max=0.1"], ["t_min"]),
    (["dmd", "--set", "fake_updates=0"], ["fake_updates must be a positive integer"]),
    (["add", "--set", "levels=0"], ["levels"]),
    (["kd", "--set", "pair_sampler=rk4"], ["unknown pair sampler"]),
])
def test_bad_options_are_one_line(args, phrases, toy_teacher, tmp_path):
    one_line_error(cli("train", args[0], "--teacher", toy_teacher, *TOY, *args[1:], "--steps", "2",
                       "--out", tmp_path / "run"), *phrases)
    assert not os.path.exists(tmp_path / "run")


def test_a_distillation_without_teacher_is_one_line(tmp_path):
    for method in ("kd", "pd", "reflow", "dmd", "sds", "add", "ctm"):
        line = one_line_error(cli("train", method, *TOY, "--out", tmp_path / method), "--teacher")
        assert f"method {method!r} distills a teacher" in line, line
        assert not os.path.exists(tmp_path / method)          # nothing written

#----------------------------------------------------------------------------
# Fashion-MNIST, unconditional (the paths that broke before) and class-conditional.

IMAGES = ["--data", "fashion-mnist", "--net", "unet", "--batch", "8", "--steps", "2", "--quiet"]
VARIANTS = {"unconditional": [], "conditional": ["--set", "cond=true", "--set", "label_dropout=0.1"]}


@pytest.fixture(scope="module", params=list(VARIANTS))
def fm_teacher(request, tmp_path_factory):
    if not os.path.isdir(FMNIST):
        pytest.skip("needs dataset-fashion-mnist (make data)")
    run = tmp_path_factory.mktemp(f"fm_{request.param}") / "teacher"
    ok(cli("train", "edm", *IMAGES, *VARIANTS[request.param], "--out", run))
    return run, request.param


@needs_fmnist
@pytest.mark.parametrize("name", ["kd", "pd", "reflow", "dmd2", "sds-batch", "add", "ctm"])
def test_fmnist_train_sample_eval(name, fm_teacher, tmp_path):
    teacher, variant = fm_teacher
    if variant == "conditional" and name not in ("kd", "sds-batch", "ctm"):     # labels through pairs, the
        pytest.skip("the conditional variant runs for kd, sds-batch and ctm (pairs, estimator, trajectory)")
    run, options = tmp_path / name, METHODS[name]
    train = fewstep if (variant, name) == ("unconditional", "kd") else cli         # one real subprocess
    ok(train("train", method_of(name), "--teacher", teacher, *IMAGES, *VARIANTS[variant], *options, "--out", run))
    target = sampled(run, name)
    ok(cli("sample", target, "--steps", "1", "--n", "4", "--out", tmp_path / "s"))
    assert os.path.isfile(tmp_path / "s" / "samples_1steps.png")
    ok(cli("eval", target, "--steps", "1", "--n", "20", "--out", tmp_path / "e", "--quiet"))
    rows = json.load(open(tmp_path / "e" / "metrics.json"))
    assert rows[0]["nfe"] == 1 and rows[0]["fd"] > 0


def test_ctm_gamma_sampling_and_its_denoiser(toy_teacher, tmp_path):
    run = tmp_path / "ctm"
    ok(cli("train", "ctm", "--teacher", toy_teacher, *TOY, "--set", "N=6", "--set", "gan_weight=0.5", "--steps", "3",
           "--out", run))
    cfg = read_json(os.path.join(run, "config.json"))
    assert cfg["network"]["options"]["scalars"] == ["s"]         # the student's network embeds s
    for gamma in ("0", "0.5", "1"):
        ok(cli("sample", run, "--steps", "1,2", "--gamma", gamma, "--n", "100", "--out", tmp_path / f"g{gamma}"))
    ok(cli("sample", run, "--steps", "5", "--sampler", "heun", "--n", "100", "--out", tmp_path / "heun"))
    ok(cli("sample", run, "--tau", "80,1", "--n", "100", "--out", tmp_path / "tau"))
    with pytest.raises(SystemExit, match="2"):                      # argparse's own one-line error
        cli("sample", run, "--gamma", "2", "--n", "10")
    a = torch.load(os.path.join(tmp_path, "g0", "steps2.pt"))
    b = torch.load(os.path.join(tmp_path, "g1", "steps2.pt"))
    assert not torch.equal(a, b)                                    # gamma changes the multistep path


@needs_fmnist
def test_fmnist_edit_with_a_ctm_run(fm_teacher, tmp_path):
    teacher, variant = fm_teacher
    run = tmp_path / "ctm"
    ok(cli("train", "ctm", "--teacher", teacher, *IMAGES, *VARIANTS[variant], "--set", "N=6", "--out", run))
    label = ["--label", "3"] if variant == "conditional" else []
    ok(cli("edit", "inpaint", run, "--from-data", "2", "--box", "7,7,21,21", *label, "--out", tmp_path / "e"))
    assert os.path.isfile(tmp_path / "e" / "inpaint.png")
    ok(cli("eval", run, "--steps", "2", "--gamma", "1", "--n", "20", "--out", tmp_path / "ev", "--quiet"))


def test_a_ctm_run_as_a_teacher(toy_teacher, tmp_path):
    ok(cli("train", "ctm", "--teacher", toy_teacher, *TOY, "--set", "N=6", "--steps", "2", "--out", tmp_path / "ctm"))
    one_line_error(cli("train", "cd", "--teacher", tmp_path / "ctm", *TOY, "--steps", "2", "--out", tmp_path / "cd"),
                   "embeds ['s']", "init_from_teacher=false")
    assert not os.path.exists(tmp_path / "cd")
    ok(cli("train", "kd", "--teacher", tmp_path / "ctm", *TOY, *PAIRS, "--set", "init_from_teacher=false",
           "--steps", "2", "--out", tmp_path / "kd"))          # its g(x, t, t) teaches like a denoiser
    one_line_error(cli("train", "ctm", "--teacher", toy_teacher, *TOY, "--set", "net.scalars=[]", "--steps", "2",
                       "--out", tmp_path / "bad"), "needs its network to embed ['s']")
    one_line_error(cli("sample", toy_teacher, "--gamma", "0.5", "--steps", "2"), "--gamma", "gamma-sampling")
    record = read_json(os.path.join(tmp_path, "ctm", "config.json"))
    assert record["network"]["options"]["scalars"] == ["s"]
