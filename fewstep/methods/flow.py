"""Rectified flow and reflow (seed 003; Liu, Gong and Liu 2023): a velocity field v(X_t, t) fitted to straight
lines between the two ends of a coupling (X0, X1), X_t = t X1 + (1 - t) X0, X0 data and X1 ~ N(0, I).

The run's model is a denoiser on the flow's interpolation (processes.RectifiedFlow), read as a velocity by
v = (X_t - D(X_t / (1 - t), t / (1 - t))) / t, so a flow samples with Euler on its uniform-t grid (or any VE
sampler), starts from an EDM teacher's weights and teaches like any denoiser. Distilling the k-rectified flow
into one step is knowledge distillation from it: fewstep train kd --teacher FLOW_RUN.
"""

import torch

from ..kinds import DENOISER
from ..pairs import check_pair_options, run_pairs
from ..precond import append_dims
from ..processes import RectifiedFlow as FlowProcess
from ..schedules import SIGMA_MAX, SIGMA_MIN
from .base import Method
from .common import randn_like, split_batch
from .distill import pair_batch


class RectifiedFlow(Method):
    """1-rectified flow on the independent coupling (data, noise): min E ||(X1 - X0) - v(X_t, t)||^2 with
    t ~ U[t(sigma_min), t(sigma_max)] (seed 003's objective; t stays where the VE levels are finite)."""

    produces, process = DENOISER, FlowProcess

    def __init__(self, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX):
        self.t_min, self.t_max = sigma_min / (1 + sigma_min), sigma_max / (1 + sigma_max)

    def __call__(self, net, batch, *, generator=None, **_):
        x0, cond = split_batch(batch)
        return self.velocity_loss(net, x0, randn_like(x0, generator), cond, generator)

    def velocity_loss(self, net, x0, x1, cond, generator):
        u = torch.rand(x0.shape[0], generator=generator, dtype=torch.float64)
        t = (self.t_min + u * (self.t_max - self.t_min)).to(x0)
        t_ = append_dims(t, x0.ndim)
        x_t = t_ * x1 + (1 - t_) * x0
        v = (x_t - net(x_t / (1 - t_), t / (1 - t), **cond)) / t_
        return ((x1 - x0) - v).square().flatten(1).sum(1).mean()


class Reflow(RectifiedFlow):
    """The rectified flow of a teacher's own coupling (seed 003): (X0, X1) = (the teacher's ODE sample, its
    noise), `pairs` of them made once by the teacher's sampler in `pair_steps` steps. With an EDM teacher this
    is the seed's recipe (couplings by the teacher's PF-ODE, the flow starting from its weights); with a
    k-rectified flow as the teacher it is reflow, giving the (k+1)-rectified flow."""

    def __init__(self, teacher, pairs=4096, pair_sampler=None, pair_steps=None, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX):
        super().__init__(sigma_min, sigma_max)
        check_pair_options(pairs, pair_steps, pair_sampler)
        self.teacher, self.n_pairs, self.pair_sampler, self.pair_steps = teacher, pairs, pair_sampler, pair_steps

    def prepare(self, run):
        self.pairs = run_pairs(self.teacher, run, self.n_pairs, self.pair_sampler, self.pair_steps)

    def __call__(self, net, batch, *, generator=None, **_):
        x, _ = split_batch(batch)
        z, x0, cond = pair_batch(self.pairs, x.shape[0], x, generator)
        return self.velocity_loss(net, x0, z, cond, generator)
