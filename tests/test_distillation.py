"""The distillation families of seed 003 against closed-form oracles.

Gaussian data N(mu, s^2 I) makes every piece exact: the ideal denoiser D(x, sigma) = mu + g (x - mu) with
g = s^2 / (s^2 + sigma^2), the PF-ODE map x(sigma) - mu ~ sqrt(s^2 + sigma^2), an Euler step x - mu -> a (x - mu)
with a(sigma, sigma') = 1 + (sigma' - sigma) sigma / (s^2 + sigma^2), and the noised distribution of a linear
generator G(z) = a z + b. Everything runs in float64 where the methods allow it.
"""

import math

import pytest
import torch
from torch import nn

from fewstep.data.toy2d import GaussianMixture, gaussian
from fewstep.methods.adversarial import AdversarialDistillation
from fewstep.methods.distill import KnowledgeDistillation, ProgressiveDistillation, pair_batch
from fewstep.methods.flow import RectifiedFlow, Reflow
from fewstep.methods.matching import (DistributionMatching, ScoreDistillation, matching_loss, noise_levels,
                                      sample_denoiser)
from fewstep.pairs import make_pairs
from fewstep.processes import HalvingGrid, RectifiedFlow as FlowProcess
from fewstep.sampling import consistency_taus, ode_step, sample_euler
from fewstep.schedules import append_zero, karras_sigmas

from oracles import as_denoiser, gaussian_denoiser

F64 = torch.float64
MU, S = 0.3, 0.5                       # the data N(MU, S^2 I) of most tests
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def euler_gain(sigma, sigma_next, s=S):
    """One Euler step of the exact Gaussian PF-ODE multiplies x - mu by this."""
    return 1 + (sigma_next - sigma) * sigma / (s ** 2 + sigma ** 2)


class Recorder(nn.Module):
    """A denoiser D(x, sigma, **cond) that keeps what it was called with."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.calls = fn, []

    def forward(self, x, sigma, **cond):
        self.calls.append((x.detach().clone(), sigma.detach().clone(), cond))
        return self.fn(x, sigma, **cond)

#----------------------------------------------------------------------------
# Knowledge distillation: teacher pairs are the teacher's PF-ODE map.


def test_make_pairs_is_the_teachers_pf_ode_map_with_heuns_second_order_convergence():
    gm = gaussian(3, MU, S)
    errors, errors_to_zero = {}, {}
    for steps in (16, 32, 64, 128):
        pairs = make_pairs(as_denoiser(gm), (3,), 64, sampler="heun", steps=steps, sigma_min=SIGMA_MIN,
                           sigma_max=SIGMA_MAX, rho=RHO, seed=0, progress=False)
        z = pairs["z"].double()
        assert pairs["z"].shape == pairs["x0"].shape == (64, 3) and "class_labels" not in pairs
        torch.testing.assert_close(pairs["z"], torch.randn(64, 3, generator=torch.Generator().manual_seed(0)))
        # The grid ends sigma_min -> 0 with an Euler step, which is exactly D(x, sigma_min).
        exact = gm.denoiser(gm.ode_solution(SIGMA_MAX * z, SIGMA_MAX, SIGMA_MIN), SIGMA_MIN)
        errors[steps] = (pairs["x0"].double() - exact).abs().max().item()
        errors_to_zero[steps] = (pairs["x0"].double() - gm.ode_solution(SIGMA_MAX * z, SIGMA_MAX, 0.0)).abs().max().item()
    for steps in (16, 32, 64):
        ratio = errors[2 * steps] / errors[steps]
        assert 0.15 < ratio < 0.3, (steps, ratio, errors)           # ~ ((S - 1) / (2 S - 1))^2 -> 1/4
    assert errors_to_zero[128] < 3e-3 and errors_to_zero[16] > 0.05


@pytest.mark.parametrize("process", ["ve", "flow", "halving"])
def test_make_pairs_runs_the_teachers_own_grid_down_to_zero(process):
    """Two Euler steps of the exact denoiser on the teacher process's grid, from T z: x0 - mu = a1 a2 (T z - mu)."""
    T, lo = 20.0, 0.5
    mid = {"ve": lo, "flow": 10 / 11,                                  # t: 20/21 -> 10/21 -> 0
           "halving": karras_sigmas(4, lo, T, RHO)[2].item()}[process]
    teacher = Recorder(gaussian_denoiser(MU, S))
    if process != "ve":
        teacher.process = FlowProcess() if process == "flow" else HalvingGrid(2, 4)
    pairs = make_pairs(teacher, (2,), 16, sampler="euler", steps=2, sigma_min=lo, sigma_max=T, rho=RHO, seed=0,
                       progress=False)
    assert [c[1][0].item() for c in teacher.calls] == pytest.approx([T, mid], rel=1e-6)     # float32 pairs
    z = pairs["z"].double()
    expected = MU + euler_gain(T, mid) * euler_gain(mid, 0.0) * (T * z - MU)
    torch.testing.assert_close(pairs["x0"].double(), expected, rtol=1e-5, atol=1e-5)


def test_make_pairs_class_labels_are_seeded():
    gm = gaussian(2, MU, S)
    a = make_pairs(as_denoiser(gm), (2,), 32, sampler="euler", steps=4, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                   rho=RHO, seed=3, num_classes=5, progress=False)
    b = make_pairs(as_denoiser(gm), (2,), 32, sampler="euler", steps=4, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                   rho=RHO, seed=3, num_classes=5, batch=7, progress=False)
    assert a["class_labels"].shape == (32,) and 0 <= a["class_labels"].min() and a["class_labels"].max() < 5
    for key in ("z", "x0", "class_labels"):
        torch.testing.assert_close(a[key], b[key])                   # batching changes nothing
    with pytest.raises(ValueError, match="unknown pair sampler"):
        make_pairs(as_denoiser(gm), (2,), 4, sampler="rk4", steps=4, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO)


def test_pair_batch_keeps_rows_together():
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(50) % 3
    pairs = {"z": z, "x0": 2 * z + labels[:, None], "class_labels": labels}
    zb, x0b, cond = pair_batch(pairs, 200, torch.zeros(1, dtype=F64), torch.Generator().manual_seed(1))
    assert zb.dtype == x0b.dtype == F64 and zb.shape == (200, 2)
    torch.testing.assert_close(x0b, 2 * zb + cond["class_labels"][:, None].double())


def test_kd_loss_is_zero_for_the_exact_one_step_map_and_sees_pair_labels():
    """G(T z, T) regresses the teacher's x0: the exact PF-ODE map of N(mu_c, s^2) has zero loss, the teacher's own
    one-step denoiser (the mean: a collapsed generator) does not."""
    means = torch.tensor([[-1.0, 0.5], [1.0, 0.0]], dtype=F64)
    gain = S / math.sqrt(S ** 2 + SIGMA_MAX ** 2)                       # x(0) - mu = gain (x(T) - mu)
    z = torch.randn(40, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    labels = torch.arange(40) % 2
    x0 = means[labels] + gain * (SIGMA_MAX * z - means[labels])
    kd = KnowledgeDistillation(teacher=None)
    kd.pairs = {"z": z, "x0": x0, "class_labels": labels}
    exact = Recorder(lambda x, sigma, class_labels: means[class_labels] + gain * (x - means[class_labels]))
    batch = torch.zeros(16, 2, dtype=F64)
    assert kd(exact, batch, generator=torch.Generator().manual_seed(1)).item() < 1e-24
    x, sigma, cond = exact.calls[0]
    assert (sigma == SIGMA_MAX).all() and x.shape == (16, 2)
    rows = [int(((z - xi / SIGMA_MAX).abs().sum(1) < 1e-12).nonzero()) for xi in x]   # x = T z of a stored pair
    assert cond["class_labels"].tolist() == labels[rows].tolist()

    def one_step_mean(x, sigma, class_labels):
        m = means[class_labels]
        return m + S ** 2 / (S ** 2 + sigma[:, None] ** 2) * (x - m)
    assert kd(one_step_mean, batch, generator=torch.Generator().manual_seed(1)).item() > 0.1

#----------------------------------------------------------------------------
# Progressive distillation: one student step onto two teacher steps, on a halving grid.


def pd_student_gain(pd, sigma):
    """The closed-form x_target of the Gaussian as a gain on x - mu: one student Euler step from sigma to sigma''
    must land where the teacher's two Euler steps do."""
    levels = pd.t[:-1:2]
    i = (levels[None] - sigma.double()[:, None]).abs().argmin(1)
    assert torch.allclose(levels[i], sigma.double(), rtol=1e-12, atol=0)
    s0, s1, s2 = pd.t[2 * i], pd.t[2 * i + 1], pd.t[2 * i + 2]
    A, r = euler_gain(s0, s1) * euler_gain(s1, s2), s2 / s0
    return (A - r) / (1 - r)


def test_pd_target_makes_one_student_step_land_on_two_teacher_steps():
    teacher = gaussian_denoiser(MU, S)
    pd = ProgressiveDistillation(teacher, N=4, N0=16)
    assert len(pd.t) == 9 and len(pd.s) == 5 and pd.t[-1] == 0 and pd.t[0] == SIGMA_MAX
    g = torch.Generator().manual_seed(0)
    for i in range(pd.N):
        sigma, sigma_mid, sigma_next = pd.t[2 * i].item(), pd.t[2 * i + 1].item(), pd.t[2 * i + 2].item()
        z = MU + (S ** 2 + sigma ** 2) ** 0.5 * torch.randn(8, 3, generator=g, dtype=F64)
        z_next = ode_step(teacher, ode_step(teacher, z, sigma, sigma_mid, "euler"), sigma_mid, sigma_next, "euler")
        r = sigma_next / sigma
        target = (z_next - r * z) / (1 - r)                         # Salimans & Ho, Algorithm 2, in VE coordinates
        closed = MU + pd_student_gain(pd, torch.full((8,), sigma, dtype=F64))[:, None] * (z - MU)
        torch.testing.assert_close(target, closed, rtol=1e-10, atol=1e-12)
        student = ode_step(lambda x, s, **c: target, z, sigma, sigma_next, "euler")
        torch.testing.assert_close(student, z_next, rtol=1e-10, atol=1e-12)
        if sigma_next == 0:
            torch.testing.assert_close(target, z_next, rtol=0, atol=0)
    # The two-step map differs from one teacher step: distillation has something to learn.
    t = pd.t.tolist()
    assert max(abs(euler_gain(t[2 * i], t[2 * i + 1]) * euler_gain(t[2 * i + 1], t[2 * i + 2])
                   - euler_gain(t[2 * i], t[2 * i + 2])) for i in range(pd.N)) > 1e-2


def test_pd_loss_zero_at_the_closed_form_student_and_edm_weighted_otherwise():
    teacher = gaussian_denoiser(MU, S)
    pd = ProgressiveDistillation(teacher, N=4, N0=16)
    x = gaussian(3, MU, S).sample(256, torch.Generator().manual_seed(0)).double()

    def closed(offset):
        return Recorder(lambda z, sigma, **c: MU + pd_student_gain(pd, sigma)[:, None] * (z - MU) + offset)

    exact = closed(0.0)
    assert pd(exact, x, generator=torch.Generator().manual_seed(1)).item() < 1e-18
    _, sigma, _ = exact.calls[0]
    assert set(sigma.tolist()) == set(pd.t[:-1:2].tolist())          # every student level, never sigma = 0

    off = closed(0.01)
    loss = pd(off, x, generator=torch.Generator().manual_seed(1)).item()
    _, sigma, _ = off.calls[0]
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2                 # EDM's lambda(sigma), sigma_data = 0.5
    assert loss == pytest.approx((weight * 3 * 0.01 ** 2).mean().item(), rel=1e-6)
    assert pd(teacher, x, generator=torch.Generator().manual_seed(1)).item() > 1e-3


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 16, 32, 64])
def test_halving_grid_takes_every_k_th_karras_level(steps):
    grid = HalvingGrid(N=8, N0=64).sampling_grid(steps, SIGMA_MIN, SIGMA_MAX, RHO)
    full = append_zero(karras_sigmas(64, SIGMA_MIN, SIGMA_MAX, RHO))
    assert len(grid) == steps + 1 and grid[0] == SIGMA_MAX and grid[-1] == 0
    torch.testing.assert_close(grid, full[torch.arange(steps + 1) * (64 // steps)], rtol=0, atol=0)


def test_halving_grid_and_pd_reject_bad_steps_and_chain_rounds():
    process = HalvingGrid(N=8, N0=64)
    for steps in (0, 3, 48, 128):
        with pytest.raises(ValueError, match="progressive-distillation"):
            process.sampling_grid(steps, SIGMA_MIN, SIGMA_MAX, RHO)
    torch.testing.assert_close(process.sampling_grid(5, SIGMA_MIN, SIGMA_MAX, RHO, sigma_start=2.0),
                               append_zero(karras_sigmas(5, SIGMA_MIN, 2.0, RHO)))
    for N, N0 in ((3, 64), (16, 48), (64, 64), (0, 64), (128, 64), (2.0, 4)):
        with pytest.raises(ValueError, match="power of two"):
            ProgressiveDistillation(None, N=N, N0=N0)
    teacher = gaussian_denoiser(MU, S)
    for N in (1, 2, 4, 8, 16):                                        # round N's teacher grid is round 2N's student grid
        pd = ProgressiveDistillation(teacher, N=N, N0=64)
        assert len(pd.s) == N + 1 and len(pd.t) == 2 * N + 1
        torch.testing.assert_close(pd.s, HalvingGrid(N, 64).sampling_grid(N, SIGMA_MIN, SIGMA_MAX, RHO))
        torch.testing.assert_close(pd.t, ProgressiveDistillation(teacher, N=2 * N, N0=64).s)
    assert len(ProgressiveDistillation(teacher, N=12, N0=48).t) == 25

#----------------------------------------------------------------------------
# Rectified flow: a denoiser on the interpolation X_t = t X1 + (1 - t) X0.


def test_flow_process_coordinates_and_uniform_grid():
    p = FlowProcess()
    t = torch.linspace(0, 0.999, 50, dtype=F64)
    torch.testing.assert_close(p.t_of_ve_sigma(p.ve_sigma(t)), t)
    s = torch.logspace(-3, 2, 50, dtype=F64)
    torch.testing.assert_close(p.ve_sigma(p.t_of_ve_sigma(s)), s)
    torch.testing.assert_close(p.ve_sigma(t), p.sigma(t) / p.alpha(t))          # sigma_t / alpha_t of X_t
    for steps in (1, 3, 10):
        grid = p.sampling_grid(steps, SIGMA_MIN, SIGMA_MAX, RHO)
        assert len(grid) == steps + 1 and grid[-1] == 0
        assert grid[0].item() == pytest.approx(SIGMA_MAX, rel=1e-12)
        dt = p.t_of_ve_sigma(grid).diff()
        torch.testing.assert_close(dt, torch.full_like(dt, -SIGMA_MAX / (1 + SIGMA_MAX) / steps))
    assert p.sampling_grid(4, SIGMA_MIN, SIGMA_MAX, RHO, sigma_start=1.0)[0].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="steps >= 1"):
        p.sampling_grid(0, SIGMA_MIN, SIGMA_MAX, RHO)


def test_ve_euler_on_the_flow_grid_is_euler_on_the_velocity():
    gm = GaussianMixture([[-0.6, 0.2], [0.5, -0.3]], [0.2, 0.4], [1, 3])
    D, p = as_denoiser(gm), FlowProcess()
    grid = p.sampling_grid(6, SIGMA_MIN, SIGMA_MAX, RHO)
    x = SIGMA_MAX * torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    X = p.alpha(p.t_of_ve_sigma(grid[0])) * x                      # X_t = (1 - t) x
    for sigma, sigma_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        t, t_next = float(p.t_of_ve_sigma(sigma)), float(p.t_of_ve_sigma(sigma_next))
        v = (X - D(X / (1 - t), torch.full((32,), t / (1 - t), dtype=F64))) / t
        X_next = X + (t_next - t) * v
        x_next = ode_step(D, X / (1 - t), sigma, sigma_next, "euler")
        torch.testing.assert_close((1 - t_next) * x_next, X_next, rtol=1e-9, atol=1e-9)
        X = X_next
    torch.testing.assert_close(sample_euler(D, x, grid), X, rtol=1e-9, atol=1e-9)


def test_velocity_loss_is_the_x0_regression_over_t_squared():
    rf = RectifiedFlow()
    g = torch.Generator().manual_seed(0)
    x0 = gaussian(3, MU, S).sample(512, g).double()
    x1 = torch.randn(512, 3, generator=g, dtype=F64)
    exact = Recorder(lambda x, sigma: x - sigma[:, None] * x1)        # E[X0 | X_t] of this very coupling
    assert rf.velocity_loss(exact, x0, x1, {}, torch.Generator().manual_seed(1)).item() < 1e-20
    x, sigma, _ = exact.calls[0]
    torch.testing.assert_close(x, x0 + sigma[:, None] * x1)          # VE coordinates X_t / (1 - t)
    t = sigma / (1 + sigma)
    assert t.min() >= rf.t_min and t.max() <= rf.t_max and rf.t_max == pytest.approx(80 / 81)
    assert sigma.min() < 1 < sigma.max()

    gm = GaussianMixture([[-0.6, 0.2, 0.0], [0.5, -0.3, 0.1]], [0.2, 0.4])
    other = Recorder(lambda x, sigma: gm.denoiser(x, sigma))
    loss = rf(other, x0, generator=torch.Generator().manual_seed(2))
    x, sigma, _ = other.calls[0]
    t = sigma / (1 + sigma)
    expected = ((gm.denoiser(x, sigma) - x0).square().sum(1) / t ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=0)
    noise = (x - x0) / sigma[:, None]                                 # __call__ draws X1 ~ N(0, I)
    assert abs(noise.mean().item()) < 0.1 and abs(noise.std().item() - 1) < 0.1


def test_reflow_of_a_straight_coupling_has_zero_loss():
    """For N(0, s^2) the PF-ODE coupling is X0 = k X1, k = T s / sqrt(s^2 + T^2): straight lines, whose velocity the
    denoiser D(x, sigma) = k x / (k + sigma) gives exactly; a wrong k, or fresh noise as X1, does not."""
    k = SIGMA_MAX * S / math.sqrt(S ** 2 + SIGMA_MAX ** 2)
    z = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    reflow = Reflow(teacher=None)
    reflow.pairs = {"z": z, "x0": k * z}
    batch = torch.zeros(64, 2, dtype=F64)
    assert reflow(lambda x, sigma: k * x / (k + sigma[:, None]), batch,
                  generator=torch.Generator().manual_seed(1)).item() < 1e-20
    assert reflow(lambda x, sigma: 0.9 * k * x / (0.9 * k + sigma[:, None]), batch,
                  generator=torch.Generator().manual_seed(1)).item() > 1e-3
    # The 1-rectified flow of the independent coupling is not straight: the ideal denoiser keeps a loss.
    rf = RectifiedFlow()
    assert rf(gaussian_denoiser(0.0, k), k * z, generator=torch.Generator().manual_seed(1)).item() > 0.1

#----------------------------------------------------------------------------
# Distribution matching and score distillation on a linear generator G(z) = a z + b.


class LinearGenerator(nn.Module):
    """G(x_T, T) = a x_T / T + b = a z + b: one_step(G, z, T) is the linear generator."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a, dtype=F64)), nn.Parameter(torch.tensor(b, dtype=F64))

    def forward(self, x, sigma, **cond):
        return self.a * x / sigma[:, None] + self.b


class ExactFake(nn.Module):
    """The denoiser of the generator's own distribution N(b, a^2 I): b + a^2 / (a^2 + sigma^2) (x - b)."""

    def __init__(self, G):
        super().__init__()
        self.G = G

    def forward(self, x, sigma, **cond):
        a, b = self.G.a.detach(), self.G.b.detach()
        return b + a ** 2 / (a ** 2 + sigma[:, None] ** 2) * (x - b)


def generator_grads(method, a, b, n, fake=False, seed=0, d=2):
    G = LinearGenerator(a, b)
    nets = {"net": G, **({"fake": ExactFake(G)} if fake else {})}
    method.prepare(None)
    loss = method.loss("net", nets, torch.zeros(n, d, dtype=F64), k=0, generator=torch.Generator().manual_seed(seed))
    loss.backward()
    return G.a.grad.item(), G.b.grad.item()


def test_matching_loss_gradient_is_the_weighted_denoiser_difference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 4, generator=g, dtype=F64).requires_grad_()
    D_fake, D_real = torch.randn(16, 3, 4, generator=g, dtype=F64), torch.randn(16, 3, 4, generator=g, dtype=F64)
    loss = matching_loss(x, D_fake, D_real)
    grad, = torch.autograd.grad(loss, x)
    weight = 1 / (x.detach() - D_real).abs().mean((1, 2), keepdim=True)
    torch.testing.assert_close(grad, (D_fake - D_real) * weight / 16)
    torch.testing.assert_close(loss, 0.5 * ((D_fake - D_real) * weight).square().sum((1, 2)).mean())
    # Descent moves x along D_real - D_fake, i.e. along s_real - s_fake (Tweedie: s = (D - x) / sigma^2).
    assert ((-grad) * (D_real - D_fake)).sum() > 0


def test_dmd_gradient_vanishes_at_the_data_and_points_back_to_it():
    dmd = DistributionMatching(gaussian_denoiser(MU, S), reg_weight=0.0)
    assert generator_grads(dmd, S, MU, 20000, fake=True) == (0.0, 0.0)          # p_fake = p_real: D_fake = D_real
    ga, _ = generator_grads(dmd, 2 * S, MU, 20000, fake=True)
    assert ga > 0.2                                                              # too wide: shrink a
    ga, _ = generator_grads(dmd, S / 2, MU, 20000, fake=True)
    assert ga < -0.2                                                             # too narrow: widen a
    _, gb = generator_grads(dmd, S, MU + 1, 20000, fake=True)
    assert gb > 1.0
    _, gb = generator_grads(dmd, S, MU - 1, 20000, fake=True)
    assert gb < -1.0


def test_sds_is_mode_seeking_and_the_sample_estimator_is_not():
    """At p_fake = p_real, SDS's D_fake = x pulls a toward 0 (mode seeking); the sample-based estimator over the
    batch is consistent and leaves the optimum (nearly) in place."""
    teacher = gaussian_denoiser(MU, S)
    single = [generator_grads(ScoreDistillation(teacher), S, MU, 20000, seed=seed) for seed in range(2)]
    for ga, gb in single:
        assert ga > 1.0 and abs(gb) < 0.1 * ga
    for seed in range(2):
        ga, gb = generator_grads(ScoreDistillation(teacher, estimator="batch"), S, MU, 2048, seed=seed)
        assert abs(ga) < 0.05 and abs(gb) < 0.1


def test_sample_estimator_is_class_conditional():
    # pooling the samples of every class would estimate the marginal E[x | x_t] against a conditional teacher
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=F64)
    s = 0.3

    class G(nn.Module):                               # x = a z + c mu_label: the data itself at a = s, c = 1
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Parameter(torch.tensor(s, dtype=F64)), nn.Parameter(torch.tensor(1.0, dtype=F64))

        def forward(self, x, sigma, class_labels):
            return self.a * x / sigma[:, None] + self.c * means[class_labels]

    def teacher(x, sigma, class_labels):
        m = means[class_labels]
        return m + s ** 2 / (s ** 2 + sigma[:, None] ** 2) * (x - m)

    sds, net = ScoreDistillation(teacher, estimator="batch"), G()
    sds.prepare(None)
    batch = {"x": torch.zeros(2048, 2, dtype=F64), "class_labels": torch.arange(2048) % 2}
    sds.loss("net", {"net": net}, batch, k=0, generator=torch.Generator().manual_seed(0)).backward()
    assert abs(net.c.grad.item()) < 0.3 and abs(net.a.grad.item()) < 0.1       # pooled classes: grad_c ~ -3.9

#----------------------------------------------------------------------------
# The sample-based denoiser and DMD's noise levels.


def test_sample_denoiser_of_its_own_sample_is_that_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, 2, generator=g, dtype=F64)
    sigma = torch.logspace(-2, 1.5, 20, dtype=F64)
    x_t = x + sigma[:, None, None] * torch.randn(20, 3, 2, generator=g, dtype=F64)
    for i in range(20):
        torch.testing.assert_close(sample_denoiser(x_t[i:i + 1], sigma[i:i + 1], x[i:i + 1]), x[i:i + 1],
                                   rtol=0, atol=0)
    out = sample_denoiser(x_t.float(), sigma.float(), x.float())
    assert out.dtype == torch.float32 and out.shape == x.shape


def test_sample_denoiser_is_the_posterior_mean_of_the_samples_and_consistent():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(30, 2, generator=g, dtype=F64)
    x_t = 2 * torch.randn(25, 2, generator=g, dtype=F64)
    sigma = torch.logspace(-1, 0.5, 25, dtype=F64)
    empirical = GaussianMixture(xs, [1e-9])                 # the samples as point masses: E[x | x_t] over them
    torch.testing.assert_close(sample_denoiser(x_t, sigma, xs), empirical.denoiser(x_t, sigma), rtol=1e-9, atol=1e-9)

    a, b, Q = 0.5, 0.3, 200
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=F64).repeat(Q // 3 + 1)[:Q]
    x_t = b + (a ** 2 + sigma[:, None] ** 2).sqrt() * torch.randn(Q, 2, generator=g, dtype=F64)
    closed = b + a ** 2 / (a ** 2 + sigma[:, None] ** 2) * (x_t - b)
    rms = {}
    for M in (64, 4096):
        err = [(sample_denoiser(x_t, sigma, b + a * torch.randn(M, 2, generator=g, dtype=F64)) - closed)
               .square().mean().sqrt().item() for _ in range(4)]
        rms[M] = sum(err) / len(err)
    assert rms[4096] < rms[64] / 3 and rms[4096] < 0.02, rms


def test_noise_levels_stay_on_the_karras_ladder_between_t_min_and_t_max():
    lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)

    def sigma_at(t):                                # larger t, more noise (DMD's convention)
        return (lo + t * (hi - lo)) ** RHO

    for t_min, t_max in ((0.02, 0.98), (0.0, 1.0), (0.3, 0.5)):
        sigma = noise_levels(20000, torch.Generator().manual_seed(0), t_min, t_max, SIGMA_MIN, SIGMA_MAX, RHO)
        assert sigma.dtype == F64 and sigma.shape == (20000,)
        assert sigma.min() >= sigma_at(t_min) * (1 - 1e-12) and sigma.max() <= sigma_at(t_max) * (1 + 1e-12)
        u = (sigma ** (1 / RHO) - lo) / (hi - lo)                     # back to t: uniform on [t_min, t_max]
        assert u.min() < t_min + 0.01 * (t_max - t_min) and u.max() > t_max - 0.01 * (t_max - t_min)
        assert u.mean().item() == pytest.approx((t_min + t_max) / 2, abs=0.01 * (t_max - t_min))
    assert noise_levels(5, None, 1 - 1e-12, 1.0, SIGMA_MIN, SIGMA_MAX, RHO).tolist() == pytest.approx([SIGMA_MAX] * 5)
    for t_min, t_max in ((0.5, 0.5), (-0.1, 0.9), (0.1, 1.1)):
        with pytest.raises(ValueError, match="t_min"):
            DistributionMatching(None, t_min=t_min, t_max=t_max)

#----------------------------------------------------------------------------
# ADD: student levels and the teacher term's weighting.


def test_add_student_levels_and_alpha_weighted_distillation_term():
    levels = 3
    c_student, c_teacher = torch.tensor([0.2, -0.1], dtype=F64), torch.tensor([0.5, 0.3], dtype=F64)
    teacher = Recorder(lambda x, sigma: c_teacher.expand_as(x))
    add = AdversarialDistillation(teacher, levels=levels)
    for n in range(1, levels + 1):
        assert set(consistency_taus(n, SIGMA_MIN, SIGMA_MAX, RHO).tolist()) <= set(add.s.tolist())
    assert len(add.s) == 1 + 1 + 2 and add.s.max() == SIGMA_MAX and add.s.min() > SIGMA_MIN
    G = Recorder(lambda x, sigma: c_student + 0 * x)
    disc = lambda x, **cond: torch.zeros(x.shape[0], dtype=x.dtype)           # no adversarial term
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    loss = add.loss("net", {"net": G, "disc": disc}, x, k=0, generator=torch.Generator().manual_seed(1))
    x_in, s, _ = G.calls[0]
    assert set(s.tolist()) == set(add.s.tolist())
    noise = (x_in - x) / s[:, None]
    assert abs(noise.std().item() - 1) < 0.1
    _, sigma, _ = teacher.calls[0]
    assert sigma.min() >= SIGMA_MIN and sigma.max() <= SIGMA_MAX and sigma.min() < 0.1 and sigma.max() > 10
    expected = ((c_student - c_teacher).square().sum() / (1 + sigma ** 2).sqrt()).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=0)
