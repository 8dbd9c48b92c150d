"""Fixtures shared across test modules."""

import pytest

RING_NET = {"width": 64, "depth": 2}


@pytest.fixture(scope="session")
def ring_teacher(tmp_path_factory):
    """An EDM teacher of the default 2-D ring (1500 steps, batch 256, MLP 64 x 2, seed 0), trained once for the
    slow learning tests of test_ctm.py and test_distill_learning.py."""
    from fewstep.config import TrainConfig
    from fewstep.train import train
    run = str(tmp_path_factory.mktemp("ring") / "teacher")
    train(TrainConfig(method="edm", steps=1500, batch=256, net_kwargs=RING_NET, seed=0, log_every=500, ckpt_every=1500),
          run, progress=False)
    return run
