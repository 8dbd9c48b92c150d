"""Consistency models: distillation (CD), training (CT), improved CT (iCT) and the continuous-time
objectives (seeds 000 and 004). Every method is `loss = method(net, batch, target=..., k=..., generator=...)`
with `net` a consistency function f_theta(x, sigma, **cond) (precond.ConsistencyPrecond)."""

import torch
from torch.func import jvp

from ..kinds import CONSISTENCY
from ..precond import append_dims
from ..processes import VE
from ..sampling import ode_step
from ..schedules import (RHO, SIGMA_MAX, SIGMA_MIN, cm_timesteps, ct_mu, ct_N, ict_index_probs, ict_N,
                         sample_karras_uniform)
from .base import Method
from .common import make_distance, randn_like, split_batch


def _pick(grid, n, y):
    """grid[n] as a (B,) tensor in y's dtype."""
    return grid[n].to(y)


class ConsistencyDistillation(Method):
    """Algorithm 2 of seed 000: d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta^-(x_hat_{t_n}, t_n)) with
    x_hat_{t_n} one Euler or Heun step of the teacher's PF-ODE, n ~ U[1, N-1], theta^- an EMA of rate mu."""

    produces, process = CONSISTENCY, VE

    def emas(self):
        return {"target": ("net", self.mu)}             # theta^-, updated with rate mu(k)

    def __init__(self, teacher, N=18, solver="heun", distance="l2", mu=0.95, weighting="uniform",
                 sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO, feature_net=None, c=None):
        if solver not in ("euler", "heun"):
            raise ValueError(f"unknown CD solver {solver!r}; choose 'euler' or 'heun'")
        self.teacher, self.N, self.solver, self.mu_value = teacher, N, solver, mu
        self.t = cm_timesteps(N, sigma_min, sigma_max, rho)
        self.d, self.weighting = make_distance(distance, feature_net, c), _check_weighting(weighting)

    def mu(self, k):
        return self.mu_value

    def __call__(self, net, batch, *, target, k=0, generator=None):
        x, cond = split_batch(batch)
        n = torch.randint(1, self.N, (x.shape[0],), generator=generator)          # 1-based n; t[n] = t_{n+1}
        t_n, t_n1 = _pick(self.t, n - 1, x), _pick(self.t, n, x)
        x_t_n1 = x + append_dims(t_n1, x.ndim) * randn_like(x, generator)
        with torch.no_grad():
            x_hat_t_n = ode_step(self.teacher, x_t_n1, t_n1, t_n, self.solver, cond)
        return _pair_loss(self, net, target, x_t_n1, t_n1, x_hat_t_n, t_n, cond)


class ConsistencyTraining(Method):
    """Algorithm 3 of seed 000: d(f_theta(x + t_{n+1} z, t_{n+1}), f_theta^-(x + t_n z, t_n)) with the
    adaptive schedules N(k) and mu(k) over K training steps."""

    produces, process = CONSISTENCY, VE

    def emas(self):
        return {"target": ("net", self.mu)}             # theta^-, updated with rate mu(k)

    def __init__(self, K, s0=2, s1=150, mu0=0.9, distance="l2", weighting="uniform",
                 sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO, feature_net=None, c=None):
        if not 2 <= s0 <= s1:
            raise ValueError(f"CT needs 2 <= s0 <= s1 (N(0) = s0 points), got s0={s0}, s1={s1}")
        if not 0 < mu0 < 1:             # mu(k) = exp(s0 log(mu0) / N(k)): log(0) is undefined
            raise ValueError(f"CT needs 0 < mu0 < 1 (the EMA rate of theta^- at N = s0), got mu0={mu0}")
        self.K, self.s0, self.s1, self.mu0 = K, s0, s1, mu0
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.d, self.weighting = make_distance(distance, feature_net, c), _check_weighting(weighting)

    def N(self, k):
        return ct_N(k, self.K, self.s0, self.s1)

    def mu(self, k):
        return ct_mu(k, self.K, self.s0, self.s1, self.mu0)

    def __call__(self, net, batch, *, target, k=0, generator=None):
        x, cond = split_batch(batch)
        N = self.N(k)
        t = cm_timesteps(N, self.sigma_min, self.sigma_max, self.rho)
        n = torch.randint(1, N, (x.shape[0],), generator=generator)
        return _ct_pair_loss(self, net, target, x, cond, _pick(t, n - 1, x), _pick(t, n, x), generator)


class ImprovedConsistencyTraining(Method):
    """iCT (seed 004): lambda(sigma_i) = 1/(sigma_{i+1} - sigma_i), pseudo-Huber d, the exponential
    curriculum N(k), lognormal index sampling p(i), and theta^- = stopgrad(theta): no EMA teacher."""

    produces, process = CONSISTENCY, VE

    def __init__(self, K, s0=10, s1=1280, P_mean=-1.1, P_std=2.0, distance="pseudo-huber",
                 weighting="inverse-dsigma", sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO,
                 feature_net=None, c=None):
        if not 1 <= s0 <= s1:
            raise ValueError(f"iCT needs 1 <= s0 <= s1, got s0={s0}, s1={s1}")
        self.K, self.s0, self.s1, self.P_mean, self.P_std = K, s0, s1, P_mean, P_std
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.d, self.weighting = make_distance(distance, feature_net, c), _check_weighting(weighting)

    def N(self, k):
        return ict_N(k, self.K, self.s0, self.s1)

    def __call__(self, net, batch, *, target=None, k=0, generator=None):
        x, cond = split_batch(batch)
        sigmas = cm_timesteps(self.N(k), self.sigma_min, self.sigma_max, self.rho)
        p = ict_index_probs(sigmas, self.P_mean, self.P_std)
        i = torch.multinomial(p, x.shape[0], replacement=True, generator=generator)   # 0-based: sigma_i = sigmas[i]
        return _ct_pair_loss(self, net, net, x, cond, _pick(sigmas, i, x), _pick(sigmas, i + 1, x), generator)


def _ct_pair_loss(method, net, target, x, cond, t_n, t_n1, generator):
    """CT's pair (x + t_{n+1} z, x + t_n z) with one z: eq. (10) of seed 000."""
    z = randn_like(x, generator)
    return _pair_loss(method, net, target, x + append_dims(t_n1, x.ndim) * z, t_n1,
                      x + append_dims(t_n, x.ndim) * z, t_n, cond)


def _pair_loss(method, net, target, x_n1, t_n1, x_n, t_n, cond):
    """lambda(t_n) d(f_theta(x_{t_{n+1}}, t_{n+1}), stopgrad f_target(x_{t_n}, t_n)), averaged over the batch.

    Dropout: the target's pass runs on a copy of the RNG state that the student's pass then uses, so a
    target in train mode draws the student's masks. iCT's target is the online network itself, theta^- =
    stopgrad(theta) with no EMA (seed 004): in train mode, with the same masks, it is the very function
    f_theta being trained. CD's and CT's target is the EMA theta^- (seed 000), kept in eval mode: no dropout."""
    with torch.random.fork_rng(devices=[x_n.device] if x_n.device.type == "cuda" else []), torch.no_grad():
        f_target = target(x_n, t_n, **cond)
    return (_weight(method.weighting, t_n, t_n1) * method.d(net(x_n1, t_n1, **cond), f_target)).mean()


def _check_weighting(name):
    if name not in ("uniform", "inverse-dsigma"):
        raise ValueError(f"unknown weighting {name!r}; choose 'uniform' or 'inverse-dsigma'")
    return name


def _weight(name, t_n, t_n1):
    """lambda(t_n): 1 (seed 000's default) or iCT's 1/(sigma_{i+1} - sigma_i) (seed 004)."""
    return torch.ones_like(t_n) if name == "uniform" else 1 / (t_n1 - t_n)


#----------------------------------------------------------------------------
# Continuous-time objectives (seed 000, "Continuous-time objectives"). t is drawn uniformly in
# t^(1/rho) on [sigma_min, sigma_max], the N -> infinity limit of n ~ U[1, N-1] on the Karras grid.


def _total_derivative(f, x_t, t, dx_dt, cond):
    """d/dt f(x_t, t) along dx/dt, as one Jacobian-vector product (forward-mode AD)."""
    return jvp(lambda x, s: f(x, s, **cond), (x_t, t), (dx_dt, torch.ones_like(t)))


class ContinuousCD(Method):
    """Continuous-time CD: E[lambda(t) ||df_theta/dt - t df_theta/dx s_phi(x_t, t)||^2] (seed 000), i.e. the
    squared total derivative of f_theta along the teacher's PF-ODE dx/dt = -t s_phi = (x - D_phi) / t.
    No stopgrad: gradients flow through the JVP."""

    produces, process = CONSISTENCY, VE

    def __init__(self, teacher, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
        self.teacher, self.sigma_min, self.sigma_max, self.rho = teacher, sigma_min, sigma_max, rho

    def __call__(self, net, batch, *, target=None, k=0, generator=None):
        x, cond = split_batch(batch)
        t = sample_karras_uniform(x.shape[0], generator, self.sigma_min, self.sigma_max, self.rho).to(x)
        x_t = x + append_dims(t, x.ndim) * randn_like(x, generator)
        with torch.no_grad():
            dx_dt = (x_t - self.teacher(x_t, t, **cond)) / append_dims(t, x.ndim)
        _, df_dt = _total_derivative(net, x_t, t, dx_dt, cond)
        return df_dt.square().flatten(1).sum(1).mean()


class ContinuousCT(Method):
    """Continuous-time CT: 2 E[lambda(t) f_theta(x_t, t)^T (df_theta^-/dt + df_theta^-/dx (x_t - x)/t)] with
    theta^- = stopgrad(theta) (seed 000). The value is not a distance (it can be negative); its gradient
    is that of the continuous CT objective."""

    produces, process = CONSISTENCY, VE

    def __init__(self, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho

    def __call__(self, net, batch, *, target=None, k=0, generator=None):
        x, cond = split_batch(batch)
        t = sample_karras_uniform(x.shape[0], generator, self.sigma_min, self.sigma_max, self.rho).to(x)
        z = randn_like(x, generator)
        x_t = x + append_dims(t, x.ndim) * z                         # (x_t - x) / t = z
        with torch.no_grad():
            _, df_dt = _total_derivative(net, x_t, t, z, cond)
        return 2 * (net(x_t, t, **cond) * df_dt).flatten(1).sum(1).mean()
