"""Consistency trajectory models (CTM; seeds 003 and 004, Kim et al. 2024): one network G(x_t, t, s) that
jumps along the teacher's PF-ODE from any time t to any earlier s (precond.TrajectoryPrecond). "Time 0" of
the seeds' formulas is the boundary sigma_min here."""

import torch

from ..kinds import TRAJECTORY
from ..precond import append_dims
from ..processes import VE
from ..sampling import ode_step
from ..schedules import RHO, SIGMA_DATA, SIGMA_MAX, SIGMA_MIN, cm_timesteps
from .adversarial import GANHead
from .base import Group, Method
from .common import make_distance, randn_like, split_batch
from .diffusion import EDMLoss


class ConsistencyTrajectory(Method):
    """CTM distillation (seed 003, "CTM objective"): on the grid t_1 = sigma_min < ... < t_N = T draw t, then
    s <= u < t, and match
        x_est    = G_sg(G_theta(x_t, t, s), s, sigma_min)
        x_target = G_sg(G_sg(Solver(x_t, t, u; phi), u, s), s, sigma_min)
    in data space with the distance d; Solver runs the teacher's Heun steps from t down to u (one step:
    local consistency, like CD; all the way to s: global), at most `max_solver_steps` of them (None: u
    uniform on [s, t) as in the paper). G_sg is the EMA target (rate mu). Plus lambda_dsm times EDM's
    denoising loss on g(x, t, t) (without it g gets no signal as a denoiser; 0.1 by default: at 1 the
    EDM-weighted term blurs G's one-step jumps on 2-D data, though on images 1 serves multistep sampling
    and g better, docs/BENCHMARKS.md) and, with gan_weight > 0, the hinge GAN loss of a discriminator on
    x_est against real data. The student starts from the teacher with its s-embedding at zero, so
    G(x, t, s) starts as the teacher's own Euler step from t to s."""

    produces, process = TRAJECTORY, VE
    starts_from_teacher = True
    groups = {"net": Group(("net",))}
    conditions = ("s",)
    net_scalars = ("s",)                # the network embeds the jump's end time s

    def emas(self):
        return {"target": ("net", self.mu)}

    def __init__(self, teacher, N=18, max_solver_steps=None, distance="l2", mu=0.95, lambda_dsm=0.1, gan_weight=0.0,
                 r1=0.1, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO, sigma_data=SIGMA_DATA, c=None):
        if not (isinstance(N, int) and N >= 2):
            raise ValueError(f"N (the grid's points) must be an integer >= 2, got {N!r}")
        if max_solver_steps is not None and not (isinstance(max_solver_steps, int) and max_solver_steps >= 1):
            raise ValueError(f"max_solver_steps must be a positive integer or null, got {max_solver_steps!r}")
        self.teacher, self.N, self.max_solver_steps, self.mu_value = teacher, N, max_solver_steps, mu
        self.lambda_dsm, self.gan_weight, self.dsm = lambda_dsm, gan_weight, EDMLoss(sigma_data=sigma_data)
        self.t = cm_timesteps(N, sigma_min, sigma_max, rho)                 # ascending: t[0] = sigma_min
        self.sigma_min, self.d = sigma_min, make_distance(distance, c=c)
        self.gan = GANHead(r1) if gan_weight > 0 else None
        if self.gan:
            self.groups = {"net": Group(("net",)), "disc": Group(("disc",), betas=(0.0, 0.99))}
        self.calls_per_sample = self.teacher_calls()           # logged with the losses (metrics.jsonl)

    def mu(self, k):
        return self.mu_value

    def build(self, net, make_model):
        return {"net": net, **({"disc": self.gan.build(net)} if self.gan else {})}

    def indices(self, n, generator):
        """(i_t, i_u, i_s) with 0 <= i_s <= i_u < i_t <= N - 1 on the grid: t uniform above sigma_min, s
        uniform in [sigma_min, t), and u = t minus k solver steps, k uniform in 1 .. min(i_t - i_s, max)."""
        i_t = torch.randint(1, self.N, (n,), generator=generator)
        i_s = (torch.rand(n, generator=generator, dtype=torch.float64) * i_t).long()
        span = i_t - i_s
        if self.max_solver_steps is not None:
            span = span.clamp(max=self.max_solver_steps)
        k = 1 + (torch.rand(n, generator=generator, dtype=torch.float64) * span).long()
        return i_t, i_t - k, i_s

    @torch.no_grad()
    def solver(self, x, i_from, i_to, cond):
        """The teacher's Heun steps along the grid from t[i_from] down to t[i_to], row by row: each step runs
        on the rows that still have one to take, so a batch costs its rows' steps, not its longest row's."""
        x, i = x.clone(), i_from.clone()
        while True:
            rows = (i > i_to).nonzero().flatten()
            if rows.numel() == 0:
                return x
            row_cond = {k: v[rows.to(v.device)] for k, v in cond.items()}
            x[rows.to(x.device)] = ode_step(self.teacher, x[rows.to(x.device)], self.t[i[rows]].to(x),
                                            self.t[i[rows] - 1].to(x), "heun", row_cond)
            i[rows] -= 1

    def teacher_calls(self):
        """Teacher evaluations per sample, in expectation over (t, s, u): 2 per Heun step."""
        i_t, i_u, _ = self.indices(100000, torch.Generator().manual_seed(0))
        return 2 * (i_t - i_u).double().mean().item()

    def loss(self, group, nets, batch, *, k, generator):
        x, cond = split_batch(batch)
        G, target = nets["net"], nets["target"]
        i_t, i_u, i_s = self.indices(x.shape[0], generator)
        t, u, s = self.t[i_t].to(x), self.t[i_u].to(x), self.t[i_s].to(x)
        eps = torch.full_like(t, self.sigma_min)
        x_t = x + append_dims(t, x.ndim) * randn_like(x, generator)
        if group == "disc":
            with torch.no_grad():
                fake = target(G(x_t, t, s=s, **cond), s, s=eps, **cond)
            return self.gan.d_loss(nets["disc"], x, fake, cond)
        with torch.no_grad():
            x_u = self.solver(x_t, i_t, i_u, cond)
            x_target = target(target(x_u, u, s=s, **cond), s, s=eps, **cond)
        x_est = target(G(x_t, t, s=s, **cond), s, s=eps, **cond)            # gradients reach theta through G
        loss = self.d(x_est, x_target).mean()
        if self.lambda_dsm:
            loss = loss + self.lambda_dsm * self.dsm(G, batch, generator=generator)
        if self.gan:
            loss = loss + self.gan_weight * self.gan.g_loss(nets["disc"], x_est, cond)
        return loss
