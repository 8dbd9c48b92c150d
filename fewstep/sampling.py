"""Samplers: pure functions over a denoiser D(x, sigma, **cond) -> x0_hat in VE ("EDM") coordinates.

Every sampler has the k-diffusion shape `sample_xxx(D, x, sigmas, *, cond=None, generator=None,
progress=False, project=None, ...)`: x is the initial noise already scaled to sigmas[0], sigmas is a
descending 1-D grid (it may end in 0), D sees sigma as a (batch,) tensor in x's dtype, and any fresh
noise comes from `generator` (never the global RNG). The arithmetic runs in float64 and the result has
x's dtype. `project(x, sigma) -> x`, when given, runs after every step on the new x at its level
sigma: zero-shot editing re-imposes what is known there (seed 000, fewstep.editing); None is a no-op.
The PF-ODE they solve is dx/dsigma = (x - D(x, sigma)) / sigma (seed 000, Karras et al.).

Sampling a VP model (seed 002's DDPM / DDIM). `precond.VPPrecond` presents an eps-network on a VP
process as the same D with sigma = sigma_t / alpha_t and x = x_t / alpha_t. Pure noise x_T ~ N(0, I)
in VP coordinates is x = x_T / alpha_T = sqrt(1 + s_T^2) z in VE coordinates (s_T = sigma_T/alpha_T):

    sigmas = vp_sigmas(process, S)                                   # strided schedule, then 0
    x = initial_noise((n, *shape), sigmas[0], generator=g, vp=True)  # sqrt(1 + s_T^2) z
    x0 = sample_ddpm(VPPrecond(net, process), x, sigmas, generator=g)   # or sample_ddim(..., eta=0)
"""

import math

import torch
from tqdm.auto import tqdm

from .precond import append_dims, as_sigma
from .schedules import RHO, SIGMA_MAX, SIGMA_MIN, append_zero, karras_sigmas

LANGEVIN_STEPS, LANGEVIN_RATIO = 100, 0.2       # Song & Ermon (2019): T = 100, epsilon / sigma_L^2 = 2e-5 / 0.01^2

#----------------------------------------------------------------------------
# Shared pieces.


def _generator(generator, device):
    """The caller's generator, or a fresh OS-seeded one: the global RNG is never touched."""
    if generator is not None:
        return generator
    g = torch.Generator(device=device)
    g.seed()
    return g


def _work_dtype(x):
    return torch.float32 if x.device.type == "mps" else torch.float64     # MPS has no float64


def _randn(x, generator):
    """Noise from the generator's device (a CPU generator keeps runs reproducible on any device), on x's."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)


def _denoise(D, x, sigma, cond, dtype):
    """D(x, sigma) called in `dtype` with sigma (a float or (B,) tensor) as a (B,) tensor; returned in x's dtype."""
    return D(x.to(dtype), as_sigma(sigma, x).to(dtype), **(cond or {})).to(x.dtype)


def _slope(D, x, sigma, cond, dtype):
    """The PF-ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (seed 000, Karras et al.)."""
    return (x - _denoise(D, x, sigma, cond, dtype)) / append_dims(as_sigma(sigma, x), x.ndim)


def _steps(sigmas, progress):
    """Pairs (sigma_i, sigma_{i+1}) of the grid as Python floats (float64), with an optional bar."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten().tolist()
    return tqdm(list(zip(s[:-1], s[1:])), disable=None if progress else True)


def _churn(x, sigma, gamma, S_noise, generator):
    """EDM's stochastic churn (Karras et al. 2022, Algorithm 2, lines 4-6): raise the noise level to
    sigma_hat = (1 + gamma) sigma by adding N(0, S_noise^2 (sigma_hat^2 - sigma^2)) noise."""
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    return x + S_noise * math.sqrt(sigma_hat ** 2 - sigma ** 2) * _randn(x, generator), sigma_hat


def _gamma(sigma, n, S_churn, S_tmin, S_tmax):
    """gamma_i = min(S_churn / N, sqrt(2) - 1) inside [S_tmin, S_tmax], else 0 (Algorithm 2, line 3)."""
    return min(S_churn / n, math.sqrt(2) - 1) if S_tmin <= sigma <= S_tmax else 0.0

#----------------------------------------------------------------------------
# EDM's deterministic and stochastic samplers (Karras et al. 2022, Algorithms 1-2).


def ode_step(D, x, sigma, sigma_next, solver="heun", cond=None, *, dtype=None):
    """One Euler, Heun or DPM-Solver-2 step of the PF-ODE from sigma to sigma_next (Euler and Heun: EDM's
    Algorithm 1, lines 4-8, the one-step solver Phi of seed 000's Algorithm 2; "dpm2": see sample_dpm2). The
    second evaluation is skipped where sigma_next = 0 (Euler there). sigma, sigma_next: floats or (B,) tensors;
    D runs in `dtype` (default: x's)."""
    if solver not in ("euler", "heun", "dpm2"):
        raise ValueError(f"unknown ODE solver {solver!r}; choose 'euler', 'heun' or 'dpm2'")
    dtype = dtype or x.dtype
    sigma, sigma_next = as_sigma(sigma, x), as_sigma(sigma_next, x)
    h = append_dims(sigma_next - sigma, x.ndim)
    d = _slope(D, x, sigma, cond, dtype)
    x_next = x + h * d
    last = sigma_next == 0
    if solver == "euler" or last.all():
        return x_next
    if solver == "dpm2":            # the slope at the midpoint in lambda = -ln sigma
        mid = torch.where(last, 1.0, (sigma * sigma_next).sqrt())                  # rows at 0 are dropped
        x_mid = x + append_dims(mid - sigma, x.ndim) * d
        return torch.where(append_dims(last, x.ndim), x_next, x + h * _slope(D, x_mid, mid, cond, dtype))
    d_next = _slope(D, x_next, torch.where(last, 1.0, sigma_next), cond, dtype)   # rows at 0 are dropped
    return torch.where(append_dims(last, x.ndim), x_next, x + h * (d + d_next) / 2)


def _project(project, x, sigma):
    return x if project is None else project(x, sigma)


def _edm_sampler(solver, D, x, sigmas, cond, generator, progress, project, S_churn, S_tmin, S_tmax, S_noise):
    """EDM's Algorithm 2 loop: churn (when S_churn > 0), then one `ode_step` from sigma_hat."""
    dtype, work = x.dtype, _work_dtype(x)
    x, generator, n = x.to(work), _generator(generator, x.device), len(sigmas) - 1
    for sigma, sigma_next in _steps(sigmas, progress):
        x, sigma_hat = _churn(x, sigma, _gamma(sigma, n, S_churn, S_tmin, S_tmax), S_noise, generator)
        x = _project(project, ode_step(D, x, sigma_hat, sigma_next, solver, cond, dtype=dtype), sigma_next)
    return x.to(dtype)


def sample_euler(D, x, sigmas, *, cond=None, generator=None, progress=False, project=None,
                 S_churn=0.0, S_tmin=0.0, S_tmax=float("inf"), S_noise=1.0):
    """Euler steps x <- x + (sigma_next - sigma_hat) (x - D(x, sigma_hat)) / sigma_hat on the PF-ODE
    (seed 000's Euler solver), with EDM's optional churn (Algorithm 2 without the correction)."""
    return _edm_sampler("euler", D, x, sigmas, cond, generator, progress, project, S_churn, S_tmin, S_tmax, S_noise)


def sample_heun(D, x, sigmas, *, cond=None, generator=None, progress=False, project=None,
                S_churn=0.0, S_tmin=0.0, S_tmax=float("inf"), S_noise=1.0):
    """EDM's Heun sampler: Algorithm 1, or Algorithm 2 when S_churn > 0 (Karras et al. 2022); the
    second-order correction is skipped on the step to sigma_next = 0."""
    return _edm_sampler("heun", D, x, sigmas, cond, generator, progress, project, S_churn, S_tmin, S_tmax, S_noise)

#----------------------------------------------------------------------------
# DDIM / DDPM (seed 002, "Accelerated Sampling with DDIM") in VE coordinates.


def ddim_noise(sigma, sigma_next, eta):
    """The fresh-noise level c and the deterministic level sqrt(s^2 - c^2) of one DDIM step t -> s.

    Seed 002's step x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma_t^2) eps_hat + sigma_t z with
    sigma_t = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s) (Song et al. 2020; the seed's
    sigma_t^2 = eta beta_tilde agrees at eta = 0 and 1), divided by alpha_s = sqrt(abar_s) and with
    s^2 = (1 - abar)/abar, is x_s = x0_hat + sqrt(s_s^2 - c^2) eps_hat + c z with
    c = sigma_t / alpha_s = eta s_s sqrt((s_t^2 - s_s^2) / s_t^2) and eps_hat = (x - x0_hat) / s_t.
    """
    c = eta * sigma_next * math.sqrt((sigma ** 2 - sigma_next ** 2) / sigma ** 2)
    return c, (math.sqrt(sigma_next ** 2 - c ** 2) if c else sigma_next)


def sample_ddim(D, x, sigmas, *, eta=0.0, cond=None, generator=None, progress=False, project=None):
    """DDIM with stochasticity eta in [0, 1] (seed 002): eta = 0 is deterministic DDIM, which in VE
    coordinates is exactly Euler's step; eta = 1 is DDPM's ancestral sampler (`sample_ddpm`).

    Each step writes x_s = x0_hat + sqrt(s_s^2 - c^2) eps_hat + c z as Euler's x + (sigma_down - s_t) d,
    d = eps_hat = (x - x0_hat) / s_t, plus c z (`ddim_noise`)."""
    if not 0 <= eta <= 1:
        raise ValueError(f"DDIM needs 0 <= eta <= 1 (0: DDIM, 1: DDPM), got eta={eta}")
    dtype, work = x.dtype, _work_dtype(x)
    x, generator = x.to(work), _generator(generator, x.device)
    for sigma, sigma_next in _steps(sigmas, progress):
        d = _slope(D, x, sigma, cond, dtype)
        c, sigma_down = ddim_noise(sigma, sigma_next, eta)
        x = x + (sigma_down - sigma) * d
        if c:
            x = x + c * _randn(x, generator)
        x = _project(project, x, sigma_next)
    return x.to(dtype)


def sample_ddpm(D, x, sigmas, *, cond=None, generator=None, progress=False, project=None):
    """DDPM's ancestral sampler: DDIM with eta = 1 (seed 002; on `vp_sigmas` it is the strided DDPM)."""
    return sample_ddim(D, x, sigmas, eta=1.0, cond=cond, generator=generator, progress=progress, project=project)


def vp_sigmas(process, S):
    """The VE levels of the strided schedule tau_1 < ... < tau_S = T of a `VPDiscrete` process
    (seed 002, "Strided Sampling Schedule"), descending from s_T, with a 0 appended for the last step."""
    return append_zero(process.ve_sigma(process.strided_timesteps(S)).flip(0))


def initial_noise(shape, sigma_max, *, generator=None, vp=False, dtype=torch.float32, device=None):
    """The sampler's starting point at noise level sigma_max = sigmas[0], in VE coordinates.

    vp=False: x = sigma_max z, the EDM prior N(0, sigma_max^2 I) (seed 000: x_T ~ N(0, T^2 I)).
    vp=True: pure VP noise x_T ~ N(0, I) seen as x = x_T / alpha_T = sqrt(1 + sigma_max^2) z, where
    sigma_max = sigma_T / alpha_T (what a VP model's DDPM / DDIM starts from, seed 002).
    """
    generator = _generator(generator, device or "cpu")
    z = torch.randn(shape, generator=generator, dtype=torch.float64, device=generator.device).to(device)
    scale = math.sqrt(1 + float(sigma_max) ** 2) if vp else float(sigma_max)
    return (scale * z).to(dtype)

#----------------------------------------------------------------------------
# DPM-Solver (Lu et al. 2022a, b; the LCM paper's teacher baselines, seed 004). In VE coordinates alpha = 1 and
# lambda = -ln sigma, so the exponential integrators below are exact in x = x_t / alpha_t for every process.


def sample_dpm2(D, x, sigmas, *, cond=None, generator=None, progress=False, project=None):
    """DPM-Solver-2 (Lu et al. 2022a, the singlestep second-order solver with r = 1/2): per step, an Euler
    step to the midpoint sigma_mid = sqrt(sigma sigma_next) (the half-way point in lambda = -ln sigma), then
    the full step with the slope eps_hat there. With alpha = 1 the solver's x_t = x_s - sigma_t (e^h - 1)
    eps_hat(u) is x_s + (sigma_t - sigma_s) eps_hat(u). The step to sigma = 0 (lambda = inf) is Euler's."""
    dtype, work = x.dtype, _work_dtype(x)
    x = x.to(work)
    for sigma, sigma_next in _steps(sigmas, progress):
        x = _project(project, ode_step(D, x, sigma, sigma_next, "dpm2", cond, dtype=dtype), sigma_next)
    return x.to(dtype)


def sample_dpmpp_2m(D, x, sigmas, *, cond=None, generator=None, progress=False, project=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2, data prediction): with h_i = ln(sigma_i / sigma_{i+1}),
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + (1 - sigma_{i+1} / sigma_i) D_i', where D_i' = (1 + 1/(2 r)) D_i
    - 1/(2 r) D_{i-1} and r = h_{i-1} / h_i; the first step, and the step to sigma = 0, use D_i alone."""
    dtype, work = x.dtype, _work_dtype(x)
    x, D_prev, h_prev = x.to(work), None, None
    for sigma, sigma_next in _steps(sigmas, progress):
        D_i = _denoise(D, x, sigma, cond, dtype)
        if sigma_next == 0:
            x = D_i
        else:
            h = math.log(sigma / sigma_next)
            D_eff = D_i if D_prev is None else D_i + (D_i - D_prev) / (2 * h_prev / h)
            x = sigma_next / sigma * x + (1 - sigma_next / sigma) * D_eff
            h_prev = h
        D_prev = D_i
        x = _project(project, x, sigma_next)
    return x.to(dtype)

#----------------------------------------------------------------------------
# Annealed Langevin dynamics (seed 002; Song & Ermon 2019, Algorithm 1).


def sample_langevin(D, x, sigmas, *, n_steps=LANGEVIN_STEPS, step_scale=None, denoise=True,
                    cond=None, generator=None, progress=False, project=None):
    """Annealed Langevin dynamics (seed 002; Song & Ermon 2019, Algorithm 1): n_steps updates
    x <- x + delta_i/2 score + sqrt(delta_i) z at each nonzero sigma_i, with score = (D(x, sigma_i) - x)
    / sigma_i^2 and delta_i = step_scale sigma_i^2 / sigma_L^2 (sigma_L: the last nonzero level).

    step_scale=None takes Song & Ermon's ratio step_scale / sigma_L^2 = 2e-5 / 0.01^2 = 0.2 on any
    grid. Far above the data scale p(x; sigma) is nearly N(mu, sigma^2 I), where the update diverges
    unless delta_i < 4 sigma_i^2, so step_scale / sigma_L^2 must stay below 4. denoise=True ends with
    x <- D(x, sigma_L), the final denoising step that removes the sigma_L noise the chain leaves
    (Jolicoeur-Martineau et al. 2021).
    """
    levels = [s for s in torch.as_tensor(sigmas, dtype=torch.float64).flatten().tolist() if s > 0]
    if not levels:
        raise ValueError("Langevin dynamics needs at least one nonzero noise level in sigmas")
    step_scale = LANGEVIN_RATIO * levels[-1] ** 2 if step_scale is None else step_scale
    if step_scale / levels[-1] ** 2 >= 4:
        raise ValueError(f"step_scale / sigma_L^2 = {step_scale / levels[-1] ** 2:.3g} >= 4 makes Langevin "
                         f"diverge at high noise; use step_scale <= {LANGEVIN_RATIO * levels[-1] ** 2:.3g}")
    dtype, work = x.dtype, _work_dtype(x)
    x, generator = x.to(work), _generator(generator, x.device)
    for sigma in tqdm(levels, disable=None if progress else True):
        delta = step_scale * sigma ** 2 / levels[-1] ** 2
        for _ in range(n_steps):
            score = (_denoise(D, x, sigma, cond, dtype) - x) / sigma ** 2
            x = x + delta / 2 * score + math.sqrt(delta) * _randn(x, generator)
        x = _project(project, x, sigma)
    if denoise:
        x = _project(project, _denoise(D, x, levels[-1], cond, dtype), 0.0)
    return x.to(dtype)

#----------------------------------------------------------------------------
# Multistep consistency sampling (seed 000, Algorithm 1).


def consistency_taus(n_steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """n_steps time points T = tau_0 > tau_1 > ... > sigma_min: the Karras grid of n_steps + 1 levels
    without its last point sigma_min (so one step is [T], two are [T, mid-level], ...)."""
    if n_steps < 1:
        raise ValueError(f"consistency sampling needs n_steps >= 1, got {n_steps}")
    return karras_sigmas(n_steps + 1, sigma_min, sigma_max, rho)[:-1]


def check_taus(taus, sigma_min):
    taus = torch.as_tensor(taus, dtype=torch.float64).flatten().tolist()
    if not taus:
        raise ValueError("taus is empty; pass at least [T], e.g. consistency_taus(1)")
    T = taus[0]
    if any(t > T for t in taus[1:]):
        raise ValueError(f"taus {taus} has a tau above T = taus[0] = {T}; taus[0] is the noise level of x "
                         "and must be the largest")
    if any(b >= a for a, b in zip(taus, taus[1:])):
        raise ValueError(f"taus {taus} must be strictly decreasing (tau_1 > tau_2 > ..., Algorithm 1)")
    if taus[-1] <= sigma_min:
        raise ValueError(f"every tau must exceed sigma_min = {sigma_min}, got {taus[-1]}; drop it "
                         "(f(x, sigma_min) = x adds nothing) or use consistency_taus()")
    return taus


def sample_consistency(f, x, taus, *, sigma_min=SIGMA_MIN, cond=None, generator=None, progress=False,
                       project=None):
    """Multistep consistency sampling (Algorithm 1, seed 000): x <- f(x_T, T) with T = taus[0] and x
    already noise at T; then for each later tau_n: x_hat = x + sqrt(tau_n^2 - sigma_min^2) z,
    x <- f(x_hat, tau_n). taus must be strictly decreasing in (sigma_min, T]. One step is f(x_T, T).
    With `project`, each f output (a clean estimate, level 0) is projected: seed 000's zero-shot
    editing (Song et al. 2023, Algorithm 4)."""
    taus = check_taus(taus, sigma_min)
    dtype, work = x.dtype, _work_dtype(x)
    generator = _generator(generator, x.device)
    x = _project(project, _denoise(f, x.to(work), taus[0], cond, dtype), 0.0)
    for tau in tqdm(taus[1:], disable=None if progress else True):
        x_hat = x + math.sqrt(tau ** 2 - sigma_min ** 2) * _randn(x, generator)
        x = _project(project, _denoise(f, x_hat, tau, cond, dtype), 0.0)
    return x.to(dtype)

def sample_gamma(G, x, taus, *, gamma=0.0, sigma_min=SIGMA_MIN, cond=None, generator=None, progress=False,
                 project=None):
    """CTM's gamma-sampling (seed 003; Kim et al. 2024) over the time points taus (as Algorithm 1's, then
    sigma_min): from t_n jump with G(x, t_n, s') to s' = max(sqrt(1 - gamma^2) t_{n+1}, sigma_min), then add
    noise to reach t_{n+1}. gamma = 0 is deterministic (every step a jump along the trajectory); gamma = 1 is
    Algorithm 1 with the same noise. `project` acts on each jump's landing point at its level s'."""
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1] (0: deterministic, 1: consistency sampling), got {gamma}")
    taus = check_taus(taus, sigma_min) + [sigma_min]
    dtype, work = x.dtype, _work_dtype(x)
    x, generator = x.to(work), _generator(generator, x.device)
    for t, t_next in tqdm(list(zip(taus[:-1], taus[1:])), disable=None if progress else True):
        s = max(math.sqrt(1 - gamma ** 2) * t_next, sigma_min)
        x = G(x.to(dtype), as_sigma(t, x).to(dtype), s=as_sigma(s, x).to(dtype), **(cond or {})).to(work)
        x = _project(project, x, s if s > sigma_min else 0.0)      # at sigma_min: a clean estimate, as Algorithm 1's
        if t_next > s:
            x = x + math.sqrt(t_next ** 2 - s ** 2) * _randn(x, generator)
    return x.to(dtype)

def sample_lcm(f, x, sigmas, *, cond=None, generator=None, progress=False, project=None):
    """LCM's multistep sampler (seed 004; Luo et al. 2023, Algorithm 3) over descending noise levels (of its
    timesteps, `processes.VPDiscrete.lcm_timesteps`): x0 = f(x, sigma_0); then for each later level
    x = x0 + sigma_n z (in VP coordinates z_n = alpha_n x0 + sigma_n eps) and x0 = f(x, sigma_n). Like
    Algorithm 1, but noised to the level itself, as LCM's scheduler does."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten().tolist()
    if not s or any(b >= a for a, b in zip(s, s[1:])) or s[-1] <= 0:
        raise ValueError(f"LCM samples on strictly decreasing positive noise levels, got {s}")
    dtype, work = x.dtype, _work_dtype(x)
    generator = _generator(generator, x.device)
    x = _project(project, _denoise(f, x.to(work), s[0], cond, dtype), 0.0)
    for sigma in tqdm(s[1:], disable=None if progress else True):
        x = _project(project, _denoise(f, x + sigma * _randn(x, generator), sigma, cond, dtype), 0.0)
    return x.to(dtype)

#----------------------------------------------------------------------------
# Registry and cost.

SAMPLERS = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "langevin": sample_langevin,
    "dpm2": sample_dpm2,
    "dpmpp-2m": sample_dpmpp_2m,
}
# Samplers of few-step models, driven by the model's own parameterization rather than a denoiser:
# multistep consistency sampling, CTM's gamma sampling and LCM's multistep sampler (seed 004).
FEW_STEP_SAMPLERS = ("consistency", "gamma", "lcm")


def nfe(name, sigmas, *, n_steps=LANGEVIN_STEPS, denoise=True):
    """Network evaluations of sampler `name` on the grid `sigmas` (taus for "consistency"). Heun costs
    2 per step but 1 on a step to 0: EDM's 18 steps ending in 0 cost 35."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten().tolist()
    if name in ("euler", "ddim", "ddpm", "dpmpp-2m"):
        return len(s) - 1
    if name in ("heun", "dpm2"):
        return 2 * (len(s) - 1) - sum(1 for v in s[1:] if v == 0)
    if name == "langevin":
        return n_steps * sum(1 for v in s if v > 0) + int(denoise)
    if name in FEW_STEP_SAMPLERS:
        return len(s)
    raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS) + list(FEW_STEP_SAMPLERS)}")
