"""Consistency trajectory models (CTM; seeds 003 and 004) against known answers.

For Gaussian data N(mu, s^2 I) the PF-ODE map is closed form and linear (`GaussianMixture.ode_solution`:
x(sigma) - mu is proportional to sqrt(s^2 + sigma^2)), so the exact CTM is G*(x, t, s) = ode_solution(x, t, s),
with g* solving G* = (s/t) x + (1 - s/t) g*. Every check here has an answer fixed in advance: the
parameterisation's boundaries, the teacher initialisation (G = the teacher's Euler jump), gamma-sampling (exact
landing at gamma = 0, Algorithm 1 at gamma = 1, the data's law at any gamma), the loss of the exact G (only the
teacher's Heun error remains, falling at Heun's order) and the (t, u, s) draws. All in VE coordinates, float64."""

import math

import pytest
import torch
from torch import nn

from fewstep.config import TrainConfig
from fewstep.data.toy2d import GaussianMixture
from fewstep.kinds import TRAJECTORY
from fewstep.methods import METHODS
from fewstep.methods.trajectory import ConsistencyTrajectory
from fewstep.nets.mlp import MLP
from fewstep.precond import EDMPrecond, TrajectoryPrecond, edm_scalings
from fewstep.sampling import ode_step, sample_consistency, sample_gamma
from fewstep.schedules import SIGMA_DATA, SIGMA_MIN, cm_timesteps

MU, S = (0.3, -0.2), 0.5
GM = GaussianMixture([MU], [S])
EPS = SIGMA_MIN


def exact_G(x, t, s):
    """The PF-ODE map of N(mu, s^2 I) from t to s: G*(x, t, s)."""
    return GM.ode_solution(x, t, s)


def exact_g(x, t, s):
    """g* from G* = (s/t) x + (1 - s/t) g*; at s = t its limit, the denoiser E[x0 | x_t] (seed 004)."""
    t, s = t.reshape(-1, 1), s.reshape(-1, 1)
    same = (s - t).abs() <= 1e-12 * t
    r = torch.where(same, torch.zeros_like(s), s / t)
    g = (exact_G(x, t, s) - r * x) / (1 - r)
    return torch.where(same, GM.denoiser(x, t.flatten()), g)


def teacher(x, sigma, **cond):
    """The exact denoiser with the sampler contract D(x, sigma, **cond)."""
    return GM.denoiser(x, sigma)


class ExactCTM(nn.Module):
    """G*(x, sigma, s) with TrajectoryPrecond's calling convention: without s, the denoiser g*(x, t, t)."""

    def forward(self, x, sigma, s=None, **cond):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
        if s is None:
            return GM.denoiser(x, sigma)
        return exact_G(x, sigma, torch.as_tensor(s, dtype=x.dtype).expand(x.shape[0]))


class OracleNet(nn.Module):
    """A raw network F(c_in x, c_noise(t), s=ln(s)/4) that inverts TrajectoryPrecond's EDM scalings onto g*:
    wrapped, it must be the exact G* at every (t, s) if the wrapper feeds t, s and the scalings correctly."""

    def __init__(self):
        super().__init__()
        self.scalar_emb = {"s": None}           # TrajectoryPrecond checks the network embeds s

    def forward(self, x_in, c_noise, s):
        t, s = (4 * c_noise).exp(), (4 * s).exp()
        c_skip, c_out, c_in, _ = (c.reshape(-1, 1) for c in edm_scalings(t, SIGMA_DATA))
        x = x_in / c_in
        return (exact_g(x, t, s) - c_skip * x) / c_out


def _times(n, gen, lo=EPS, hi=80.0):
    """n pairs sigma_min <= s <= t <= 80, log-uniform t, s a uniform fraction of the way down in log."""
    t = (math.log(lo * 1.5) + torch.rand(n, generator=gen, dtype=torch.float64) * math.log(hi / (lo * 1.5))).exp()
    s = (t.log() + torch.rand(n, generator=gen, dtype=torch.float64) * (math.log(lo) - t.log())).exp()
    return t, s


def _mlp(scalars=("s",), std=0.3, seed=0):
    torch.manual_seed(seed)
    net = MLP(dim=2, width=16, depth=1, scalars=scalars)
    for p in net.parameters():
        nn.init.normal_(p, std=std)
    return net.double()


#----------------------------------------------------------------------------
# 1. The exact CTM of a Gaussian, and TrajectoryPrecond wired around it.


def test_exact_gaussian_ctm_boundaries_and_g_is_the_denoiser_at_s_equals_t():
    gen = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t, s = _times(64, gen)
    torch.testing.assert_close(exact_G(x, t, t), x, rtol=0, atol=1e-14)                        # G(x, t, t) = x
    torch.testing.assert_close(exact_G(x, t, torch.full_like(t, EPS)), GM.consistency_function(x, t, EPS))
    # jumps compose along the trajectory: G(G(x, t, u), u, s) = G(x, t, s)
    u = (t * s).sqrt()
    torch.testing.assert_close(exact_G(exact_G(x, t, u), u, s), exact_G(x, t, s), rtol=1e-12, atol=1e-12)
    # seed 004: lim_{s -> t} g(x, t, s) = E[x0 | x_t], the denoiser; g is smooth in s, so the gap is O(t - s)
    for delta in (1e-3, 1e-5):
        gap = (exact_g(x, t, t * (1 - delta)) - GM.denoiser(x, t)).abs().max().item()
        assert gap < 20 * delta * (x.abs().max().item() + 1), (delta, gap)
    # and G* is not the identity or the one-step denoiser: the checks above have something to find
    assert (exact_G(x, t, s) - x).abs().max() > 0.1
    assert (exact_G(x, t, s) - (s / t)[:, None] * x - (1 - s / t)[:, None] * GM.denoiser(x, t)).abs().max() > 1e-3


def test_trajectory_precond_around_an_oracle_network_is_the_exact_pf_ode_map():
    G = TrajectoryPrecond(OracleNet(), SIGMA_DATA, EPS)
    gen = torch.Generator().manual_seed(1)
    x = 2.0 * torch.randn(256, 2, generator=gen, dtype=torch.float64)
    t, s = _times(256, gen)
    t = t * (1 + 2.0 * torch.rand(256, generator=gen, dtype=torch.float64))        # x far from and near the data
    torch.testing.assert_close(G(x, t, s=s), exact_G(x, t, s), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(G.consistency(x, t), GM.consistency_function(x, t, EPS), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(G(x, t), GM.denoiser(x, t), rtol=1e-9, atol=1e-9)      # no s: g(x, t, t)
    assert torch.equal(G(x, t, s=t), x)                                                 # exactly, by construction


#----------------------------------------------------------------------------
# 2. TrajectoryPrecond around a real MLP; the teacher initialisation.


def test_trajectory_precond_parameterisation_on_a_random_mlp():
    G = TrajectoryPrecond(_mlp(), SIGMA_DATA, EPS)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(32, 2, generator=gen, dtype=torch.float64)
    t, s = _times(32, gen)
    assert torch.equal(G(x, t, s=t), x)
    r = (s / t)[:, None]
    torch.testing.assert_close(G(x, t, s=s), r * x + (1 - r) * G.g(x, t, s), rtol=1e-13, atol=1e-13)
    # with random weights g depends on s: G is more than an Euler step of its own denoiser
    assert (G.g(x, t, s) - G(x, t)).abs().max() > 1e-3


def test_zeroed_s_embedding_makes_G_the_euler_jump_of_its_denoiser():
    net = _mlp()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "scalar_emb" in name and ".linear." in name:
                p.zero_()
    G = TrajectoryPrecond(net, SIGMA_DATA, EPS)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(32, 2, generator=gen, dtype=torch.float64)
    t, s = _times(32, gen)
    assert torch.equal(G.g(x, t, s), G(x, t))                      # g no longer depends on s
    euler = ode_step(G, x, t, s, "euler")                          # x + (s - t) (x - D(x, t)) / t
    torch.testing.assert_close(G(x, t, s=s), euler, rtol=1e-12, atol=1e-12)


def test_own_scalar_embeddings_start_the_student_as_its_teachers_euler_jump():
    from fewstep.train import _own_scalar_embeddings
    teacher_net, student_net = _mlp(scalars=(), seed=4), _mlp(seed=5)
    teacher_state = teacher_net.state_dict()
    own = _own_scalar_embeddings(student_net, teacher_state)
    scalar_keys = {k for k in student_net.state_dict() if k.startswith("scalar_emb.")}
    assert set(own) == scalar_keys == set(student_net.state_dict()) - set(teacher_state)
    for key, value in own.items():
        if ".linear." in key:
            assert torch.count_nonzero(value) == 0, key
        else:                                                      # the Fourier frequencies stay as built
            assert torch.equal(value, student_net.state_dict()[key]), key
    assert any(".linear." in k for k in own) and any(".linear." not in k for k in own)
    student_net.load_state_dict({**teacher_state, **own})
    D, G = EDMPrecond(teacher_net, SIGMA_DATA), TrajectoryPrecond(student_net, SIGMA_DATA, EPS)
    gen = torch.Generator().manual_seed(6)
    x = 3.0 * torch.randn(32, 2, generator=gen, dtype=torch.float64)
    t, s = _times(32, gen)
    assert torch.equal(G(x, t), D(x, t))                           # g(x, t, t) is the teacher's denoiser
    torch.testing.assert_close(G(x, t, s=s), ode_step(D, x, t, s, "euler"), rtol=1e-12, atol=1e-12)


#----------------------------------------------------------------------------
# 3. gamma-sampling.


def test_gamma_one_is_multistep_consistency_sampling_with_the_same_noise():
    G = TrajectoryPrecond(_mlp(), SIGMA_DATA, EPS)
    x_T = 80.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for taus in ([80.0], [80.0, 2.0], [80.0, 10.0, 1.0, 0.1]):
        a = sample_gamma(G, x_T, taus, gamma=1.0, sigma_min=EPS, generator=torch.Generator().manual_seed(8))
        b = sample_consistency(G.consistency, x_T, taus, sigma_min=EPS, generator=torch.Generator().manual_seed(8))
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # ...and gamma < 1 is not: a different s' and noise
    c = sample_gamma(G, x_T, taus, gamma=0.5, sigma_min=EPS, generator=torch.Generator().manual_seed(8))
    assert (c - b).abs().max() > 1e-3


def test_gamma_zero_is_deterministic_and_lands_on_the_exact_trajectory():
    x_T = 80.0 * torch.randn(128, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    G = TrajectoryPrecond(_mlp(), SIGMA_DATA, EPS)
    taus = [80.0, 10.0, 1.0, 0.1]
    a = sample_gamma(G, x_T, taus, gamma=0.0, generator=torch.Generator().manual_seed(1))
    b = sample_gamma(G, x_T, taus, gamma=0.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    end = exact_G(x_T, torch.full((128,), 80.0, dtype=torch.float64), torch.full((128,), EPS, dtype=torch.float64))
    for taus in ([80.0], [80.0, 3.0], [80.0, 10.0, 1.0, 0.1], [80.0, 40.0, 20.0, 5.0, 0.5, 0.01]):
        y = sample_gamma(ExactCTM(), x_T, taus, gamma=0.0, sigma_min=EPS, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(y, end, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.8, 1.0])
def test_gamma_sampling_of_the_exact_ctm_keeps_the_datas_law(gamma):
    """From x_T ~ p_T = N(mu, (s^2 + T^2) I), every exact jump keeps the marginal p_sigma and every re-noising
    to t_{n+1} gives p_{t_{n+1}}: the samples are p_{sigma_min} = N(mu, (s^2 + sigma_min^2) I) at any gamma."""
    n, T = 100_000, 80.0
    gen = torch.Generator().manual_seed(10)
    x_T = torch.tensor(MU, dtype=torch.float64) + math.sqrt(S ** 2 + T ** 2) * torch.randn(n, 2, generator=gen,
                                                                                           dtype=torch.float64)
    y = sample_gamma(ExactCTM(), x_T, [T, 4.0, 0.6], gamma=gamma, sigma_min=EPS, generator=gen)
    var = S ** 2 + EPS ** 2
    assert (y.mean(0) - torch.tensor(MU, dtype=torch.float64)).abs().max() < 5 * math.sqrt(var / n)
    assert torch.allclose(y.var(0), torch.full((2,), var, dtype=torch.float64), rtol=0.025)     # 5.6 sd of a variance


def test_gamma_sampling_jumps_to_sqrt_one_minus_gamma_squared_and_renoises_by_gamma():
    """Seed 003 (Kim et al. 2024): x <- G(x, t_n, sqrt(1 - gamma^2) t_{n+1}), then x <- x + gamma t_{n+1} z (in VE:
    the noise that lifts s' to t_{n+1}); the last jump lands on sigma_min, and s' never goes below it."""
    calls = []

    class Recording(ExactCTM):
        def forward(self, x, sigma, s=None, **cond):
            out = super().forward(x, sigma, s)
            calls.append((x.clone(), sigma[0].item(), s[0].item(), out.clone()))
            return out

    gamma, taus, n = 0.6, [80.0, 5.0, 0.003], 50_000
    x_T = 80.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    y = sample_gamma(Recording(), x_T, taus, gamma=gamma, sigma_min=EPS, generator=torch.Generator().manual_seed(17))
    assert [c[1] for c in calls] == taus
    assert [c[2] for c in calls] == pytest.approx([0.8 * 5.0, max(0.8 * 0.003, EPS), EPS], rel=1e-12)
    assert torch.equal(calls[0][0], x_T) and torch.equal(y, calls[-1][3])
    for (_, _, s, out), (x_next, t_next, _, _) in zip(calls, calls[1:]):
        noise = x_next - out
        assert noise.std().item() == pytest.approx(math.sqrt(t_next ** 2 - s ** 2), rel=0.02)
    assert math.sqrt(5.0 ** 2 - calls[0][2] ** 2) == pytest.approx(gamma * 5.0)         # = gamma t_{n+1} unclamped


def test_gamma_outside_the_unit_interval_is_refused():
    G = ExactCTM()
    for gamma in (-0.1, 1.5):
        with pytest.raises(ValueError, match="gamma"):
            sample_gamma(G, torch.zeros(2, 2, dtype=torch.float64), [80.0], gamma=gamma)


#----------------------------------------------------------------------------
# 4. The CTM loss of the exact G: only the teacher's Heun error remains.


def _exact_loss(N, max_solver_steps, n=20_000, lambda_dsm=0.0, seed=1, nets=None):
    ctm = ConsistencyTrajectory(teacher, N=N, max_solver_steps=max_solver_steps, lambda_dsm=lambda_dsm)
    x = GM.sample(n, generator=torch.Generator().manual_seed(0)).double()
    nets = nets or {"net": ExactCTM(), "target": ExactCTM()}
    g = torch.Generator().manual_seed(seed)
    return ctm, x, g, ctm.loss("net", nets, x, k=0, generator=g)


@pytest.mark.parametrize("max_solver_steps, low, high", [(None, 12.0, 30.0), (1, 40.0, 100.0)])
def test_exact_ctm_loss_falls_at_heuns_order_as_the_grid_is_refined(max_solver_steps, low, high):
    """x_est = G*(G*(x_t, t, s), s, eps) = G*(x_t, t, eps) and x_target = G*(Heun(x_t, t -> u), u, eps), so the l2
    loss is E |r(u) e|^2 with e the teacher's Heun error from t to u. Doubling the grid's intervals halves each step:
    over many steps (global, u uniform in [s, t)) e is O(h^2), the loss falls 2^4 = 16 fold (measured 21, 19);
    one step (local, like CD) has e = O(h^3) and the loss falls 2^6 = 64 fold (measured 74, 66). An Euler solver
    would give 4 and 16, a solver on the wrong grid or a G* misplaced in the loss no convergence at all."""
    losses = [_exact_loss(N, max_solver_steps)[3].item() for N in (17, 33, 65)]
    assert losses[-1] < 1e-6
    ratios = [a / b for a, b in zip(losses, losses[1:])]
    assert all(low < r < high for r in ratios), (losses, ratios)


def test_exact_ctm_loss_sees_a_wrong_G_and_adds_the_dsm_term_on_g_at_s_equals_t():
    class EulerJump(ExactCTM):                 # the teacher-initialised student: G = the exact denoiser's Euler jump
        def forward(self, x, sigma, s=None, **cond):
            return super().forward(x, sigma) if s is None else ode_step(teacher, x, sigma, s, "euler")

    _, _, _, exact = _exact_loss(33, None, n=4000)
    _, _, _, wrong = _exact_loss(33, None, n=4000, nets={"net": EulerJump(), "target": ExactCTM()})
    assert wrong.item() > 1e3 * exact.item() and wrong.item() > 1e-2          # measured 0.095 vs 1.5e-5
    # lambda_dsm: EDM's loss of g(x, t, t) on the same batch, drawn from the generator after the CTM terms
    ctm, x, g, base = _exact_loss(33, None, n=4000)
    dsm = ctm.dsm(ExactCTM(), x, generator=g)
    _, _, _, total = _exact_loss(33, None, n=4000, lambda_dsm=0.5)
    torch.testing.assert_close(total, base + 0.5 * dsm, rtol=1e-12, atol=0)
    assert dsm.item() > 0.1                    # the irreducible DSM loss of the ideal denoiser is not zero


def test_ctm_loss_is_seed_003s_objective_term_by_term():
    """With G_theta and G_sg two different random networks (so a swap, a skipped jump or a wrong time shows):
    x_est = G_sg(G_theta(x_t, t, s), s, eps), x_target = G_sg(G_sg(Solver(x_t, t, u), u, s), s, eps), l2."""
    net, target = (TrajectoryPrecond(_mlp(seed=seed, std=0.2), SIGMA_DATA, EPS) for seed in (13, 14))
    ctm = ConsistencyTrajectory(teacher, N=12, max_solver_steps=None, lambda_dsm=0.0)
    x = GM.sample(512, generator=torch.Generator().manual_seed(0)).double()
    loss = ctm.loss("net", {"net": net, "target": target}, x, k=0, generator=torch.Generator().manual_seed(15))
    g = torch.Generator().manual_seed(15)
    i_t, i_u, i_s = ctm.indices(512, g)
    t, u, s = (cm_timesteps(12).double()[i] for i in (i_t, i_u, i_s))
    eps = torch.full_like(t, EPS)
    x_t = x + t[:, None] * torch.randn(x.shape, generator=g).double()
    x_u = x_t.clone()                                  # the teacher's Heun steps down the grid, row by row
    for row in range(512):
        for i in range(i_t[row].item(), i_u[row].item(), -1):
            x_u[row:row + 1] = ode_step(teacher, x_u[row:row + 1], ctm.t[i:i + 1].double(), ctm.t[i - 1:i].double())
    with torch.no_grad():
        x_est = target(net(x_t, t, s=s), s, s=eps)
        x_target = target(target(x_u, u, s=s), s, s=eps)
    torch.testing.assert_close(loss.detach(), (x_est - x_target).square().sum(1).mean(), rtol=1e-10, atol=0)


def test_ctm_loss_gradient_reaches_G_and_its_s_embedding():
    net, target = TrajectoryPrecond(_mlp(seed=11), SIGMA_DATA, EPS), TrajectoryPrecond(_mlp(seed=11), SIGMA_DATA, EPS)
    target.requires_grad_(False)                       # as the training loop's EMA copy
    ctm = ConsistencyTrajectory(teacher, N=9, max_solver_steps=2)
    x = GM.sample(64, generator=torch.Generator().manual_seed(0)).double()
    loss = ctm.loss("net", {"net": net, "target": target}, x, k=0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(gr is not None for gr in grads) and sum(gr.abs().sum() for gr in grads) > 0
    assert net.net.scalar_emb["s"].linear.weight.grad.abs().sum() > 0          # the s-embedding learns too


#----------------------------------------------------------------------------
# 5. The (t, u, s) draws.


def _expected_steps(N, m):
    """E[k] exactly: i_t uniform on 1..N-1, i_s uniform on 0..i_t-1, k uniform on 1..min(i_t - i_s, m)."""
    total = 0.0
    for i_t in range(1, N):
        for i_s in range(i_t):
            span = i_t - i_s if m is None else min(i_t - i_s, m)
            total += (span + 1) / 2 / i_t
    return total / (N - 1)


@pytest.mark.parametrize("N, m", [(10, None), (10, 1), (10, 3), (2, None), (18, None)])
def test_indices_order_distribution_and_teacher_calls(N, m):
    ctm = ConsistencyTrajectory(teacher, N=N, max_solver_steps=m)
    i_t, i_u, i_s = ctm.indices(200_000, torch.Generator().manual_seed(12))
    assert ((0 <= i_s) & (i_s <= i_u) & (i_u < i_t) & (i_t <= N - 1)).all()
    assert set(i_t.unique().tolist()) == set(range(1, N))
    counts = torch.bincount(i_t, minlength=N)[1:].double() / len(i_t)
    assert (counts - 1 / (N - 1)).abs().max() < 0.01                                   # t uniform above sigma_min
    k = i_t - i_u
    if m == 1:
        assert torch.equal(i_u, i_t - 1)                                                # local consistency only
        assert ctm.teacher_calls() == 2.0
    else:
        assert k.max() <= (m or N)
        wide = i_t - i_s >= 2                                                           # none when N = 2
        assert N == 2 or (i_u[wide] == i_s[wide]).any() and (k[wide] == 1).any() and (k[wide] >= 2).any()
        if m is None and N > 2:
            assert (i_u[wide] == i_s[wide]).double().mean() > 0.1                       # global: u = s, often
    assert k.double().mean().item() == pytest.approx(_expected_steps(N, m), rel=0.02)
    assert ctm.teacher_calls() == pytest.approx(2 * _expected_steps(N, m), rel=0.02)
    assert _expected_steps(N, None) == pytest.approx((N + 6) / 8)                      # closed form when uncapped
    # the grid: t_1 = sigma_min < ... < t_N = T
    assert ctm.t[0].item() == pytest.approx(EPS) and ctm.t[-1].item() == pytest.approx(80.0)
    assert torch.equal(ctm.t, cm_timesteps(N))


def test_ctm_options_and_registration():
    assert METHODS["ctm"] is ConsistencyTrajectory and ConsistencyTrajectory.produces is TRAJECTORY
    assert TRAJECTORY.default_sampler(None) == "gamma" and "gamma" in TRAJECTORY.samplers
    for bad in ({"N": 1}, {"N": 2.5}, {"max_solver_steps": 0}, {"max_solver_steps": 1.5}):
        with pytest.raises(ValueError):
            ConsistencyTrajectory(teacher, **bad)


#----------------------------------------------------------------------------
# 6. A short distillation on the 2-D ring.


@pytest.mark.slow
def test_ctm_distillation_beats_its_teacher_initialisation_at_one_step(ring_teacher, tmp_path):
    from fewstep.generate import generate
    from fewstep.runs import build_dataset, load_teacher
    from fewstep.train import build_state, train
    from fewstep.metrics.toy import sample_distance

    net_kwargs, teacher_dir = {"width": 64, "depth": 2}, ring_teacher      # the teacher's own network
    cfg = TrainConfig(method="ctm", teacher=teacher_dir, steps=400, batch=256, log_every=100, ckpt_every=10_000)

    # before training: the student is its teacher's Euler jump (its s-embedding at zero), through the real loader
    start = build_state(TrainConfig(**{**cfg.__dict__, "net_kwargs": net_kwargs}))
    D = load_teacher(teacher_dir)[0].double()
    G0 = start.net.double()
    x = 80.0 * torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.full((256,), 80.0, dtype=torch.float64)
    for s in (40.0, 1.0, EPS):
        s = torch.full((256,), s, dtype=torch.float64)
        torch.testing.assert_close(G0(x, t, s=s), ode_step(D, x, t, s, "euler"), rtol=1e-6, atol=1e-6)
    G0.float()

    state = train(cfg, str(tmp_path / "ctm"), progress=False)
    data = build_dataset(state.cfg)
    sw = {}
    for name, (model, run_cfg) in {"init": (G0, start.cfg), "ctm": (state.ema.module, state.cfg)}.items():
        samples, nfe = generate(model, run_cfg, 4000, 1, sampler="gamma", generator=torch.Generator().manual_seed(0))
        assert nfe == 1
        sw[name] = sample_distance(samples, data)
    # measured: init 0.37 (every sample near the mean: the Euler jump from T is D(x_T, T)), ctm 0.07
    assert sw["ctm"] < 0.12 and sw["ctm"] < 0.4 * sw["init"], sw
