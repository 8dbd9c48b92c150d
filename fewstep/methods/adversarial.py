"""Adversarial diffusion distillation (seed 003; Sauer et al. 2023), and the GAN head it shares with DMD2."""

import torch

from ..kinds import GENERATOR
from ..nets import sample_shape
from ..nets.discriminator import Discriminator
from ..precond import append_dims
from ..processes import VE
from ..sampling import consistency_taus
from ..schedules import RHO, SIGMA_MAX, SIGMA_MIN
from .base import Group, Method
from .common import hinge_d_loss, hinge_g_loss, make_distance, randn_like, split_batch


class GANHead:
    """A discriminator module ("disc", its own optimizer group) on clean samples, hinge losses and R1."""

    def __init__(self, r1=0.1, width=128):
        self.r1, self.width = r1, width

    def build(self, net):
        inner = net.net
        disc = Discriminator(sample_shape(inner), getattr(inner, "num_classes", 0), self.width)
        return disc.to(next(net.parameters()).device).train()

    @staticmethod
    def _labels(cond):
        return {"class_labels": cond["class_labels"]} if "class_labels" in cond else {}

    def d_loss(self, disc, real, fake, cond):
        return hinge_d_loss(disc, real, fake, self._labels(cond), self.r1)

    def g_loss(self, disc, fake, cond):
        return hinge_g_loss(disc, fake, self._labels(cond))


class AdversarialDistillation(Method):
    """ADD (seed 003; Sauer et al. 2023). The student x_hat = G(x_s, s) denoises real images noised to one of
    its levels s (the time points of 1 to `levels` step sampling, so it samples in 1 to `levels` steps from
    pure noise); its loss is adv_weight times the hinge GAN loss of a discriminator on real against student
    images, plus the SDS-style distillation loss c(t) d(x_hat, stopgrad D_teacher(x_hat + sigma_t n, sigma_t))
    with t ~ U over the teacher's Karras ladder and c(t) = alpha_t = 1 / sqrt(1 + sigma_t^2) (the paper's
    exponential weighting). The discriminator ("disc": its own network and optimizer, alternating with the
    student's) learns with the hinge loss and an R1 penalty on real images."""

    produces, process = GENERATOR, VE
    starts_from_teacher = True
    groups = {"net": Group(("net",)), "disc": Group(("disc",), betas=(0.0, 0.99))}

    def __init__(self, teacher, levels=4, adv_weight=0.5, r1=0.1, disc_width=128, distance="l2",
                 sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO, c=None):
        if not (isinstance(levels, int) and levels >= 1):
            raise ValueError(f"levels (the most sampling steps) must be a positive integer, got {levels!r}")
        self.teacher, self.adv_weight, self.gan = teacher, adv_weight, GANHead(r1, disc_width)
        self.s = torch.cat([consistency_taus(n, sigma_min, sigma_max, rho) for n in range(1, levels + 1)]).unique()
        self.sigma_min, self.sigma_max, self.rho, self.d = sigma_min, sigma_max, rho, make_distance(distance, c=c)

    def build(self, net, make_model):
        return {"net": net, "disc": self.gan.build(net)}

    def student(self, G, x, cond, generator):
        s = self.s[torch.randint(len(self.s), (x.shape[0],), generator=generator)].to(x)
        return G(x + append_dims(s, x.ndim) * randn_like(x, generator), s, **cond)

    def loss(self, group, nets, batch, *, k, generator):
        x, cond = split_batch(batch)
        if group == "disc":
            with torch.no_grad():
                fake = self.student(nets["net"], x, cond, generator)
            return self.gan.d_loss(nets["disc"], x, fake, cond)
        x_hat = self.student(nets["net"], x, cond, generator)
        u = torch.rand(x.shape[0], generator=generator, dtype=torch.float64)
        hi, lo = self.sigma_max ** (1 / self.rho), self.sigma_min ** (1 / self.rho)
        sigma = ((hi + u * (lo - hi)) ** self.rho).to(x)
        with torch.no_grad():
            target = self.teacher(x_hat + append_dims(sigma, x.ndim) * randn_like(x, generator), sigma, **cond)
        distill = (self.d(x_hat, target) / (1 + sigma ** 2).sqrt()).mean()
        return distill + self.adv_weight * self.gan.g_loss(nets["disc"], x_hat, cond)
