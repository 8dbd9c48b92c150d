"""The KL autoencoder of latent diffusion (Rombach et al.; the latent space of seed 004's latent consistency
models): a reconstruction loss through a reparameterised posterior sample plus a small KL term that keeps the
latents near N(0, I). The model is the raw autoencoder (kind AUTOENCODER); it generates nothing itself."""

from ..kinds import AUTOENCODER
from ..processes import VE
from .base import Method
from .common import split_batch

RECONSTRUCTIONS = ("l1", "l2")


def kl_divergence(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample, summed over the latent's elements:
    1/2 sum(mean^2 + exp(logvar) - 1 - logvar)."""
    return 0.5 * (mean.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1)


class AutoencoderLoss(Method):
    """KL autoencoder (latent diffusion's AutoencoderKL, seed 004's latent space): per-pixel L1 or L2
    reconstruction of x from z = mean + exp(logvar / 2) n, plus kl_weight times the KL to N(0, I) per pixel.

    Stable Diffusion sums both terms over the image and weighs the KL by 1e-6; dividing both by the pixel
    count keeps that weighting while the reconstruction reads as a per-pixel error."""

    produces, process = AUTOENCODER, VE

    def __init__(self, reconstruction="l1", kl_weight=1e-6):
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"unknown reconstruction {reconstruction!r}; choose one of {', '.join(RECONSTRUCTIONS)}")
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or kl_weight < 0:
            raise ValueError(f"kl_weight must be a number >= 0, got {kl_weight!r}; e.g. --set kl_weight=1e-6")
        self.reconstruction, self.kl_weight = reconstruction, kl_weight

    def __call__(self, net, batch, *, generator=None, **_):
        x, _ = split_batch(batch)
        x_hat, mean, logvar = net(x, generator=generator)
        error = (x_hat - x).abs() if self.reconstruction == "l1" else (x_hat - x).square()
        return error.mean() + self.kl_weight * kl_divergence(mean, logvar).mean() / x[0].numel()
