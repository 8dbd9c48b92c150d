"""torchrun with 2 CPU processes (gloo): weights stay identical across ranks and equal a 1-process run
of the same global batch; a run resumes on another world size."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from fewstep.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--batch", "64", "--set", "streams=2", "--set", "net.width=16", "--set", "net.depth=1",
        "--set", "ckpt_every=3", "--set", "device=cpu", "--set", "K=6", "--quiet"]


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
    assert r.returncode == 0, r.stderr[-3000:]


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
