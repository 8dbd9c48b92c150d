"""Training methods against exact answers on Gaussian data (seeds 000 and 004)."""

import math

import pytest
import torch

from fewstep.config import TrainConfig
from fewstep.data.toy2d import gaussian, gmm_ring
from fewstep.methods import ConsistencyDistillation, ContinuousCD, ContinuousCT, DDPMLoss, EDMLoss
from fewstep.methods.common import make_distance
from fewstep.metrics.toy import consistency_error, sample_distance
from fewstep.precond import VPPrecond
from fewstep.runs import build_model
from fewstep.sampling import consistency_taus, sample_consistency
from fewstep.schedules import sample_karras_uniform
from fewstep.train import train
from oracles import as_denoiser, use_labelled_mixture

GMM = gmm_ring()


class ExactGaussianF(torch.nn.Module):
    """a * (the exact consistency function of N(mu, s^2 I)); a = 1 is exact, and a is a parameter so
    that losses have a gradient to check."""

    def __init__(self, mean=0.0, std=0.5, sigma_min=0.002, a=1.0):
        super().__init__()
        self.mean, self.std, self.sigma_min = mean, std, sigma_min
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, x, sigma, **cond):
        ratio = ((self.std ** 2 + self.sigma_min ** 2) / (self.std ** 2 + sigma ** 2)).sqrt()[:, None]
        return self.mean + self.a * ratio * (x - self.mean)


def _batch(n=4096, seed=0, data=GMM):
    return data.sample(n, torch.Generator().manual_seed(seed)).double()

#----------------------------------------------------------------------------
# Losses whose minimiser or value is known.


class Scaled(torch.nn.Module):
    def __init__(self, D, a):
        super().__init__()
        self.D, self.a = D, a

    def forward(self, x, sigma, **cond):
        return self.a * self.D(x, sigma)


def test_edm_loss_is_minimised_by_the_exact_denoiser():
    # L(a) = E[w ||a D*(x) - y||^2] is quadratic in a with its minimum at a = 1 when D* = E[y | x].
    D, y = as_denoiser(GMM), _batch(200000)
    L = [EDMLoss()(Scaled(D, a), y, generator=torch.Generator().manual_seed(1)).item() for a in (0.9, 1.0, 1.1)]
    a_star = 1 + 0.1 * (L[0] - L[2]) / (2 * (L[0] - 2 * L[1] + L[2]))
    assert a_star == pytest.approx(1.0, abs=0.01)


def test_ddpm_loss_is_minimised_by_the_exact_eps():
    process = DDPMLoss().process
    exact = as_denoiser(GMM)
    y = _batch(200000)
    L = []
    for a in (0.9, 1.0, 1.1):
        eps_net = lambda x_t, c, a=a: a * _exact_eps(exact, process, x_t, c)     # noqa: E731
        L.append(DDPMLoss()(VPPrecond(eps_net, process), y, generator=torch.Generator().manual_seed(1)).item())
    a_star = 1 + 0.1 * (L[0] - L[2]) / (2 * (L[0] - 2 * L[1] + L[2]))
    assert a_star == pytest.approx(1.0, abs=0.01)


def _exact_eps(D, process, x_t, c_noise):
    t = (c_noise * process.T).round().long()
    s, alpha = process.ve_sigma(t)[:, None], process.alpha(t)[:, None]
    x = x_t / alpha
    return (x - D(x, s.flatten())) / s


@pytest.mark.parametrize("name", ["l2", "l1", "pseudo-huber"])
def test_distances(name):
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    y = torch.zeros_like(x)
    c = 0.00054 * math.sqrt(2)
    want = {"l2": 25.0, "l1": 7.0, "pseudo-huber": math.sqrt(25 + c * c) - c}[name]
    assert make_distance(name)(x, y).item() == pytest.approx(want)
    assert make_distance(name)(x, x).item() == pytest.approx(0.0, abs=1e-12)


def test_feature_distance_needs_and_uses_the_feature_net():
    with pytest.raises(ValueError, match="feature_net"):
        make_distance("feature")
    phi = torch.nn.Linear(2, 3)
    d = make_distance("feature", feature_net=phi)
    x, y = torch.randn(4, 2), torch.randn(4, 2)
    torch.testing.assert_close(d(x, y), (phi(x) - phi(y)).square().sum(1))


def test_cd_loss_of_the_exact_f_is_the_solver_error():
    # With the exact teacher and exact f the only mismatch is the one-step solver's local error, of
    # order h^2 for Euler and h^3 for Heun: doubling N divides the squared loss by ~16 and ~64.
    data = gaussian(std=0.5)
    f, D, x = ExactGaussianF(), as_denoiser(data), _batch(8192, data=data)
    loss = {(s, N): ConsistencyDistillation(D, N=N, solver=s)(f, x, target=f, generator=torch.Generator().manual_seed(0)).item()
            for s in ("euler", "heun") for N in (36, 72)}
    assert 12 < loss["euler", 36] / loss["euler", 72] < 22
    assert 45 < loss["heun", 36] / loss["heun", 72] < 100
    wrong = ConsistencyDistillation(D, N=36)(ExactGaussianF(a=0.9), x, target=f, generator=torch.Generator().manual_seed(0)).item()
    assert loss["heun", 36] < 1e-3 * wrong


def test_ict_loss_is_lambda_times_pseudo_huber_on_its_curriculum():
    # For f(x, sigma) = x + a sigma, f(x + s_{i+1} z, s_{i+1}) - f(x + s_i z, s_i) = (s_{i+1} - s_i)(z + a), so
    # iCT's loss is mean_b [sqrt(ds^2 ||z + a||^2 + c^2) - c] / ds with i ~ p(i) on the N(k) grid, c = 0.00054 sqrt(d).
    from fewstep.methods import ImprovedConsistencyTraining
    from fewstep.schedules import cm_timesteps, ict_index_probs, ict_N
    a = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    f = lambda x, sigma, **c: x + sigma[:, None] * a                                   # noqa: E731
    x = torch.randn(4096, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    method, k, K = ImprovedConsistencyTraining(K=800), 250, 800
    loss = method(f, x, k=k, generator=torch.Generator().manual_seed(1)).item()
    g = torch.Generator().manual_seed(1)
    sig = cm_timesteps(ict_N(k, K))                                                     # N(250) = 41 points
    i = torch.multinomial(ict_index_probs(sig), 4096, replacement=True, generator=g)
    z = torch.randn(x.shape, generator=g).double()
    ds, c = sig[i + 1] - sig[i], 0.00054 * math.sqrt(3)
    want = (((ds[:, None] * (z + a)).square().sum(1) + c * c).sqrt() - c) / ds
    assert len(sig) == 41 and loss == pytest.approx(want.mean().item(), rel=1e-9)


def test_continuous_cd_is_zero_for_the_exact_f_only():
    data = gaussian(std=0.5)
    D, x = as_denoiser(data), _batch(2048, data=data)
    exact = ContinuousCD(D)(ExactGaussianF(), x, generator=torch.Generator().manual_seed(0)).item()   # a * f is consistent too; a wrong std is not
    wrong = ContinuousCD(D)(ExactGaussianF(std=0.4), x, generator=torch.Generator().manual_seed(0)).item()
    assert exact < 1e-20 and wrong > 1e-4


def test_continuous_ct_gradient_is_the_limit_of_discrete_ct():
    # grad of ||f(x + t z, t) - sg f(x + (t - h) z, t - h)||^2, divided by h, tends to the gradient of
    # seed 000's continuous CT objective 2 f^T (df^-/dt + df^-/dx (x_t - x)/t) as h -> 0.
    data, h = gaussian(std=0.5), 1e-5
    x, f = _batch(512, data=data), ExactGaussianF(a=0.7)
    ContinuousCT()(f, x, generator=torch.Generator().manual_seed(3)).backward()
    g_cont = f.a.grad.item()
    gen = torch.Generator().manual_seed(3)
    t = sample_karras_uniform(x.shape[0], gen).to(x)
    z = torch.randn(x.shape, generator=gen).to(x)              # drawn as the method draws it
    f.a.grad = None
    with torch.no_grad():
        target = f(x + (t - h)[:, None] * z, t - h)
    ((f(x + t[:, None] * z, t) - target).square().sum(1).mean() / h).backward()
    assert f.a.grad.item() == pytest.approx(g_cont, rel=1e-3)
    assert abs(g_cont) > 1e-3


def test_ict_target_draws_the_students_dropout_masks_and_the_ema_target_none():
    # _pair_loss runs the target on a copy of the student's RNG state: iCT's target (the online network,
    # theta^- = stopgrad(theta), seed 004) is then the very function being trained, so at equal inputs
    # the loss is exactly 0; CT's EMA target stays in eval mode, without dropout.
    from fewstep.ema import EMA
    from fewstep.methods import ConsistencyTraining, ImprovedConsistencyTraining
    from fewstep.methods.consistency import _pair_loss
    torch.manual_seed(0)
    net = build_model(TrainConfig(method="ict", net_kwargs={"width": 32, "depth": 2, "dropout": 0.5})).train()
    torch.nn.init.normal_(net.net.out.weight)                 # zero at init, which would hide the masks
    x, t = torch.randn(256, 2), torch.full((256,), 1.0)
    ict = ImprovedConsistencyTraining(K=10, distance="l2", weighting="uniform")
    assert _pair_loss(ict, net, net, x, t, x, t, {}).item() == 0
    ema = EMA(net, 0.9).module
    assert not ema.training and torch.equal(ema(x, t), ema(x, t))
    assert _pair_loss(ConsistencyTraining(K=10), net, ema, x, t, x, t, {}).item() > 0


def test_teacher_guidance_equals_a_cfg_wrapped_teacher(tmp_path, monkeypatch):
    # teacher_guidance = w guides the teacher loaded from --teacher and a teacher object passed by the
    # caller alike: both equal CD whose teacher is ClassifierFreeGuidance(teacher, w), bit for bit.
    from fewstep.guidance import ClassifierFreeGuidance
    from fewstep.runs import load_teacher
    use_labelled_mixture(monkeypatch)
    base = dict(data="labelled", cond=True, label_dropout=0.1, steps=3, batch=32, net_kwargs={"width": 8, "depth": 1})
    teacher_run = str(tmp_path / "teacher")
    train(TrainConfig(method="edm", **base), teacher_run, progress=False)
    teacher, _ = load_teacher(teacher_run)
    cd = dict(method="cd", teacher=teacher_run, init_from_teacher=False, method_kwargs={"N": 8}, **base)

    def weights(run, teacher=None, **kw):
        return train(TrainConfig(**cd, **kw), str(tmp_path / run), progress=False, teacher=teacher).net.state_dict()

    want = weights("wrapped", ClassifierFreeGuidance(teacher, 2.0, null_label=2))
    for got in (weights("loaded", teacher_guidance=2.0), weights("passed", teacher, teacher_guidance=2.0)):
        assert all(torch.equal(got[k], want[k]) for k in want)
    unguided = weights("unguided", teacher)
    assert not all(torch.equal(unguided[k], want[k]) for k in want)


def test_teacher_guidance_needs_a_teacher_that_learned_the_null_label(tmp_path, monkeypatch):
    from fewstep.errors import FewstepError
    use_labelled_mixture(monkeypatch)
    base = dict(data="labelled", cond=True, steps=1, batch=8, net_kwargs={"width": 8, "depth": 1})
    train(TrainConfig(method="edm", **base), str(tmp_path / "teacher"), progress=False)        # label_dropout = 0
    cfg = TrainConfig(method="cd", teacher=str(tmp_path / "teacher"), teacher_guidance=2.0, **base)
    with pytest.raises(FewstepError, match="label_dropout=0.*retrain it with --set label_dropout=0.1"):
        train(cfg, str(tmp_path / "cd"), progress=False)

#----------------------------------------------------------------------------
# Training on the 8-mode mixture: the 1-step error to the true consistency function and the 1-step
# sample distance must fall below thresholds that untrained and wrongly signed models fail.

F_ERROR_MAX, SWD_MAX = 0.3, 0.16        # untrained: 0.70, 0.49; reversed teacher: 5.1, 3.6
SMALL_NET = {"width": 64, "depth": 2}


def _train(method, tmp_path, steps, teacher=None, **method_kwargs):
    cfg = TrainConfig(method=method, steps=steps, batch=256, ema=0.99, log_every=steps, ckpt_every=steps,
                      net_kwargs=SMALL_NET, method_kwargs=method_kwargs, teacher="exact" if teacher else None)
    return train(cfg, str(tmp_path / method), progress=False, teacher=teacher).ema.module


def _scores(f):
    g = torch.Generator().manual_seed(7)
    err = consistency_error(f, GMM, n=1024, t=80.0, generator=g)
    x = sample_consistency(f, torch.randn(2000, 2, generator=g) * 80, consistency_taus(1), generator=g)
    return err, sample_distance(x, GMM, generator=torch.Generator().manual_seed(8))


def test_untrained_model_fails_the_thresholds():
    f = build_model(TrainConfig(method="ct", net_kwargs=SMALL_NET)).eval()
    err, swd = _scores(f)
    assert err > F_ERROR_MAX and swd > SWD_MAX


@pytest.mark.slow
def test_cd_with_the_exact_teacher_learns_f(tmp_path):
    err, swd = _scores(_train("cd", tmp_path, 1500, teacher=as_denoiser(GMM), N=18, solver="heun"))
    assert err < F_ERROR_MAX and swd < SWD_MAX


@pytest.mark.slow
def test_cd_with_a_wrongly_signed_teacher_fails(tmp_path):
    exact = as_denoiser(GMM)
    reversed_ode = lambda x, sigma, **c: 2 * x - exact(x, sigma)              # dx/dsigma flips sign  # noqa: E731
    err, swd = _scores(_train("cd", tmp_path, 1500, teacher=reversed_ode, N=18, solver="heun"))
    assert err > F_ERROR_MAX and swd > SWD_MAX


@pytest.mark.slow
def test_ct_learns_f(tmp_path):
    err, swd = _scores(_train("ct", tmp_path, 3000, s1=20))
    assert err < F_ERROR_MAX and swd < SWD_MAX


@pytest.mark.slow
def test_ict_learns_f(tmp_path):
    err, swd = _scores(_train("ict", tmp_path, 2000, s1=160))
    assert err < F_ERROR_MAX and swd < SWD_MAX


@pytest.mark.slow
def test_continuous_ct_learns_f(tmp_path):
    err, swd = _scores(_train("ct-continuous", tmp_path, 1500))
    assert err < F_ERROR_MAX and swd < SWD_MAX
