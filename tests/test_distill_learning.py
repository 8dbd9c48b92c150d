"""The distillation methods learn the 2-D mixture (the default 8-mode ring), measured against the same model
before its first step; reflow straightens its teacher's curved PF-ODE; SDS's sample-based estimator keeps
the modes its single-sample estimator collapses (seed 003's claims, at a CPU test's budget).

One EDM teacher (1500 steps) serves the module; each method trains a few hundred steps from it (rf from the
data), all seeded, so every number is deterministic. The untrained model of a method that starts from its
teacher is the teacher's one-step denoiser D(80 z, 80): every sample near the data mean (sliced W2 0.28 to
0.38 over teacher seeds 0-3, 99% of the samples off every mode). A fresh rf network is the exact denoiser
of N(0, sigma_data^2 I) (its output layer starts at zero): 0.16 at 16 Euler steps, whatever the seed.

Measured values in the comments are for SEED = 0, with the range over seeds 0-3 in brackets.
"""

import dataclasses
import os

import pytest
import torch

from fewstep.config import TrainConfig
from fewstep.generate import generate
from fewstep.metrics.flow import straightness
from fewstep.metrics.toy import mode_stats, sample_distance
from fewstep.rounds import train_progressive
from fewstep.runs import build_dataset, load_teacher
from fewstep.train import build_state, train

pytestmark = pytest.mark.slow

SEED = 0
NET = {"width": 64, "depth": 2}
PAIRS = {"pairs": 2048, "pair_steps": 12}
N = 4000                                        # samples per measurement (sliced W2's noise floor: ~0.04)

# name -> (method, options, training steps (PD: per round), sampling steps)
RUNS = {
    "kd": ("kd", PAIRS, 300, 1),
    "pd": ("pd", {"N0": 8}, 200, 1),            # rounds 8 -> 4 -> 2 -> 1; the last round samples in 1 step
    "rf": ("rf", {}, 800, 16),                  # from the data: its paths bend (see the straightness test)
    "reflow": ("reflow", PAIRS, 300, 1),
    "dmd": ("dmd", PAIRS, 600, 1),              # at 300 steps: 0.06 to 0.14, not yet settled
    "sds-batch": ("sds", {"estimator": "batch"}, 300, 1),
    "sds-single": ("sds", {}, 300, 1),
    "add": ("add", {}, 1000, 1),                # at 300 steps some seeds have not left the mean yet
}


@pytest.fixture(scope="module")
def teacher(ring_teacher):
    assert SEED == 0 and NET == {"width": 64, "depth": 2}      # conftest's ring teacher is this module's teacher
    return ring_teacher


@pytest.fixture(scope="module")
def data():
    return build_dataset(TrainConfig())


@pytest.fixture(scope="module")
def runs(teacher):
    """runs(name) -> ((untrained model, its cfg), (trained model, its cfg)), each run trained once per module."""
    done = {}

    def get(name):
        if name not in done:
            method, options, steps, _ = RUNS[name]
            cfg = TrainConfig(method=method, teacher=None if method == "rf" else teacher, method_kwargs=options,
                              steps=steps, batch=256, net_kwargs=NET, seed=SEED, log_every=steps, ckpt_every=steps)
            out = os.path.join(os.path.dirname(teacher), name)
            if method == "pd":
                state = train_progressive(cfg, out, progress=False)
                cfg = dataclasses.replace(cfg, method_kwargs={**options, "N": options["N0"] // 2})   # round 1
            else:
                state = train(cfg, out, progress=False)
            start = build_state(cfg, prepare=False)             # the same model before its first step
            done[name] = (start.ema.module, start.cfg), (state.ema.module, state.cfg)
        return done[name]
    return get


def sample(model, cfg, steps, seed=100):
    x, nfe = generate(model, cfg, N, steps, generator=torch.Generator().manual_seed(seed))
    assert nfe == steps
    return x


def distance(x, data):
    return sample_distance(x, data, generator=torch.Generator().manual_seed(7))


# name -> the largest sliced W2 allowed after training. Measured (untrained -> trained, SEED = 0 [seeds 0-3]):
# kd 0.360 -> 0.057 [0.055, 0.058], pd 0.360 -> 0.086 [0.082, 0.086], rf 0.158 -> 0.050 [0.050, 0.051],
# reflow 0.360 -> 0.058 [0.055, 0.060], dmd 0.360 -> 0.055 [0.051, 0.055], sds-batch 0.360 -> 0.053 [0.051, 0.055]:
# every trained/untrained ratio is at most 0.32 (rf; the others 0.29 or less).
LEARNS = {"kd": 0.1, "pd": 0.12, "rf": 0.1, "reflow": 0.1, "dmd": 0.1, "sds-batch": 0.1}


@pytest.mark.parametrize("name", list(LEARNS))
def test_each_method_learns_the_mixture_beyond_its_untrained_model(name, runs, data):
    steps = RUNS[name][3]
    (init, init_cfg), (model, cfg) = runs(name)
    sw0, sw = distance(sample(init, init_cfg, steps), data), distance(sample(model, cfg, steps), data)
    assert sw < 0.5 * sw0 and sw < LEARNS[name], (name, sw0, sw)


def test_add_moves_its_one_step_samples_onto_the_modes(runs, data):
    """ADD trades diversity for fidelity (docs/BENCHMARKS.md: 0.38 of the modes at 2000 steps), so its sliced W2
    is no better than the untrained one's (measured 0.36 -> 0.60 [0.30, 0.60] at 1000 steps, 0.56 at 300; its
    4-step samples fall from the teacher's 0.11 to 0.54): what it learns is to put its samples on the modes.
    Measured share of samples on some mode: untrained 0.01 [0.00, 0.01] -> 0.47 [0.47, 0.52]."""
    (init, init_cfg), (model, cfg) = runs("add")
    on0 = 1 - mode_stats(sample(init, init_cfg, 1), data)["off_mode"]
    on = 1 - mode_stats(sample(model, cfg, 1), data)["off_mode"]
    assert on0 < 0.05 and on > 0.3, (on0, on)


def test_reflow_straightens_the_teachers_curved_paths_and_rf_alone_does_not(runs, teacher):
    """Liu et al.'s straightness in flow coordinates (0: straight lines). Measured: teacher 0.68 [0.66, 0.68];
    reflow from its weights 0.0084 [0.0081, 0.0087] after 300 steps on 2048 teacher pairs; rf on the independent
    coupling (data, noise) 0.68 [0.68, 0.69], as curved as the teacher."""
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(3))
    s_teacher = straightness(load_teacher(teacher)[0], z)
    (reflow0, _), (reflow, _) = runs("reflow")
    s_reflow0, s_reflow = straightness(reflow0, z), straightness(reflow, z)
    s_rf = straightness(runs("rf")[1][0], z)
    assert s_teacher > 0.4, s_teacher                                   # the mixture's PF-ODE bends
    assert s_reflow0 == pytest.approx(s_teacher, rel=1e-4)              # reflow starts as the teacher...
    assert s_reflow < 0.1 * s_teacher, (s_teacher, s_reflow)            # ...and straightens it
    assert s_rf > 0.5 * s_teacher, (s_teacher, s_rf)


def test_sds_batch_estimator_keeps_the_modes_the_single_sample_one_drops(runs, data):
    """SDS with s_fake = -eps / sigma collapses to one point (measured: std 0.003 per coordinate [0.002, 0.004],
    on no mode, sliced W2 0.49); the sample-based estimator over the batch spreads over every mode (std 0.49,
    all 8 modes at seeds 0-3)."""
    x_single = sample(runs("sds-single")[1][0], runs("sds-single")[1][1], 1)
    x_batch = sample(runs("sds-batch")[1][0], runs("sds-batch")[1][1], 1)
    single, batch = mode_stats(x_single, data), mode_stats(x_batch, data)
    assert x_single.std(0).max() < 0.02 and single["modes_hit"] <= 1 / 8, (x_single.std(0), single)
    assert x_batch.std(0).min() > 0.4 and batch["modes_hit"] >= 0.75, (x_batch.std(0), batch)
