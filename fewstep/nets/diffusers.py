"""A diffusers U-Net as a raw network F(x, c_noise, class_labels) (an optional extra: pip install 'fewstep[diffusers]').

The backbone is a diffusers `UNet2DModel` (or `UNet2DConditionModel`), read from a local folder (from_pretrained)
or built fresh from a config. Like every raw network it knows nothing of sigma: the wrappers of fewstep.precond
give it c_in x and c_noise, and `forward` only turns c_noise into the timestep the model was trained with, by
the convention of the diffusers scheduler that drives it (`timesteps`):

| timesteps | fewstep's c_noise                     | the U-Net's timestep | diffusers schedulers                   |
|-----------|---------------------------------------|----------------------|----------------------------------------|
| "vp"      | t / T, t = 1..T (VPPrecond, DDPM)     | c_noise T - 1        | DDPM, DDIM, DPMSolverMultistep, LCM    |
|           |                                       | (0-based t)          | (the model predicts eps)               |
| "cm"      | ln(sigma) / 4 (EDM, consistency)      | 1000 c_noise         | CMStochasticIterative (openai's CMs)   |
| "edm"     | ln(sigma) / 4                         | c_noise              | EDMEuler, EDMDPMSolverMultistep        |

A run picks "vp" on a discrete VP process (DDPM) and "cm" otherwise (runs.net_arguments): 1000 c_noise spans
the range of timesteps that diffusers' sinusoidal embedding is made for, where c_noise alone would not.

Class labels follow fewstep's convention: labels 0..num_classes-1 and the null label num_classes (classifier-free
guidance), so a fresh U-Net gets num_classes + 1 class embeddings. A UNet2DModel adds them to its time
embedding (diffusers' `num_class_embeds`); a UNet2DConditionModel also needs encoder_hidden_states, which here
is one learned token per label (the null label's included): a sequence of length 1 in its cross-attention.

LCM's guidance scale w (net.scalars=["w"], which `fewstep train lcm` adds) enters as diffusers' LCM U-Nets take it:
a UNet2DConditionModel with `time_cond_proj_dim` gets timestep_cond = the sinusoidal embedding of 1000 w
(LatentConsistencyModelPipeline's guidance-scale embedding, w = guidance_scale - 1). A UNet2DModel has no such
input, so an LCM on this backend needs a UNet2DConditionModel.
"""

import json
import os

import torch
from torch import nn

from ..errors import FewstepError

TIMESTEPS = ("vp", "cm", "edm")
UNETS = ("UNet2DModel", "UNet2DConditionModel")     # the diffusers classes this backend wraps
W_EMBEDDING = 256                                   # time_cond_proj_dim of a fresh LCM U-Net (diffusers' LCMs')


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise FewstepError("the diffusers network needs the diffusers package: pip install 'fewstep[diffusers]'") from None
    return diffusers


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_diffusers_folder(path):
    """Whether `path` is a diffusers pipeline folder (model_index.json) or U-Net folder (a config.json that
    diffusers wrote for one of UNETS), rather than a fewstep run."""
    path = os.path.expanduser(str(path))
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return True
    config = _read_json(os.path.join(path, "config.json"))
    return isinstance(config, dict) and config.get("_class_name") in UNETS


def unet_folder(path):
    """The U-Net folder of `path`: path itself (config.json + weights) or a pipeline folder's unet/."""
    path = os.path.expanduser(str(path))
    if os.path.isfile(os.path.join(path, "model_index.json")) and os.path.isdir(os.path.join(path, "unet")):
        path = os.path.join(path, "unet")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path} holds no diffusers U-Net (no config.json); pass a folder written by "
                         "save_pretrained, or a pipeline folder with a unet/")
    return path


def read_unet_config(config):
    """A U-Net config as a dict: the dict itself, or the config.json of a file, U-Net folder or pipeline folder."""
    if isinstance(config, dict):
        return dict(config)
    path = os.path.expanduser(str(config))
    path = path if os.path.isfile(path) else os.path.join(unet_folder(path), "config.json")
    config = _read_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON config; pass a diffusers U-Net's config.json or its folder")
    return config


class DiffusersUNet(nn.Module):
    """A diffusers UNet2DModel / UNet2DConditionModel seen as fewstep's F(x, c_noise, class_labels=None) -> like x;
    x is (B, C, H, W) or flat (B, C*H*W); class label `num_classes` (or None) is the null label."""

    def __init__(self,
        path            = None,         # Local diffusers U-Net folder, or a pipeline folder (its unet/): from_pretrained.
        config          = None,         # Or a fresh U-Net: a config dict (UNet2DModel unless _class_name says), or
                                        # the path of a config.json / U-Net folder whose architecture to copy.
        timesteps       = "cm",         # c_noise -> the U-Net's timestep: "vp", "cm" or "edm" (the module's table).
        T               = 1000,         # "vp": the process's number of steps, timestep = c_noise T - 1.
        img_resolution  = None,         # From the data: checked against, or filled into, the config's sample_size.
        in_channels     = None,         # From the data: checked against, or filled into, in_channels / out_channels.
        num_classes     = None,         # Class labels 0..num_classes-1 (+ the null label); None: the U-Net's own.
        scalars         = (),           # Real-valued conditions it embeds: only LCM's "w" (timestep_cond; see above).
    ):
        super().__init__()
        if (path is None) == (config is None):
            raise ValueError("the diffusers network needs exactly one of net.path (a U-Net folder) and net.config "
                             "(a config dict, or a folder to copy the architecture of)")
        if timesteps not in TIMESTEPS:
            raise ValueError(f"unknown timesteps convention {timesteps!r}; choose one of {TIMESTEPS}")
        self.timesteps, self.T = timesteps, int(T)
        self.unet = (self._load(path) if path is not None else
                     self._fresh(config, img_resolution, in_channels, num_classes, tuple(scalars)))
        self._check(img_resolution, in_channels, num_classes, tuple(scalars))
        self.scalars = tuple(scalars)
        cfg = self.unet.config
        size = cfg.sample_size or img_resolution
        if size is None:
            raise ValueError("the U-Net's config names no sample_size; set it (or train it on image data)")
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        self.img_shape = (cfg.in_channels, *size)
        self.img_resolution, self.dim = size[0], cfg.in_channels * size[0] * size[1]
        embeds = cfg.num_class_embeds or 0
        self.num_classes = max(embeds - 1, 0) if num_classes is None else int(num_classes)
        self.tokens = None
        if type(self.unet).__name__ == "UNet2DConditionModel":     # encoder_hidden_states: a learned token per label
            self.tokens = nn.Embedding(self.num_classes + 1, self._cross_attention_dim())

    @staticmethod
    def _load(path):
        folder = unet_folder(path)
        name = read_unet_config(folder).get("_class_name")
        if name not in UNETS:
            raise ValueError(f"{folder} holds a diffusers {name}, not one of {UNETS}")
        return getattr(_diffusers(), name).from_pretrained(folder, torch_dtype=torch.float32)

    @staticmethod
    def _fresh(config, img_resolution, in_channels, num_classes, scalars):
        """A freshly initialised U-Net; the data's shape and classes fill what the config leaves out."""
        config = {k: v for k, v in read_unet_config(config).items() if not k.startswith("_") or k == "_class_name"}
        name = config.pop("_class_name", "UNet2DModel")
        if name not in UNETS:
            raise ValueError(f"net.config names a diffusers {name}; choose one of {UNETS}")
        filled = {"sample_size": img_resolution, "in_channels": in_channels, "out_channels": in_channels}
        config.update({k: v for k, v in filled.items() if v is not None and k not in config})
        if num_classes and "num_class_embeds" not in config and config.get("class_embed_type") is None:
            config["num_class_embeds"] = num_classes + 1                # + the null label
        if "w" in scalars and name == "UNet2DConditionModel":
            config.setdefault("time_cond_proj_dim", W_EMBEDDING)
        return getattr(_diffusers(), name).from_config(config)

    def _check(self, img_resolution, in_channels, num_classes, scalars):
        cfg = self.unet.config
        if set(scalars) - {"w"}:
            raise ValueError(f"a diffusers U-Net embeds no condition {sorted(set(scalars) - {'w'})}; only LCM's w")
        if "w" in scalars and not getattr(cfg, "time_cond_proj_dim", None):
            raise ValueError("LCM's w enters a diffusers U-Net as timestep_cond: use a UNet2DConditionModel with "
                             "time_cond_proj_dim (net.config _class_name UNet2DConditionModel)")
        if getattr(cfg, "time_embedding_type", "positional") == "fourier":
            raise ValueError("a U-Net with time_embedding_type 'fourier' divides its output by the timestep (score-SDE "
                             "NCSN++), which fewstep's wrappers do not expect; use 'positional'")
        if None not in (img_resolution, cfg.sample_size) and cfg.sample_size not in (
                img_resolution, [img_resolution] * 2, (img_resolution,) * 2):
            raise ValueError(f"the U-Net makes {cfg.sample_size} px images but the data is {img_resolution} px; "
                             "use data of its size (--set data.resolution) or another U-Net")
        if in_channels is not None and (cfg.in_channels, cfg.out_channels) != (in_channels, in_channels):
            raise ValueError(f"the U-Net maps {cfg.in_channels} to {cfg.out_channels} channels but the data has "
                             f"{in_channels}; use data with its channels or another U-Net")
        embeds = cfg.num_class_embeds or 0
        if num_classes and type(self.unet).__name__ == "UNet2DModel" and embeds < num_classes:
            raise ValueError(f"the U-Net has {embeds} class embeddings but the data {num_classes} classes; build it "
                             "with num_class_embeds = classes + 1 (the null label), or train without cond")

    def _cross_attention_dim(self):
        dim = self.unet.config.cross_attention_dim
        if not isinstance(dim, int):
            raise ValueError(f"cross_attention_dim {dim} differs per block; fewstep's label tokens need one width")
        return dim

    def timestep(self, c_noise, batch):
        """The U-Net's timestep for fewstep's c_noise, as a (batch,) tensor (the module's table)."""
        c = c_noise.reshape(-1).expand(batch)
        if self.timesteps == "vp":
            return c * self.T - 1
        return 1000 * c if self.timesteps == "cm" else c

    def conditioning(self, class_labels, batch, device):
        """The U-Net's class_labels and encoder_hidden_states for fewstep's labels (None: the null label)."""
        if class_labels is None:
            if not self.num_classes and self.tokens is None and self.unet.class_embedding is None:
                return {}
            class_labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        class_labels = class_labels.reshape(batch).long()
        kwargs = {}
        if self.unet.class_embedding is not None:
            if isinstance(self.unet.class_embedding, nn.Embedding) and class_labels.max() >= self.unet.class_embedding.num_embeddings:
                raise ValueError(f"label {int(class_labels.max())} is beyond the U-Net's "
                                 f"{self.unet.class_embedding.num_embeddings} class embeddings (it has no null label)")
            kwargs["class_labels"] = class_labels
        if self.tokens is not None:
            kwargs["encoder_hidden_states"] = self.tokens(class_labels.clamp(max=self.num_classes))[:, None, :]
        return kwargs

    def w_embedding(self, w, batch, device):
        """LCM's timestep_cond: the sinusoidal embedding of 1000 w (LatentConsistencyModelPipeline's)."""
        from diffusers.models.embeddings import get_timestep_embedding
        w = torch.as_tensor(w, dtype=torch.float32, device=device).reshape(-1).expand(batch)
        return get_timestep_embedding(w * 1000, self.unet.config.time_cond_proj_dim, flip_sin_to_cos=False,
                                      downscale_freq_shift=1).to(self.unet.dtype)

    def forward(self, x, c_noise, class_labels=None, **scalars):
        batch = x.shape[0]
        c_noise = torch.as_tensor(c_noise, device=x.device)
        cond = self.conditioning(class_labels, batch, x.device)
        unknown = sorted(set(scalars) - set(self.scalars))
        if unknown:
            raise ValueError(f"this diffusers U-Net embeds no condition {unknown}; build it with scalars={unknown}")
        if "w" in self.scalars:
            cond["timestep_cond"] = self.w_embedding(scalars.get("w", 0.0), batch, x.device)
        out = self.unet(x.reshape(batch, *self.img_shape), self.timestep(c_noise, batch), return_dict=False, **cond)[0]
        return (out.flatten(1) if x.ndim == 2 else out).to(x.dtype)
