"""From a trained model to samples: picks the sampler and grid that fit the run's method.

A consistency model runs Algorithm 1 (seed 000) with `steps` evaluations; a diffusion teacher runs an
ODE/SDE sampler over `steps` noise levels (Heun on the Karras grid for EDM, DDIM on the strided
schedule for DDPM), so Heun with 18 steps costs 35 NFE as in EDM.
"""

import torch

from .errors import FewstepError
from .methods import METHODS
from .sampling import SAMPLERS, consistency_taus, initial_noise, nfe, sample_consistency, vp_sigmas
from .schedules import append_zero, karras_sigmas


def default_sampler(cfg):
    return {"consistency": "consistency", "edm": "heun", "vp": "ddim"}[METHODS[cfg.method].precond]


def parse_steps(text):
    """'1,2,4' -> [1, 2, 4]; anything else is one clear FewstepError."""
    try:
        steps = [int(s) for s in str(text).split(",")]
    except ValueError:
        steps = None
    if not steps or any(s < 1 for s in steps):
        raise FewstepError(f"--steps must be positive integers separated by commas, like 1,2,4; got {text!r}")
    return steps


@torch.no_grad()
def generate(model, cfg, n, steps, *, sampler=None, taus=None, generator=None, cond=None, shape=None):
    """(samples, NFE): n samples from a run's model with `steps` steps (or the explicit tau list).
    shape: one sample's shape (default: the network's img_shape, or (dim,) for flat data)."""
    kind = METHODS[cfg.method].precond
    if kind == "none":
        raise FewstepError(f"a {cfg.method!r} run is not a generator; use it for guidance: "
                           "fewstep eval TEACHER_RUN --classifier RUN --guidance W")
    sampler = sampler or default_sampler(cfg)
    if n < 1:
        raise FewstepError(f"the number of samples must be at least 1, got {n}")
    if (sampler == "consistency") != (kind == "consistency"):
        raise FewstepError(f"a run trained with {cfg.method!r} samples with --sampler "
                           + ("consistency" if kind == "consistency" else " or ".join(sorted(SAMPLERS))))
    if sampler != "consistency" and sampler not in SAMPLERS:
        raise FewstepError(f"unknown sampler {sampler!r}; choose one of: consistency, {', '.join(sorted(SAMPLERS))}")
    try:
        shape = shape or getattr(model.net, "img_shape", None) or (model.net.dim,)
        return _generate(model, cfg, (n, *shape), steps, sampler, taus, generator, cond)
    except ValueError as e:                         # impossible step lists and schedules, in one line
        raise FewstepError(str(e)) from None


def _generate(model, cfg, shape, steps, sampler, taus, generator, cond):
    device = next(model.parameters()).device
    if sampler == "consistency":
        taus = torch.as_tensor(taus if taus is not None else consistency_taus(steps, cfg.sigma_min, cfg.sigma_max, cfg.rho),
                               dtype=torch.float64)
        if taus.numel() and taus[0] > cfg.sigma_max:
            raise ValueError(f"the first tau {taus[0].item():g} is above the model's sigma_max = {cfg.sigma_max:g}; "
                             f"start the --tau list at {cfg.sigma_max:g} or below")
        x = initial_noise(shape, taus[0], generator=generator, device=device)
        return sample_consistency(model, x, taus, sigma_min=cfg.sigma_min, cond=cond, generator=generator), len(taus)
    if METHODS[cfg.method].precond == "vp":
        sigmas = vp_sigmas(model.process, steps)
        x = initial_noise(shape, sigmas[0], generator=generator, vp=True, device=device)
    else:
        sigmas = append_zero(karras_sigmas(steps, cfg.sigma_min, cfg.sigma_max, cfg.rho))
        x = initial_noise(shape, sigmas[0], generator=generator, device=device)
    return SAMPLERS[sampler](model, x, sigmas, cond=cond, generator=generator), nfe(sampler, sigmas)
