"""The ADM U-Net (Dhariwal & Nichol 2021, seed 002): a raw network F(x, c_noise, class_labels) -> like x.

Seed 002's changes to the DDPM U-Net: residual blocks rescaled by 1/sqrt(2), BigGAN residual blocks for
up/down sampling, multi-head self-attention at several resolutions, and AdaGN (GroupNorm whose scale and
shift come from the noise + class embedding). Layout and naming follow EDM's `DhariwalUNet`.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from .embeddings import FourierEmbedding, PositionalEmbedding, ScalarEmbedding, check_sizes, embed_scalars

SKIP_SCALE = 1 / math.sqrt(2)           # Residual rescale (seed 002): (x + h) / sqrt(2).


def group_norm(channels, affine=True):
    """GroupNorm with up to 32 groups of at least 4 channels (fewer for narrow layers, as EDM)."""
    groups = next(g for g in range(min(32, max(channels // 4, 1)), 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, affine=affine)


def memory_format(x):
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def resample(x, up=False, down=False):
    """BigGAN's parameter-free resampling: nearest-neighbour 2x up or 2x2 average-pool down."""
    if up:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return F.avg_pool2d(x, 2) if down else x


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, as a residual: (x + proj(attn(norm(x)))) / sqrt(2)."""

    def __init__(self, channels, num_heads, resolution, zero_init=True):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention at {resolution}x{resolution} has {channels} channels, "
                             f"not divisible by num_heads={num_heads}; change model_channels or num_heads")
        self.num_heads, self.resolution = num_heads, resolution
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        if zero_init:
            nn.init.zeros_(self.proj.weight), nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        B, C, H, W = x.shape
        # Channels last throughout: (B, H, W, 3C) -> (3, B, heads, H*W, C/heads); permute and reshape only.
        qkv = self.qkv(self.norm(x)).permute(0, 2, 3, 1).reshape(B, H * W, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)                              # (B, heads, H*W, C/heads)
        a = a.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous(memory_format=memory_format(x))
        return (x + self.proj(a)) * SKIP_SCALE


class ResBlock(nn.Module):
    """ADM residual block: (skip(x) + conv1(dropout(silu(AdaGN(conv0(silu(norm0(x))), emb))))) / sqrt(2).
    With up/down (BigGAN) both paths are resampled inside the block; then optional self-attention."""

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False,
                 attention=False, num_heads=4, resolution=None, dropout=0.0, zero_init=True):
        super().__init__()
        self.in_channels, self.out_channels, self.up, self.down = in_channels, out_channels, up, down
        self.norm0 = group_norm(in_channels)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.affine = nn.Linear(emb_channels, 2 * out_channels)             # AdaGN scale and shift.
        self.norm1 = group_norm(out_channels, affine=False)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if zero_init:                                                       # The block starts as its skip path.
            nn.init.zeros_(self.conv1.weight), nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.attn = Attention(out_channels, num_heads, resolution, zero_init) if attention else None

    def forward(self, x, emb):
        h = self.conv0(resample(F.silu(self.norm0(x)), self.up, self.down))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm1(h) * (1 + scale) + shift)                    # AdaGN (seed 002).
        h = self.conv1(self.dropout(h))
        x = (self.skip(resample(x, self.up, self.down)) + h) * SKIP_SCALE
        return self.attn(x) if self.attn is not None else x


class Resample(nn.Module):
    """DDPM's resampling (resample="conv"): a stride-2 3x3 conv down, or nearest 2x up then a 3x3 conv."""

    def __init__(self, channels, up=False, down=False):
        super().__init__()
        self.in_channels = self.out_channels = channels
        self.up, self.down = up, down
        self.conv = nn.Conv2d(channels, channels, 3, stride=2 if down else 1, padding=1)

    def forward(self, x, emb=None):
        return self.conv(resample(x, up=self.up))


class UNet(nn.Module):
    """ADM U-Net (seed 002; EDM's `DhariwalUNet` layout): F(x, c_noise, class_labels=None) -> like x.
    x is (B, C, H, W) or flat (B, C*H*W); class label `num_classes` (or None) is the null label."""

    def __init__(self,
        img_resolution   = 32,          # Image height and width at input and output.
        in_channels      = 1,           # Colour channels at input.
        out_channels     = None,        # Colour channels at output; None = in_channels.
        model_channels   = 64,          # Base channel count; the embedding has 4x as many.
        channel_mult     = (1, 2, 2),   # Channel multiplier per resolution; each next level halves H and W.
        num_blocks       = 2,           # Residual blocks per resolution (the decoder has one more).
        attn_resolutions = (8,),        # Resolutions with self-attention; the middle block always has it.
        num_heads        = 4,           # Attention heads.
        dropout          = 0.0,         # Dropout before each block's second conv (iCT uses more than CM).
        num_classes      = 0,           # Class conditioning: 0 = none; label num_classes is the null label.
        emb              = "positional",  # Noise embedding: "positional" (DDPM/EDM) or "fourier" (NCSN++/CM).
        emb_scale        = 1.0,         # Multiplier of c_noise (positional) or frequency std (fourier); see below.
        resample         = "biggan",    # Up/down sampling: "biggan" (inside residual blocks) or "conv" (DDPM).
        zero_init        = True,        # Zero-init the output conv and each residual branch's last layer.
        scalars          = (),          # Names of real-valued conditions (fewstep.conditions.Scalar) it embeds.
    ):
        # emb_scale: EDM embeds c_noise = log(sigma)/4 positionally with scale 1 (the default); for VP's
        # c_noise = t/T use 1000 (DDPM). iCT's Fourier scale 0.02 on 250 log(sigma) is fourier 20 here.
        super().__init__()
        check_sizes(dropout, img_resolution=img_resolution, model_channels=model_channels, num_blocks=num_blocks,
                    num_heads=num_heads, **{f"channel_mult[{i}]": m for i, m in enumerate(channel_mult)})
        levels = len(channel_mult)
        if img_resolution % 2 ** (levels - 1):
            raise ValueError(f"img_resolution must be divisible by 2^(len(channel_mult)-1) = {2 ** (levels - 1)}, "
                             f"got {img_resolution} with channel_mult {tuple(channel_mult)}; pad the images "
                             f"(e.g. 28 -> 32) or use fewer levels")
        if resample not in ("biggan", "conv"):
            raise ValueError(f"unknown resample {resample!r}; choose 'biggan' or 'conv'")
        if emb not in ("positional", "fourier"):
            raise ValueError(f"unknown noise embedding {emb!r}; choose 'positional' or 'fourier'")
        out_channels = out_channels or in_channels
        self.img_resolution, self.num_classes = img_resolution, num_classes
        self.img_shape = (in_channels, img_resolution, img_resolution)
        self.dim = in_channels * img_resolution ** 2
        emb_channels = 4 * model_channels
        block = dict(emb_channels=emb_channels, num_heads=num_heads, dropout=dropout, zero_init=zero_init)

        # Mapping: noise embedding -> MLP, plus the class embedding (ADM).
        embed = PositionalEmbedding if emb == "positional" else FourierEmbedding
        self.map_noise = embed(model_channels, emb_scale)
        self.map_mlp = nn.Sequential(nn.Linear(model_channels, emb_channels), nn.SiLU(),
                                     nn.Linear(emb_channels, emb_channels))
        self.map_label = nn.Embedding(num_classes + 1, emb_channels) if num_classes else None
        self.map_scalar = nn.ModuleDict({n: ScalarEmbedding(emb_channels) for n in scalars}) if scalars else None

        # Encoder.
        self.conv_in = nn.Conv2d(in_channels, model_channels * channel_mult[0], 3, padding=1)
        self.enc = nn.ModuleDict()
        cout, skips = model_channels * channel_mult[0], [model_channels * channel_mult[0]]
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level > 0:
                self.enc[f"{res}x{res}_down"] = self._resampler(resample, cout, down=True, **block)
                skips.append(cout)
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{i}"] = ResBlock(cin, cout, attention=res in attn_resolutions,
                                                             resolution=res, **block)
                skips.append(cout)

        # Middle: ResBlock with attention, ResBlock (ADM).
        self.mid = nn.ModuleList([ResBlock(cout, cout, attention=True, resolution=res, **block),
                                  ResBlock(cout, cout, **block)])

        # Decoder: each block takes one encoder output as a skip (concatenated channels).
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level < levels - 1:
                self.dec[f"{res}x{res}_up"] = self._resampler(resample, cout, up=True, **block)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{i}"] = ResBlock(cin, cout, attention=res in attn_resolutions,
                                                             resolution=res, **block)
        self.out_norm = group_norm(cout)
        self.out_conv = nn.Conv2d(cout, out_channels, 3, padding=1)
        if zero_init:                                                       # F = 0 at init (EDM, CM).
            nn.init.zeros_(self.out_conv.weight), nn.init.zeros_(self.out_conv.bias)

    @staticmethod
    def _resampler(kind, channels, up=False, down=False, **block):
        if kind == "biggan":
            return ResBlock(channels, channels, up=up, down=down, **block)
        return Resample(channels, up=up, down=down)

    def embed(self, c_noise, class_labels, batch, scalars=None):
        """The embedding that drives every AdaGN: silu(MLP(embed(c_noise)) + label and scalar embeddings)."""
        emb = self.map_mlp(self.map_noise(c_noise.reshape(-1).expand(batch)))
        if self.map_label is not None:
            if class_labels is None:
                class_labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=emb.device)
            emb = emb + self.map_label(class_labels.reshape(batch))
        if self.map_scalar is not None or scalars:
            emb = emb + embed_scalars(self.map_scalar or {}, scalars or {}, batch)
        return F.silu(emb)

    def forward(self, x, c_noise, class_labels=None, **scalars):
        emb = self.embed(torch.as_tensor(c_noise, device=x.device), class_labels, x.shape[0], scalars)
        h = self.conv_in(x.reshape(x.shape[0], *self.img_shape))
        skips = [h]
        for block in self.enc.values():
            h = block(h, emb)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.dec.values():
            if not block.up:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        out = self.out_conv(F.silu(self.out_norm(h)))
        return (out.flatten(1) if x.ndim == 2 else out).to(x.dtype)


# Named sizes (parameter counts at 1 channel, 32 px; see tests/test_unet.py). Attention resolutions name the
# lowest level for both 32 px and 28 px inputs (8x8 and 7x7).
UNET_CONFIGS = {
    "cpu-tiny": dict(model_channels=16, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(8, 7), num_heads=2),
    "cpu":      dict(model_channels=32, channel_mult=(1, 2, 2), num_blocks=2, attn_resolutions=(8, 7), num_heads=4),
    "gpu":      dict(model_channels=128, channel_mult=(1, 2, 2), num_blocks=3, attn_resolutions=(16, 14, 8, 7),
                     num_heads=4),
    "base":     {},             # UNet's own defaults: what `--net unet` built before cpu-tiny became the default
}


def make_unet(config_name="cpu-tiny", **overrides):
    """A UNet of a named size, with any constructor argument overridden (e.g. img_resolution=28)."""
    if config_name not in UNET_CONFIGS:
        raise ValueError(f"unknown U-Net config {config_name!r}; choose one of {sorted(UNET_CONFIGS)}")
    return UNet(**{**UNET_CONFIGS[config_name], **overrides})
