"""Checkpoints: bit-exact round trip, resume == uninterrupted, and nothing lost on failure."""

import json
import os

import pytest
import torch

import fewstep.train as train_module
from fewstep.checkpoint import load_checkpoint
from fewstep.config import TrainConfig
from fewstep.errors import FewstepError
from fewstep.methods import ConsistencyTraining
from fewstep.runs import CHECKPOINT, load_model
from fewstep.train import build_state, restore, save, train


def _cfg(**kw):
    # CT exercises the EMA target and mu(k); dropout exercises the streams' dropout RNG.
    base = dict(method="ct", steps=20, batch=64, ckpt_every=5, log_every=5,
                net_kwargs={"width": 16, "depth": 1, "dropout": 0.1})
    return TrainConfig(**{**base, **kw})


def _tensors(run):
    return load_checkpoint(os.path.join(run, CHECKPOINT))[0]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_round_trip_is_bit_exact(tmp_path):
    state = train(_cfg(), str(tmp_path / "a"), progress=False)
    fresh = build_state(_cfg().resolved())
    restore(fresh, str(tmp_path / "a" / CHECKPOINT))
    save(fresh, str(tmp_path / "copy.safetensors"))
    _assert_same(_tensors(str(tmp_path / "a")), load_checkpoint(str(tmp_path / "copy.safetensors"))[0])
    assert fresh.k == state.k == 20
    for p, q in zip(state.net.parameters(), fresh.net.parameters()):
        assert torch.equal(p, q)


def _train_interrupted_at(k_stop, cfg, run, monkeypatch):
    """Train until step k_stop raises KeyboardInterrupt (as Ctrl-C would), then restore train_step."""
    real_step = train_module.train_step

    def interrupted(state):
        if state.k == k_stop:
            raise KeyboardInterrupt
        return real_step(state)

    monkeypatch.setattr(train_module, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, progress=False)
    monkeypatch.setattr(train_module, "train_step", real_step)


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    train(_cfg(), str(tmp_path / "whole"), progress=False)
    _train_interrupted_at(12, _cfg(), str(tmp_path / "parts"), monkeypatch)
    assert load_checkpoint(str(tmp_path / "parts" / CHECKPOINT))[1]["k"] == 10       # last checkpoint kept
    train(_cfg(), str(tmp_path / "parts"), resume=True, progress=False)
    _assert_same(_tensors(str(tmp_path / "whole")), _tensors(str(tmp_path / "parts")))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_call = ConsistencyTraining.__call__

    def poisoned(self, net, batch, **kw):
        loss = real_call(self, net, batch, **kw)
        return loss * float("nan") if kw["k"] >= 7 else loss

    monkeypatch.setattr(ConsistencyTraining, "__call__", poisoned)
    run = str(tmp_path / "nan")
    with pytest.raises(FewstepError, match=r"loss is NaN at step 8; lower .*--lr.*check the data.*"
                                           r"last good checkpoint \(step 5\) is kept"):
        train(_cfg(), run, progress=False)
    tensors, meta = load_checkpoint(os.path.join(run, CHECKPOINT))
    assert meta["k"] == 5 and all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())
    assert [f for f in os.listdir(run) if f.startswith(".tmp")] == []


def test_nan_loss_before_the_first_checkpoint_says_so(tmp_path, monkeypatch):
    real_call = ConsistencyTraining.__call__
    monkeypatch.setattr(ConsistencyTraining, "__call__", lambda *a, **kw: real_call(*a, **kw) * float("inf"))
    with pytest.raises(FewstepError, match="loss is infinite at step 1;.*no checkpoint was written yet"):
        train(_cfg(), str(tmp_path / "inf"), progress=False)


def test_an_existing_run_is_never_overwritten(tmp_path):
    run = str(tmp_path / "r")
    train(_cfg(steps=5), run, progress=False)
    before = open(os.path.join(run, CHECKPOINT), "rb").read()
    with pytest.raises(FewstepError, match="already holds a trained run; continue it with: fewstep resume"):
        train(_cfg(steps=5), run, progress=False)
    with pytest.raises(FewstepError, match="different config.*lr"):
        train(_cfg(steps=10, lr=0.5), run, resume=True, progress=False)
    assert open(os.path.join(run, CHECKPOINT), "rb").read() == before


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_or_truncated_checkpoint_is_one_clear_error(tmp_path, damage):
    run = str(tmp_path / "r")
    train(_cfg(steps=5), run, progress=False)
    path = os.path.join(run, CHECKPOINT)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10, "empty": b""}[damage])
    with pytest.raises(FewstepError, match="corrupt or truncated"):
        load_model(run)


def test_checkpoint_that_does_not_match_the_network(tmp_path):
    run = str(tmp_path / "r")
    train(_cfg(steps=5), run, progress=False)
    cfg_path = os.path.join(run, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["network"]["options"]["width"] = 32
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(FewstepError, match="trained with another config than .*config.json \\(net_kwargs differ\\)"):
        load_model(run)


def test_missing_checkpoint_and_run(tmp_path):
    with pytest.raises(FewstepError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FewstepError, match="not found"):
        load_model(str(tmp_path / "empty"))


def test_extending_steps_on_resume_keeps_the_curriculum(tmp_path):
    run = str(tmp_path / "r")
    train(_cfg(steps=10), run, progress=False)
    state = train(_cfg(steps=20), run, resume=True, progress=False)
    assert state.k == 20 and state.method.K == 10                 # N(k), mu(k) keep the K the run began with
    assert json.load(open(os.path.join(run, "config.json")))["method"]["options"]["K"] == 10
    ks = [json.loads(line)["k"] for line in open(os.path.join(run, "metrics.jsonl"))]
    assert ks == sorted(set(ks)) and ks[-1] == 20


def test_metrics_are_not_duplicated_after_an_interrupted_run(tmp_path, monkeypatch):
    _train_interrupted_at(17, _cfg(log_every=1), str(tmp_path / "r"), monkeypatch)
    train(_cfg(log_every=1), str(tmp_path / "r"), resume=True, progress=False)
    ks = [json.loads(line)["k"] for line in open(tmp_path / "r" / "metrics.jsonl")]
    assert ks == list(range(1, 21))


def test_non_finite_weights_are_never_saved(tmp_path):
    run = str(tmp_path / "r")
    state = train(_cfg(steps=5), run, progress=False)
    before = open(os.path.join(run, CHECKPOINT), "rb").read()
    with torch.no_grad():
        next(state.net.parameters()).fill_(float("inf"))
    with pytest.raises(FewstepError, match=r"NaN/inf by step 5.*--lr.*last good checkpoint \(step 5\) is kept"):
        save(state, os.path.join(run, CHECKPOINT))
    assert open(os.path.join(run, CHECKPOINT), "rb").read() == before


def test_a_format_1_checkpoint_still_loads_and_resumes_exactly(tmp_path):
    # runs written before the method protocol had one optimizer, stored as "optim.<i>.<name>"
    from safetensors.torch import save_file

    from fewstep.checkpoint import FORMAT_1
    whole, old = str(tmp_path / "whole"), str(tmp_path / "old")
    train(_cfg(steps=6, method_kwargs={"K": 6}), whole, progress=False)
    train(_cfg(steps=3, method_kwargs={"K": 6}), old, progress=False)
    path = os.path.join(old, CHECKPOINT)
    tensors, meta = load_checkpoint(path)
    tensors = {("optim." + k[len("optim.net."):] if k.startswith("optim.net.") else k): v for k, v in tensors.items()}
    meta["optimizer"] = meta.pop("optimizers")["net"]
    save_file(tensors, path, metadata={"format": FORMAT_1, "meta": json.dumps(meta)})
    load_model(old)
    train(_cfg(steps=6, method_kwargs={"K": 6}), old, resume=True, progress=False)
    a, _ = load_checkpoint(os.path.join(whole, CHECKPOINT))
    b, meta = load_checkpoint(os.path.join(old, CHECKPOINT))
    assert meta["k"] == 6 and sorted(meta["optimizers"]) == ["net"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_config_json_has_sections_and_a_flat_config_json_still_loads(tmp_path):
    run = str(tmp_path / "r")
    train(_cfg(steps=2), run, progress=False)
    path = os.path.join(run, "config.json")
    sections = json.load(open(path))
    assert sorted(sections) == ["data", "method", "network", "optimizer", "process", "run"]
    assert sections["method"]["options"]["s1"] == 150 and sections["process"]["sigma_max"] == 80.0
    cfg = TrainConfig.from_dict(sections)
    json.dump(cfg.flat(), open(path, "w"))                 # the layout of runs written before sections
    model, flat = load_model(run)
    assert flat == cfg
    sections["method"]["colour"] = "blue"
    with pytest.raises(FewstepError, match="unknown key 'colour' in config section 'method'"):
        TrainConfig.from_dict(sections)


def test_a_unet_run_of_the_previous_release_keeps_its_network(tmp_path):
    # fewstep 0.1 wrote flat config.json files, and `--net unet` without net.config meant UNet's defaults
    from fewstep.runs import build_model
    old = TrainConfig(method="edm", data="folder", net="unet", data_kwargs={"root": str(tmp_path), "resolution": 8},
                      net_kwargs={"channel_mult": [1, 2]}, batch=8).flat()
    for field in ("optimizer", "betas", "weight_decay", "lr_warmup", "lr_decay", "lr_decay_steps"):
        del old[field]
    cfg = TrainConfig.from_run(old)
    assert TrainConfig.from_dict(old).net_kwargs == {"channel_mult": [1, 2]}      # Python dicts are taken as they are
    assert cfg.net_kwargs == {"channel_mult": [1, 2], "config": "base"}
    assert cfg.resolved().net_kwargs["config"] == "base"
    from PIL import Image
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    assert build_model(cfg).net.enc["8x8_block0"].conv0.out_channels == 64      # UNet's default width, not cpu-tiny's 16


def test_a_cosine_schedule_resumes_exactly_and_keeps_its_length(tmp_path):
    whole, halves = str(tmp_path / "whole"), str(tmp_path / "halves")
    cosine = dict(lr_decay="cosine", method_kwargs={"K": 8})
    train(_cfg(steps=8, **cosine), whole, progress=False)
    train(_cfg(steps=4, lr_decay_steps=8, **cosine), halves, progress=False)
    train(_cfg(steps=8, **cosine), halves, resume=True, progress=False)
    a, _ = load_checkpoint(os.path.join(whole, CHECKPOINT))
    b, _ = load_checkpoint(os.path.join(halves, CHECKPOINT))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.load(open(os.path.join(halves, "config.json")))["optimizer"]["lr_decay_steps"] == 8


def test_a_student_takes_its_teachers_network_and_a_failed_run_leaves_no_folders(tmp_path):
    teacher, student = str(tmp_path / "teacher"), str(tmp_path / "student")
    train(TrainConfig(method="edm", steps=2, batch=16, net_kwargs={"width": 24, "depth": 1}), teacher, progress=False)
    state = train(TrainConfig(method="cd", teacher=teacher, steps=2, batch=16), student, progress=False)
    assert state.cfg.net_kwargs == {"width": 24, "depth": 1}
    with pytest.raises(FewstepError, match="a student that starts from its teacher needs the same network"):
        train(TrainConfig(method="cd", teacher=teacher, steps=2, batch=16, net_kwargs={"width": 8}),
              str(tmp_path / "other"), progress=False)
    with pytest.raises(FewstepError, match="width must be a positive integer"):
        train(_cfg(net_kwargs={"width": -4}), str(tmp_path / "new" / "deeper" / "run"), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["student", "teacher"]


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """mkstemp's 0600 is not kept: a written checkpoint or table is readable as open() would have made it."""
    from fewstep.checkpoint import write_text
    old = os.umask(0o022)
    try:
        write_text(str(tmp_path / "a.md"), "x")
        assert os.stat(tmp_path / "a.md").st_mode & 0o777 == 0o644
        os.umask(0o077)
        write_text(str(tmp_path / "b.md"), "x")
        assert os.stat(tmp_path / "b.md").st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
