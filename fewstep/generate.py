"""From a trained model to samples: picks the sampler and grid that fit the run's method.

A consistency model runs Algorithm 1 (seed 000) with `steps` evaluations; a diffusion teacher runs an
ODE/SDE sampler over `steps` noise levels (Heun on the Karras grid for EDM, DDIM on the strided
schedule for DDPM), so Heun with 18 steps costs 35 NFE as in EDM.
"""

import torch

from .errors import FewstepError
from .guidance import Guided, embeds, guide, network_calls
from .methods import METHODS
from .nets import sample_shape
from .sampling import FEW_STEP_SAMPLERS, SAMPLERS, nfe, sample_consistency, sample_gamma, sample_lcm


def run_kind(cfg):
    """The kind of model a run's method produces (fewstep.kinds)."""
    return METHODS[cfg.method].produces


def run_process(model, cfg):
    """The noise process of a run's model: the model's own, else the one its method builds."""
    return getattr(model, "process", None) or METHODS[cfg.method].make_process(cfg.method_arguments())


def default_sampler(cfg):
    return run_kind(cfg).default_sampler(METHODS[cfg.method].make_process(cfg.method_arguments()))


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
    """The run's default sampler, or the caller's after checking that it fits the kind of model the run makes."""
    kind = run_kind(cfg)
    if not kind.generates:
        raise FewstepError(f"a {cfg.method!r} run is not a generator; {kind.use}")
    sampler = sampler or default_sampler(cfg)
    if sampler not in (*FEW_STEP_SAMPLERS, *SAMPLERS):
        raise FewstepError(f"unknown sampler {sampler!r}; choose one of: {', '.join([*FEW_STEP_SAMPLERS, *sorted(SAMPLERS)])}")
    if sampler not in kind.samplers:
        raise FewstepError(f"a run trained with {cfg.method!r} makes a {kind.name} model, which samples with "
                           f"--sampler {' or '.join(sorted(kind.samplers))}")
    return sampler


def check_sampling(cfg, sampler=None, taus=None, model=None, steps=(), gamma=0.0):
    """The sampler to use (see pick_sampler), before any output is written: explicit time points are for
    consistency models only, and they, or the grid of each step count, must be valid (checked when `model`
    is given: a progressive-distillation run samples on divisors of its grid only)."""
    sampler = pick_sampler(cfg, sampler)
    if gamma and sampler != "gamma":
        raise FewstepError(f"--gamma is the parameter of CTM's gamma-sampling; this run samples with {sampler!r} "
                           "(leave --gamma out, or sample a ctm run with --sampler gamma)")
    if taus is not None and sampler not in FEW_STEP_SAMPLERS:
        raise FewstepError(f"--tau lists the time points of a consistency or trajectory model; this {cfg.method!r} "
                           "run samples with --steps (and --sampler)")
    if model is not None:
        try:
            for s in ([len(taus)] if taus is not None else steps):
                noise_grid(model, cfg, s, sampler, taus)
        except ValueError as e:
            raise FewstepError(str(e)) from None
    return sampler


@torch.no_grad()
def generate(model, cfg, n, steps, *, sampler=None, taus=None, generator=None, cond=None, shape=None, gamma=0.0,
             guidance=None):
    """(samples, NFE): n samples from a run's model with `steps` steps (or the explicit tau list).
    shape: one sample's shape (default: the network's img_shape, or (dim,) for flat data); gamma: CTM's
    gamma-sampling (0 deterministic, 1 Algorithm 1); guidance: the scale w (fewstep.guidance.guide), which
    a model with w as an input (LCM) needs and gets as 0, the conditional model, when it is left out."""
    sampler = check_sampling(cfg, sampler, taus)
    if n < 1:
        raise FewstepError(f"the number of samples must be at least 1, got {n}")
    if not isinstance(model, Guided) and (guidance is not None or embeds(model, "w")):
        model = guide(model, cfg, guidance or 0.0)
    try:
        shape = shape or sample_shape(model.net)
        x, n_fe = _generate(model, cfg, (n, *shape), steps, sampler, taus, generator, cond, gamma)
        return x, n_fe * network_calls(model)
    except ValueError as e:                         # impossible step lists and schedules, in one line
        raise FewstepError(str(e)) from None


def _generate(model, cfg, shape, steps, sampler, taus, generator, cond, gamma=0.0):
    device = next(model.parameters()).device
    grid = noise_grid(model, cfg, steps, sampler, taus)
    x = run_process(model, cfg).prior(shape, grid[0], generator=generator, device=device)
    return run_sampler(model, cfg, x, grid, sampler, generator=generator, cond=cond, gamma=gamma)


def noise_grid(model, cfg, steps, sampler, taus=None, sigma_start=None):
    """The float64 noise levels a sampler walks, as the run's kind of model defines them: Algorithm 1's
    taus for a consistency model, a descending grid ending in 0 for a denoiser (its process's: the Karras
    grid on VE, the strided schedule on VP). sigma_start: start there instead of at sigma_max (editing and
    denoising start from an image, seed 000)."""
    if sampler in FEW_STEP_SAMPLERS or taus is not None:
        return run_kind(cfg).grid(model, cfg, steps, sigma_start, taus)
    return run_process(model, cfg).sampling_grid(steps, cfg.sigma_min, cfg.sigma_max, cfg.rho, sigma_start)


def run_sampler(model, cfg, x, grid, sampler, *, generator=None, cond=None, project=None, gamma=0.0):
    """(samples, NFE): the sampler walks `grid` from x, which is already at noise level grid[0]."""
    if sampler == "gamma":
        x = sample_gamma(model, x, grid, gamma=gamma, sigma_min=cfg.sigma_min, cond=cond, generator=generator,
                         project=project)
        return x, len(grid)
    if sampler == "lcm":
        return sample_lcm(model, x, grid, cond=cond, generator=generator, project=project), len(grid)
    if sampler == "consistency":
        x = sample_consistency(model, x, grid, sigma_min=cfg.sigma_min, cond=cond, generator=generator, project=project)
        return x, len(grid)
    return SAMPLERS[sampler](model, x, grid, cond=cond, generator=generator, project=project), nfe(sampler, grid)
