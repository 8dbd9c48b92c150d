"""torchrun with 2 CPU processes (gloo): weights stay identical across ranks and equal a 1-process run
of the same global batch (dropout included); a run resumes on another world size; an error on one rank
stops every rank with the same line."""

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from fewstep.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--batch", "64", "--set", "streams=2", "--set", "net.width=16", "--set", "net.depth=1",
        "--set", "ckpt_every=3", "--set", "device=cpu", "--set", "K=6", "--set", "net.dropout=0.1", "--quiet"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(nproc, *args):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fewstep", *args] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "fewstep", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    if r.returncode != 0 and "terminate called" in r.stderr and "--resume" not in args:   # gloo's teardown race: once more
        shutil.rmtree(args[args.index("--out") + 1], ignore_errors=True)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]


def _launch_ranks(nproc, argv, timeout=180, extra_path=None):
    """[(exit code, stderr)] of nproc ranks of `python argv` started directly, without torchrun's agent
    (which would kill the other ranks once one quits): a rank left waiting in a collective times out."""
    path = ROOT if extra_path is None else ROOT + os.pathsep + extra_path
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(nproc)}
    procs = [subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(nproc)]
    try:
        errs = [p.communicate(timeout=timeout)[1] for p in procs]
        return [(p.returncode, err) for p, err in zip(procs, errs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _weights(run):
    tensors, meta = load_checkpoint(os.path.join(run, "checkpoint.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith(("net.", "ema.", "target."))}, meta


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume_across_world_sizes(tmp_path):
    one, two, mixed = (str(tmp_path / n) for n in ("one", "two", "mixed"))
    _run(1, "train", "ct", "--out", one, "--steps", "6", *ARGS)
    _run(2, "train", "ct", "--out", two, "--steps", "6", *ARGS)             # ranks checked in sync at each save
    w1, _ = _weights(one)
    w2, meta = _weights(two)
    assert meta["world"] == 2 and meta["k"] == 6
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-6, atol=1e-7)
    # 3 steps on 2 processes, then 3 more on 1 process == 6 steps on 1 process
    _run(2, "train", "ct", "--out", mixed, "--steps", "3", *ARGS)
    _run(1, "train", "ct", "--out", mixed, "--steps", "6", "--resume", *ARGS)
    w3, meta = _weights(mixed)
    assert meta["world"] == 1 and meta["k"] == 6
    for k in w1:
        torch.testing.assert_close(w1[k], w3[k], rtol=1e-6, atol=1e-7)


def _assert_every_rank_says(results, phrase):
    for code, err in results:
        last = err.strip().splitlines()[-1]
        assert code == 2 and "Traceback" not in err and phrase in last, err[-2000:]


@pytest.mark.slow
def test_an_error_on_rank_0_stops_every_rank(tmp_path):
    # rank 0 alone prepares the run folder; its refusal must reach rank 1 instead of leaving it in a barrier
    run = tmp_path / "exists"
    os.makedirs(run)
    (run / "notes.txt").write_text("not a run")
    results = _launch_ranks(2, ["-m", "fewstep", "train", "ct", "--out", str(run), "--steps", "2", *ARGS])
    _assert_every_rank_says(results, "not a fewstep run")
    assert sorted(os.listdir(run)) == ["notes.txt"]


SAVE_NAN = """
import sys, torch
from fewstep import distributed
from fewstep.config import TrainConfig
from fewstep.errors import FewstepError
from fewstep.train import build_state, save
state = build_state(TrainConfig(method="ct", batch=4, streams=2, net_kwargs={"width": 8, "depth": 1}),
                    dist_info=distributed.init("cpu"))
with torch.no_grad():
    next(state.net.parameters()).fill_(float("nan"))
try:
    save(state, sys.argv[1])
except FewstepError as e:
    torch.distributed.barrier()              # both ranks are done with gloo before either exits
    torch.distributed.destroy_process_group()
    sys.exit(f"fewstep: error: {e}")     # exit code 1 and the line, as the CLI would print it
"""


@pytest.mark.slow
def test_non_finite_weights_are_refused_on_every_rank_as_nan_not_as_a_desync(tmp_path):
    # NaN checksums never compare equal: the finiteness check must come first, taken by all ranks together
    results = _launch_ranks(2, ["-c", SAVE_NAN, str(tmp_path / "checkpoint.safetensors")])
    for code, err in results:
        assert code == 1 and "NaN/inf" in err.strip().splitlines()[-1], err[-2000:]
    assert not os.path.exists(tmp_path / "checkpoint.safetensors")
