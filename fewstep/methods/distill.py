"""Classical distillation of a diffusion teacher (seed 003, "Classes of distillation methods"): naive
knowledge distillation into a one-step generator, and progressive distillation, which halves the
teacher's steps round by round (seeds 002 and 003)."""

import torch

from ..kinds import DENOISER, GENERATOR
from ..pairs import check_pair_options, run_pairs
from ..precond import append_dims
from ..processes import VE, HalvingGrid
from ..sampling import ode_step
from ..schedules import RHO, SIGMA_DATA, SIGMA_MAX, SIGMA_MIN
from .base import Method
from .common import make_distance, randn_like, split_batch


def pair_batch(pairs, n, x, generator):
    """n pairs drawn with replacement by the stream's generator: (z, x0, cond) on x's device and dtype."""
    i = torch.randint(len(pairs["z"]), (n,), generator=generator)
    cond = {"class_labels": pairs["class_labels"][i].to(x.device)} if "class_labels" in pairs else {}
    return pairs["z"][i].to(x), pairs["x0"][i].to(x), cond


def one_step(G, z, sigma_max, cond):
    """A generator's sample G(z) = D_theta(sigma_max z, sigma_max): the student starts as its teacher's
    one-step denoiser from x_T = T z (kinds.GENERATOR)."""
    return G(sigma_max * z, torch.full((z.shape[0],), sigma_max, dtype=z.dtype, device=z.device), **cond)


class KnowledgeDistillation(Method):
    """Naive knowledge distillation (seed 003; Luhman & Luhman 2021): d(G(z), x0) over pairs (z, x0) that the
    teacher's PF-ODE made once (`pairs` of them, by `pair_sampler` in `pair_steps` steps; fewstep.pairs), G
    a one-step generator. Data-free: the data batch only sets the batch size."""

    produces, process = GENERATOR, VE

    def __init__(self, teacher, pairs=4096, pair_sampler=None, pair_steps=None, distance="l2", sigma_max=SIGMA_MAX,
                 c=None):
        check_pair_options(pairs, pair_steps, pair_sampler)
        self.teacher, self.n_pairs, self.pair_sampler, self.pair_steps = teacher, pairs, pair_sampler, pair_steps
        self.d, self.sigma_max = make_distance(distance, c=c), sigma_max

    def prepare(self, run):
        self.pairs = run_pairs(self.teacher, run, self.n_pairs, self.pair_sampler, self.pair_steps)

    def __call__(self, net, batch, *, generator=None, **_):
        x, _ = split_batch(batch)
        z, x0, cond = pair_batch(self.pairs, x.shape[0], x, generator)
        return self.d(one_step(net, z, self.sigma_max, cond), x0).mean()


class ProgressiveDistillation(Method):
    """One round of progressive distillation (Salimans & Ho 2022; seeds 002 and 003). The student, initialised
    from the teacher, makes in one DDIM step from sigma to sigma'' what two teacher DDIM steps make through
    sigma'; on the teacher's grid of 2N steps and the student's of N (HalvingGrid). DDIM is Euler in VE
    coordinates, where the paper's closed-form target (Algorithm 2) reads
        x_target = (z'' - (sigma''/sigma) z) / (1 - sigma''/sigma)     (= z'' at sigma'' = 0),
    the x0 for which one student step lands on z''. Loss: EDM's weighting lambda(sigma) ||D(z, sigma) -
    x_target||^2, which plays the role of the paper's truncated-SNR weighting for a preconditioned network.
    `fewstep train pd` runs the rounds N = N0/2, N0/4, ..., 1, each round's student teaching the next."""

    produces, process = DENOISER, HalvingGrid
    starts_from_teacher = True

    def __init__(self, teacher, N=32, N0=64, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO,
                 sigma_data=SIGMA_DATA):
        if not (isinstance(N, int) and isinstance(N0, int) and 1 <= N < N0 and N0 % N == 0
                and (N0 // N) & (N0 // N - 1) == 0):
            raise ValueError(f"progressive distillation halves a grid: N0 / N must be a power of two with "
                             f"1 <= N < N0, got N={N}, N0={N0}")
        theirs = getattr(teacher, "process", None)
        if isinstance(theirs, HalvingGrid) and (theirs.N != 2 * N or theirs.N0 != N0):
            raise ValueError(f"the teacher is the progressive-distillation round of N={theirs.N}, N0={theirs.N0}; the "
                             f"next round takes N={theirs.N // 2}, N0={theirs.N0}")
        grid = HalvingGrid(N, N0)
        self.teacher, self.N, self.sigma_data = teacher, N, sigma_data
        self.t = grid.sampling_grid(2 * N, sigma_min, sigma_max, rho)       # the teacher's 2N steps
        self.s = self.t[::2]                                                # the student's N steps

    def __call__(self, net, batch, *, generator=None, **_):
        x, cond = split_batch(batch)
        i = torch.randint(self.N, (x.shape[0],), generator=generator)
        sigma, sigma_mid, sigma_next = self.t[2 * i].to(x), self.t[2 * i + 1].to(x), self.t[2 * i + 2].to(x)
        z = x + append_dims(sigma, x.ndim) * randn_like(x, generator)
        with torch.no_grad():
            z_mid = ode_step(self.teacher, z, sigma, sigma_mid, "euler", cond)
            z_next = ode_step(self.teacher, z_mid, sigma_mid, sigma_next, "euler", cond)
            ratio = append_dims(sigma_next / sigma, x.ndim)
            target = (z_next - ratio * z) / (1 - ratio)
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        return (weight * (net(z, sigma, **cond) - target).square().flatten(1).sum(1)).mean()
