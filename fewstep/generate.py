"""From a trained model to samples: picks the sampler and grid that fit the run's method.

A consistency model runs Algorithm 1 (seed 000) with `steps` evaluations; a diffusion teacher runs an
ODE/SDE sampler over `steps` noise levels (Heun on the Karras grid for EDM, DDIM on the strided
schedule for DDPM), so Heun with 18 steps costs 35 NFE as in EDM.
"""

import torch

from .errors import FewstepError
from .methods import METHODS
from .sampling import SAMPLERS, check_taus, consistency_taus, initial_noise, nfe, sample_consistency, vp_sigmas
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


def pick_sampler(cfg, sampler=None):
    """The run's default sampler, or the caller's after checking that it fits the run's method."""
    kind = METHODS[cfg.method].precond
    if kind == "none":
        raise FewstepError(f"a {cfg.method!r} run is not a generator; use it for guidance: "
                           "fewstep eval TEACHER_RUN --classifier RUN --guidance W")
    sampler = sampler or default_sampler(cfg)
    if (sampler == "consistency") != (kind == "consistency"):
        raise FewstepError(f"a run trained with {cfg.method!r} samples with --sampler "
                           + ("consistency" if kind == "consistency" else " or ".join(sorted(SAMPLERS))))
    if sampler != "consistency" and sampler not in SAMPLERS:
        raise FewstepError(f"unknown sampler {sampler!r}; choose one of: consistency, {', '.join(sorted(SAMPLERS))}")
    return sampler


def check_sampling(cfg, sampler=None, taus=None, model=None):
    """The sampler to use (see pick_sampler), before any output is written: explicit time points are for
    consistency models only, and must be a valid Algorithm 1 list (checked when `model` is given)."""
    sampler = pick_sampler(cfg, sampler)
    if taus is not None and sampler != "consistency":
        raise FewstepError(f"--tau lists the time points of a consistency model; this {cfg.method!r} run samples "
                           "with --steps (and --sampler)")
    if taus is not None and model is not None:
        try:
            noise_grid(model, cfg, len(taus), sampler, taus)
        except ValueError as e:
            raise FewstepError(str(e)) from None
    return sampler


@torch.no_grad()
def generate(model, cfg, n, steps, *, sampler=None, taus=None, generator=None, cond=None, shape=None):
    """(samples, NFE): n samples from a run's model with `steps` steps (or the explicit tau list).
    shape: one sample's shape (default: the network's img_shape, or (dim,) for flat data)."""
    sampler = check_sampling(cfg, sampler, taus)
    if n < 1:
        raise FewstepError(f"the number of samples must be at least 1, got {n}")
    try:
        shape = shape or getattr(model.net, "img_shape", None) or (model.net.dim,)
        return _generate(model, cfg, (n, *shape), steps, sampler, taus, generator, cond)
    except ValueError as e:                         # impossible step lists and schedules, in one line
        raise FewstepError(str(e)) from None


def _generate(model, cfg, shape, steps, sampler, taus, generator, cond):
    device = next(model.parameters()).device
    grid = noise_grid(model, cfg, steps, sampler, taus)
    x = initial_noise(shape, grid[0], generator=generator, vp=is_vp(cfg) and sampler != "consistency", device=device)
    return run_sampler(model, cfg, x, grid, sampler, generator=generator, cond=cond)


def is_vp(cfg):
    return METHODS[cfg.method].precond == "vp"


def noise_grid(model, cfg, steps, sampler, taus=None, sigma_start=None):
    """The float64 noise levels a sampler walks: taus for a consistency model (Algorithm 1), else a
    descending grid ending in 0 (the strided schedule for VP, the Karras grid for EDM). sigma_start:
    start there instead of at sigma_max (editing and denoising start from an image, seed 000)."""
    if sampler == "consistency":
        taus = taus if taus is not None else consistency_taus(steps, cfg.sigma_min, sigma_start or cfg.sigma_max, cfg.rho)
        taus = torch.as_tensor(taus, dtype=torch.float64)
        if not torch.isfinite(taus).all() or (taus <= 0).any():
            raise ValueError(f"the time points must be positive finite numbers, got {taus.tolist()}; e.g. --tau 80,0.8")
        if taus.numel() and taus[0] > cfg.sigma_max:
            raise ValueError(f"the first tau {taus[0].item():g} is above the model's sigma_max = {cfg.sigma_max:g}; "
                             f"start the --tau list at {cfg.sigma_max:g} or below")
        check_taus(taus, cfg.sigma_min)
        return taus
    if is_vp(cfg) and sigma_start is None:
        return vp_sigmas(model.process, steps)
    sigma_min = float(model.process.ve_sigma(1)) if is_vp(cfg) else cfg.sigma_min
    return append_zero(karras_sigmas(steps, sigma_min, sigma_start or cfg.sigma_max, cfg.rho))


def run_sampler(model, cfg, x, grid, sampler, *, generator=None, cond=None, project=None):
    """(samples, NFE): the sampler walks `grid` from x, which is already at noise level grid[0]."""
    if sampler == "consistency":
        x = sample_consistency(model, x, grid, sigma_min=cfg.sigma_min, cond=cond, generator=generator, project=project)
        return x, len(grid)
    return SAMPLERS[sampler](model, x, grid, cond=cond, generator=generator, project=project), nfe(sampler, grid)
