"""The contract every registered training method keeps (and the toy two-network fixture of
tests/toy_methods.py): finite losses, gradients only in the declared groups, a save/restore in the
middle equal to an uninterrupted run bit for bit, two gloo processes equal to one, and its trained
model sampled by every sampler its kind allows. Registering a method in fewstep.methods.METHODS puts
it under this suite; a new method with needs beyond 2-D data and a teacher adds a line to SETUPS."""

import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.checkpoint import load_checkpoint
from fewstep.config import TrainConfig
from fewstep.generate import generate, run_kind
from fewstep.methods import DISTILLATION, METHODS
from fewstep.runs import load_model
from fewstep.train import build_state, train, update_group

sys.path.insert(0, os.path.dirname(__file__))
import toy_methods  # noqa: E402
from test_distributed import _launch_ranks  # noqa: E402

toy_methods.register()
TINY = dict(steps=4, batch=16, streams=2, ckpt_every=2, log_every=1, net_kwargs={"width": 16, "depth": 1})
SETUPS = {      # what a method needs beyond TINY on the 2-D mixture
    "ct": dict(method_kwargs={"s1": 4, "K": 4}), "ict": dict(method_kwargs={"s0": 2, "s1": 8, "K": 4}),
    **{m: dict(method_kwargs={"pairs": 64, "pair_steps": 2}) for m in ("kd", "reflow", "dmd")},
    "pd": dict(method_kwargs={"N": 2, "N0": 4}),
    "lcm": dict(method_kwargs={"k": 100, "w_max": 0.0}, teacher_process="vp"),
    "lcm-lora": dict(method_kwargs={"k": 100, "w": 0.0, "rank": 2}, teacher_process="vp"),
    "lora": dict(method_kwargs={"rank": 2}, teacher_process="vp"),
    "classifier": dict(data="folder", net="classifier", cond=True, data_kwargs={"resolution": 8},
                       net_kwargs={"channels": [8, 8], "feature_dim": 8}),
    "vae": dict(data="folder", net="autoencoder", data_kwargs={"resolution": 8}, net_kwargs={"channels": [4, 4]}),
}
NAMES = sorted(METHODS)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """Teacher runs by process: EDM (VE) for most methods, DDPM (VP, eps-prediction) for LCM."""
    runs = {}
    for process, method in (("ve", "edm"), ("vp", "ddpm")):
        runs[process] = str(tmp_path_factory.mktemp("contract") / method)
        train(TrainConfig(method=method, **{**TINY, "streams": 1}), runs[process], progress=False)
    return runs


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A labelled image folder: 2 classes x 6 gray 8 x 8 pictures."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        os.makedirs(root / c)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(root / c / f"{i}.png")
    return str(root)


def config(name, teacher, pictures, **over):
    if name in ("lcm-lora", "lora"):
        pytest.importorskip("peft", reason="LoRA adapters need peft (pip install 'fewstep[lora]')")
    setup = {**TINY, **SETUPS.get(name, {}), **over}
    process = setup.pop("teacher_process", "ve")
    if name in DISTILLATION:
        setup["teacher"] = teacher[process]
    if setup.get("data") == "folder":
        setup["data_kwargs"] = {**setup["data_kwargs"], "root": pictures}
    return TrainConfig(method=name, **setup)


def tensors(run):
    return load_checkpoint(os.path.join(run, "checkpoint.safetensors"))


@pytest.mark.parametrize("name", NAMES)
def test_losses_are_finite_and_gradients_stay_in_their_group(name, teacher, pictures):
    state = build_state(config(name, teacher, pictures))
    for group in state.method.groups:
        loss = update_group(state, group)
        assert np.isfinite(loss), (group, loss)
        mine = set(map(id, state.params[group]))
        assert all(p.grad is not None for p in state.params[group] if p.requires_grad), group
        others = [p for p in state.trained_parameters() if id(p) not in mine]
        assert all(p.grad is None for p in others), f"group {group!r} put gradients into another group's parameters"


@pytest.mark.parametrize("name", NAMES)
def test_a_resumed_run_equals_an_uninterrupted_one(name, teacher, pictures, tmp_path):
    whole, halves = str(tmp_path / "whole"), str(tmp_path / "halves")
    train(config(name, teacher, pictures), whole, progress=False)
    train(config(name, teacher, pictures, steps=2), halves, progress=False)
    train(config(name, teacher, pictures), halves, resume=True, progress=False)
    (a, meta_a), (b, meta_b) = tensors(whole), tensors(halves)
    assert meta_a["k"] == meta_b["k"] == 4 and sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    groups = METHODS[name].groups
    assert sorted(meta_a["optimizers"]) == sorted(groups)
    for group in groups:                    # every group's optimizer state and every named module were saved
        assert any(k.startswith(f"optim.{group}.") for k in a), group




# One launch per world size trains every method in turn through the CLI's train command: a launch per method
# cost the suite two minutes of interpreter and process-group start-up.
GLOO_RUNNER = ("import json, sys, toy_methods; toy_methods.register(); from fewstep.cli import build_parser, _close\n"
               "for argv in json.load(open(sys.argv[1])):\n"
               "    args = build_parser().parse_args(argv); args.func(args)\n"
               "sys.exit(_close(0))")


@pytest.fixture(scope="module")
def gloo_runs(teacher, pictures, tmp_path_factory):
    """world -> {name: the run's folder}, every method trained by 1 and by 2 gloo processes."""
    root = tmp_path_factory.mktemp("gloo")
    runs, jobs = {1: {}, 2: {}}, {1: [], 2: []}
    for name in NAMES:
        try:
            cfg = config(name, teacher, pictures)
        except pytest.skip.Exception:          # LoRA methods without peft: their tests skip on their own
            continue
        with open(root / f"{name}.json", "w") as f:
            f.write(__import__("json").dumps({k: v for k, v in cfg.flat().items() if k != "method"}))
        for world in (1, 2):
            runs[world][name] = str(root / f"world{world}" / name)
            jobs[world].append(["train", name, "--config", str(root / f"{name}.json"), "--quiet",
                                "--out", runs[world][name]])
    for world in (1, 2):        # both as subprocesses: one thread each, so the numbers are comparable
        with open(root / f"jobs{world}.json", "w") as f:
            f.write(__import__("json").dumps(jobs[world]))
        argv = ["-c", GLOO_RUNNER, str(root / f"jobs{world}.json")]
        codes = _launch_ranks(world, argv, timeout=600, extra_path=os.path.dirname(__file__))
        if any(code == -6 and "terminate called" in err for code, err in codes):   # gloo's teardown race: once more
            shutil.rmtree(root / f"world{world}", ignore_errors=True)
            codes = _launch_ranks(world, argv, timeout=600, extra_path=os.path.dirname(__file__))
        assert all(code == 0 for code, _ in codes), codes
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_two_gloo_processes_equal_one(name, teacher, pictures, gloo_runs):
    config(name, teacher, pictures)             # skips a LoRA method without peft
    (one, _), (two, meta) = tensors(gloo_runs[1][name]), tensors(gloo_runs[2][name])
    assert meta["world"] == 2
    assert sorted(one) == sorted(two)
    for key in one:
        if key != "rng.torch":                  # the global RNG only seeds initialisation
            torch.testing.assert_close(one[key], two[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_every_sampler_of_its_kind_samples_the_trained_run(name, teacher, pictures, tmp_path):
    run = str(tmp_path / "run")
    train(config(name, teacher, pictures, steps=2), run, progress=False)
    model, cfg = load_model(run)
    kind = run_kind(cfg)
    assert model.kind is kind
    for sampler in kind.samplers:
        x, nfe = generate(model, cfg, 8, 2, sampler=sampler, generator=torch.Generator().manual_seed(0))
        assert x.shape == (8, 2) and torch.isfinite(x).all() and nfe >= 1, sampler


def test_a_group_can_train_a_parameter_subset(teacher, pictures, monkeypatch):
    # adapters (LCM-LoRA): only the parameters matching the group's glob move; the rest stay frozen
    from fewstep.methods.base import Group
    from fewstep.methods.diffusion import EDMLoss

    class OutputLayerOnly(EDMLoss):
        groups = {"net": Group(params="net.out.*")}

    monkeypatch.setitem(METHODS, "edm-out", OutputLayerOnly)
    state = build_state(config("edm-out", teacher, pictures, streams=1))
    before = {k: v.clone() for k, v in state.net.state_dict().items()}
    for _ in range(2):
        update_group(state, "net")
    moved = sorted(k for k, v in state.net.state_dict().items() if not torch.equal(v, before[k]))
    assert moved == ["net.out.bias", "net.out.weight"]
    assert len(state.params["net"]) == 2
