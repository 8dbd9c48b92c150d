"""Distribution matching (seed 003): a one-step generator G(z) trained by the gradient of the reverse KL
between its distribution and the data's, grad_theta KL ~ E[w_t (s_fake(x_t) - s_real(x_t)) dG/dtheta] with
x = G(z), x_t = x + sigma n. The real score is the frozen teacher's; DMD learns the fake score with a second
diffusion model, SDS replaces it by -eps / sigma, and the sample-based estimator by E[x | x_t] over a batch
of generator samples.

In VE coordinates a score is s(x_t) = (D(x_t, sigma) - x_t) / sigma^2, so s_fake - s_real = (D_fake - D_real)
/ sigma^2 and the weights only rescale it. The gradient reaches G through the surrogate
1/2 ||x - stopgrad(x - grad)||^2, whose derivative in x is `grad`.
"""

import torch

from ..kinds import GENERATOR
from ..pairs import check_pair_options, run_pairs
from ..precond import append_dims
from ..processes import VE
from ..schedules import RHO, SIGMA_DATA, SIGMA_MAX, SIGMA_MIN
from .adversarial import GANHead
from .base import Group, Method
from .common import make_distance, randn_like, split_batch
from .diffusion import EDMLoss
from .distill import one_step, pair_batch


def noise_levels(n, generator, t_min, t_max, sigma_min, sigma_max, rho):
    """sigma at t ~ U[t_min, t_max] along the Karras ladder from sigma_min (t = 0) to sigma_max (t = 1), larger
    t more noise as in the paper: DMD's t ~ U(T_min, T_max) of its 1000-step schedule, T_min = 0.02 T and
    T_max = 0.98 T."""
    t = t_min + (t_max - t_min) * torch.rand(n, generator=generator, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (lo + t * (hi - lo)) ** rho


def matching_loss(x, D_fake, D_real):
    """The surrogate whose gradient in x is DMD's (D_fake - D_real) / mean|x - D_real| (the paper's weight
    w_t = sigma_t^2 / alpha_t * CS / ||mu_real(x_t) - x||_1, alpha = 1 in VE coordinates), per sample."""
    dims = tuple(range(1, x.ndim))
    weight = 1 / (x.detach() - D_real).abs().mean(dims, keepdim=True).clamp_min(1e-5)
    grad = (D_fake - D_real) * weight
    return 0.5 * (x - (x.detach() - grad)).square().flatten(1).sum(1).mean()


def sample_denoiser(x_t, sigma, xs):
    """E[x | x_t] over independent samples xs of p_fake with self-normalised weights N(x_t; x_j, sigma^2 I):
    the sample-based fake score s_fake(x_t) = -E[(x_t - alpha_t x) / sigma_t^2 | x_t] (seed 003, with x and
    x_t in their right places) is (E[x | x_t] - x_t) / sigma^2. Consistent, not unbiased; with the one sample
    that made x_t it is that sample: SDS."""
    d2 = torch.cdist(x_t.flatten(1).double(), xs.flatten(1).double()).square()             # (B, M)
    w = torch.softmax(-d2 / (2 * append_dims(sigma.double(), 2) ** 2), dim=1)
    return (w @ xs.flatten(1).double()).to(x_t.dtype).reshape(x_t.shape)


class DistributionMatching(Method):
    """DMD (seed 003; Yin et al. 2024): G(z) a one-step generator from the teacher's weights; the fake score a
    diffusion model from the teacher's weights, trained online (EDM's loss) on G's samples; G's loss the
    distribution-matching gradient at sigma from t ~ U[t_min, t_max], plus reg_weight times the regression
    d(G(z), x0) on `pairs` teacher pairs (reg_weight = 0 shows the mode collapse the seed warns about). DMD2's
    choices: fake_updates > 1 fake-score updates per generator step, reg_weight = 0, and gan_weight > 0 for a
    GAN term (a discriminator on real against generated samples, hinge loss with R1)."""

    produces, process = GENERATOR, VE
    starts_from_teacher = True
    groups = {"net": Group(("net",)), "fake": Group(("fake",))}

    def __init__(self, teacher, reg_weight=0.25, pairs=4096, pair_sampler=None, pair_steps=None, fake_updates=1,
                 fake_lr=None, gan_weight=0.0, r1=0.1, t_min=0.02, t_max=0.98, distance="l2",
                 sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO, sigma_data=SIGMA_DATA, c=None):
        if not 0 <= t_min < t_max <= 1:
            raise ValueError(f"DMD needs 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        if not (isinstance(fake_updates, int) and fake_updates >= 1):
            raise ValueError(f"fake_updates must be a positive integer, got {fake_updates!r}")
        check_pair_options(pairs, pair_steps, pair_sampler)
        self.teacher, self.reg_weight, self.n_pairs = teacher, reg_weight, pairs
        self.pair_sampler, self.pair_steps, self.gan_weight = pair_sampler, pair_steps, gan_weight
        self.levels = dict(t_min=t_min, t_max=t_max, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
        self.sigma_max, self.d, self.fake_loss = sigma_max, make_distance(distance, c=c), EDMLoss(sigma_data=sigma_data)
        self.groups = {"net": Group(("net",)), "fake": Group(("fake",), lr=fake_lr, updates=fake_updates)}
        self.gan = GANHead(r1) if gan_weight > 0 else None
        if self.gan:
            self.groups["disc"] = Group(("disc",), betas=(0.0, 0.99))

    def prepare(self, run):
        self.pairs = run_pairs(self.teacher, run, self.n_pairs, self.pair_sampler, self.pair_steps) if self.reg_weight else None

    def build(self, net, make_model):
        fake = make_model()
        fake.load_state_dict(net.state_dict())          # the student's start: the teacher's weights (init_from_teacher)
        return {"net": net, "fake": fake, **({"disc": self.gan.build(net)} if self.gan else {})}

    def generate(self, G, x, cond, generator):
        return one_step(G, randn_like(x, generator), self.sigma_max, cond)

    def fake_denoiser(self, nets, x_t, sigma, x, cond):
        return nets["fake"](x_t, sigma, **cond)

    def loss(self, group, nets, batch, *, k, generator):
        x_real, cond = split_batch(batch)
        if group == "fake":
            with torch.no_grad():
                x = self.generate(nets["net"], x_real, cond, generator)
            return self.fake_loss(nets["fake"], {"x": x, **cond}, generator=generator)
        if group == "disc":
            with torch.no_grad():
                x = self.generate(nets["net"], x_real, cond, generator)
            return self.gan.d_loss(nets["disc"], x_real, x, cond)
        x = self.generate(nets["net"], x_real, cond, generator)
        sigma = noise_levels(x.shape[0], generator, **self.levels).to(x)
        x_t = x.detach() + append_dims(sigma, x.ndim) * randn_like(x, generator)
        with torch.no_grad():
            D_real = self.teacher(x_t, sigma, **cond)
            D_fake = self.fake_denoiser(nets, x_t, sigma, x.detach(), cond)
        loss = matching_loss(x, D_fake, D_real)
        if self.pairs is not None:
            z, x0, pair_cond = pair_batch(self.pairs, x.shape[0], x, generator)
            loss = loss + self.reg_weight * self.d(one_step(nets["net"], z, self.sigma_max, pair_cond), x0).mean()
        if self.gan:
            loss = loss + self.gan_weight * self.gan.g_loss(nets["disc"], x, cond)
        return loss


class ScoreDistillation(DistributionMatching):
    """SDS (seed 003): DMD's gradient (and its data-dependent weight 1 / mean|x - D_real|) with no fake network. estimator="single": s_fake = -eps / sigma, the
    score of the one sample that made x_t (D_fake = x); estimator="batch": the sample-based estimate
    E[x | x_t] over the batch of independent generator samples (sample_denoiser). No regression loss."""

    groups = {"net": Group(("net",))}

    def __init__(self, teacher, estimator="single", t_min=0.02, t_max=0.98, sigma_min=SIGMA_MIN,
                 sigma_max=SIGMA_MAX, rho=RHO):
        if estimator not in ("single", "batch"):
            raise ValueError(f"unknown SDS estimator {estimator!r}; choose 'single' or 'batch'")
        super().__init__(teacher, reg_weight=0.0, t_min=t_min, t_max=t_max, sigma_min=sigma_min,
                         sigma_max=sigma_max, rho=rho)
        self.estimator, self.groups = estimator, {"net": Group(("net",))}

    def build(self, net, make_model):
        return {"net": net}

    def fake_denoiser(self, nets, x_t, sigma, x, cond):
        if self.estimator == "single":
            return x
        if "class_labels" not in cond:
            return sample_denoiser(x_t, sigma, x)
        D = torch.empty_like(x)                 # p_fake(x | c): pool only the samples of the same class
        _, group = torch.unique(cond["class_labels"], dim=0, return_inverse=True)
        for g in group.unique():
            rows = group == g
            D[rows] = sample_denoiser(x_t[rows], sigma[rows], x[rows])
        return D
