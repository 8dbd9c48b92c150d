"""Teacher pairs (z, x0): unit noise z and the sample the teacher's PF-ODE takes it to, from
x_T = prior_scale(T) z. They are the couplings that naive knowledge distillation regresses, that reflow
rectifies and that DMD's regression loss keeps (seed 003). Making them is the expensive part, so they are
made once, by a stated sampler and step count, and stored beside the teacher run as safetensors
(TEACHER/pairs/NAME.safetensors, NAME naming the sampler, steps, count, seed and the teacher's weights);
later runs with the same teacher and settings read them back.
"""

import hashlib
import os
import sys

import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .errors import FewstepError
from .processes import VE
from .sampling import SAMPLERS


def fingerprint(model):
    """A short hash of a model's weights: a teacher trained further makes new pairs, never stale ones."""
    h = hashlib.sha1()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


ODE_SAMPLERS = ("heun", "euler", "ddim", "dpm2", "dpmpp-2m")       # deterministic: a pair is the PF-ODE's map of its noise


def check_pair_options(pairs, pair_steps, pair_sampler=None):
    """One ValueError line for a pair count or step count that is not a positive integer, or a sampler that
    is not one of the deterministic ODE samplers."""
    if pair_sampler is not None and pair_sampler not in ODE_SAMPLERS:
        raise ValueError(f"unknown pair sampler {pair_sampler!r}: pairs come from the teacher's ODE; choose one of "
                         f"{', '.join(ODE_SAMPLERS)}")
    for name, v in (("pairs", pairs), ("pair_steps", pair_steps)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def pair_file(folder, teacher, n, sampler, steps, seed, guidance=0.0, **settings):
    """The cache file of a set of pairs: every setting that changes them is in its name (the grid's sigma_min,
    sigma_max and rho, the class count and guidance through a short hash), so a different run never reads them."""
    key = hashlib.sha1(repr(sorted({**settings, "guidance": guidance}.items())).encode()).hexdigest()[:8]
    return os.path.join(folder, f"{sampler}{steps}-n{n}-seed{seed}-{key}-{fingerprint(teacher)}.safetensors")


@torch.no_grad()
def make_pairs(teacher, shape, n, *, sampler, steps, sigma_min, sigma_max, rho, seed=0, num_classes=0,
               batch=1024, device=None, progress=True):
    """{"z": (n, *shape), "x0": (n, *shape)[, "class_labels": (n,)]}: n teacher samples by `sampler` over the
    teacher process's grid of `steps` steps, from unit noise z (and uniform class labels when num_classes)."""
    check_pair_options(n, steps, sampler)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *shape), generator=g)
    labels = torch.randint(num_classes, (n,), generator=g) if num_classes else None
    process = getattr(teacher, "process", None) or VE()          # a plain function D(x, sigma) is a VE denoiser
    grid = process.sampling_grid(steps, sigma_min, sigma_max, rho)
    scale, device = process.prior_scale(grid[0]), device or torch.device("cpu")
    x0 = torch.empty_like(z)
    for i in tqdm(range(0, n, batch), disable=None if progress else True, desc=f"teacher pairs ({sampler}, {steps} steps)",
                  leave=False):
        cond = {"class_labels": labels[i:i + batch].to(device)} if labels is not None else None
        x = (scale * z[i:i + batch]).to(device)
        x0[i:i + batch] = SAMPLERS[sampler](teacher, x, grid, cond=cond, generator=g).cpu()
    return {"z": z, "x0": x0, **({"class_labels": labels} if labels is not None else {})}


def teacher_pairs(teacher, shape, n, *, sampler, steps, folder=None, guidance=0.0, **kwargs):
    """make_pairs, read from `folder` when they were made before and written there otherwise (atomically,
    so a killed run leaves no half file). folder=None, or one that cannot be written: made in memory only."""
    settings = {k: kwargs.get(k) for k in ("sigma_min", "sigma_max", "rho", "num_classes")}
    path = pair_file(folder, teacher, n, sampler, steps, kwargs.get("seed", 0), guidance, **settings) if folder else None
    if path and os.path.isfile(path):
        pairs, _ = load_checkpoint(path)
        if pairs["z"].shape == (n, *shape):
            return pairs
    if path:
        print(f"making {n} teacher pairs ({sampler}, {steps} steps) -> {path}", file=sys.stderr, flush=True)
    pairs = make_pairs(teacher, shape, n, sampler=sampler, steps=steps, **kwargs)
    if path:
        try:
            os.makedirs(folder, exist_ok=True)
            save_checkpoint(path, pairs, {"n": n, "sampler": sampler, "steps": steps})
        except OSError as e:            # a read-only teacher still teaches: the pairs are only not kept
            print(f"cannot keep the pairs in {folder} ({e.strerror or e}); using them from memory", file=sys.stderr)
    return pairs


DEFAULT_STEPS = 18          # EDM's Heun: 35 NFE per pair


def run_pairs(teacher, run, n, sampler=None, steps=None):
    """The pairs of a training run (`run`: see Method.prepare): made by rank 0 into the teacher's pairs
    folder, then read by every rank; with no folder (a teacher given in Python) every rank makes the same.
    sampler, steps: None for the teacher's own (its process's sampler; a PD round's N steps, else 18)."""
    process = getattr(teacher, "process", None) or VE()
    cfg = run.cfg
    kwargs = dict(sampler=sampler or process.default_sampler, steps=steps or getattr(process, "N", DEFAULT_STEPS), sigma_min=cfg.sigma_min,
                  sigma_max=cfg.sigma_max, rho=cfg.rho, seed=cfg.seed, num_classes=run.num_classes,
                  device=run.device, guidance=cfg.teacher_guidance, folder=run.pair_folder)
    if run.pair_folder and run.dist.world > 1:       # rank 0 makes them, the others then read them
        distributed.on_main(lambda: _made(teacher, run.shape, n, kwargs), run.dist)
    return teacher_pairs(teacher, run.shape, n, **kwargs)


def _made(teacher, shape, n, kwargs):
    """teacher_pairs for on_main, whose other ranks must hear of any failure as one FewstepError line."""
    try:
        return bool(teacher_pairs(teacher, shape, n, **kwargs))
    except (ValueError, RuntimeError, OSError) as e:
        raise FewstepError(f"cannot make the teacher pairs: {e}") from None
