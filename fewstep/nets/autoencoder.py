"""A small KL-regularised convolutional autoencoder, the first stage of latent diffusion (Rombach et al.'s
AutoencoderKL, the latent space of seed 004's latent consistency models): the encoder gives the moments
(mean, log-variance) of a diagonal Gaussian posterior q(z | x), the decoder maps a latent z back to pixels.
GroupNorm + SiLU residual blocks, a stride-2 convolution per downsampling, nearest 2x + convolution per
upsampling; no attention (the latents of 28-32 px images are 8 x 8). It is not a denoiser F(x, c_noise):
`encode(x) -> (mean, logvar)` and `decode(z)` are its whole contract.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .unet import group_norm

LOGVAR_RANGE = (-30.0, 20.0)            # the posterior log-variance clamp of Stable Diffusion's AutoencoderKL


class ResBlock(nn.Module):
    """skip(x) + conv(silu(norm(conv(silu(norm(x)))))): the residual block of the autoencoder's two halves."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm0, self.conv0 = group_norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm1, self.conv1 = group_norm(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x):
        h = self.conv0(F.silu(self.norm0(x)))
        return self.skip(x) + self.conv1(F.silu(self.norm1(h)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 convolution."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _head(channels, out_channels):
    """norm, SiLU, 3x3 convolution: how each half ends."""
    return nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))


class Autoencoder(nn.Module):
    """x (C, H, W) in [-1, 1] <-> z (latent_channels, H / 2^(L-1), W / 2^(L-1)), L = len(channels)."""

    def __init__(self,
        img_resolution  = 32,           # Image height and width; divisible by 2^(len(channels) - 1).
        in_channels     = 1,            # Image channels.
        latent_channels = 4,            # Channels of the latent z (Stable Diffusion's KL-f8: 4).
        channels        = (16, 32, 64), # Width of each level; every level after the first halves the resolution.
        num_blocks      = 1,            # Residual blocks per level.
    ):
        super().__init__()
        factor = 2 ** (len(channels) - 1)
        if not channels or img_resolution % factor:
            raise ValueError(f"img_resolution {img_resolution} is not divisible by 2^{len(channels) - 1} = {factor} "
                             "(one halving per level after the first); pad the images (data.pad_to=32) or pass "
                             "fewer net.channels")
        self.img_shape = (in_channels, img_resolution, img_resolution)
        self.latent_shape = (latent_channels, img_resolution // factor, img_resolution // factor)
        self.encoder = self._encoder(in_channels, 2 * latent_channels, list(channels), num_blocks)
        self.decoder = self._decoder(latent_channels, in_channels, list(channels), num_blocks)

    @staticmethod
    def _encoder(c_in, c_out, channels, num_blocks):
        layers, c = [nn.Conv2d(c_in, channels[0], 3, padding=1)], channels[0]
        for level, width in enumerate(channels):
            for _ in range(num_blocks):
                layers.append(ResBlock(c, width))
                c = width
            if level < len(channels) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        return nn.Sequential(*layers, ResBlock(c, c), _head(c, c_out))

    @staticmethod
    def _decoder(c_in, c_out, channels, num_blocks):
        c = channels[-1]
        layers = [nn.Conv2d(c_in, c, 3, padding=1), ResBlock(c, c)]
        for level, width in reversed(list(enumerate(channels))):
            for _ in range(num_blocks):
                layers.append(ResBlock(c, width))
                c = width
            if level > 0:
                layers.append(Upsample(c))
        return nn.Sequential(*layers, _head(c, c_out))

    def encode(self, x):
        """(mean, logvar) of the posterior q(z | x), the log-variance clamped to LOGVAR_RANGE."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z):
        return self.decoder(z)

    def forward(self, x, generator=None):
        """(reconstruction, mean, logvar) of x through a reparameterised sample z = mean + exp(logvar / 2) n."""
        mean, logvar = self.encode(x)
        n = torch.randn(mean.shape, generator=generator).to(mean)
        return self.decode(mean + (0.5 * logvar).exp() * n), mean, logvar
