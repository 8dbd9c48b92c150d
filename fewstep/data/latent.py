"""Latent datasets: an image dataset seen through an autoencoder's encoder, so that any method trains in its
latent space (latent diffusion; the latent consistency models of seed 004 distill there).

The source images are encoded once (the posterior mean, in batches, without gradients) and the latents
cached with their labels under AUTOENCODER/latents/NAME.safetensors, NAME naming the source, its options,
the split and a fingerprint of the autoencoder's weights, so a retrained autoencoder never reads stale
latents. Latents are scaled to about unit variance as Stable Diffusion does, x = (z - shift) * scale: for a
fewstep autoencoder scale = 1 / std of the cached latents (stored in the cache), for a diffusers
AutoencoderKL its config's scaling_factor and shift_factor, for an AutoencoderTiny its scaling_factor.
`decode(x)` undoes the scale and decodes to [-1, 1] images of the source's shape.
"""

import hashlib
import json
import os
import sys

import torch
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, read_json, save_checkpoint
from ..errors import FewstepError

BATCH = 500                                             # images per encoder or decoder call
DIFFUSERS_AUTOENCODERS = ("AutoencoderKL", "AutoencoderTiny")
DIFFUSERS_HINT = "pip install 'fewstep[diffusers]'"


class FewstepAutoencoder:
    """A `fewstep train vae` run's EMA autoencoder: encode -> posterior mean; scale from the data (None)."""

    def __init__(self, net):
        self.module, self.scale, self.shift = net, None, 0.0
        self.in_channels = net.img_shape[0]

    def encode(self, x):
        return self.module.encode(x)[0]

    def decode(self, z):
        return self.module.decode(z)


class DiffusersAutoencoder:
    """A diffusers AutoencoderKL (posterior mean) or AutoencoderTiny (its deterministic latents), with the
    scaling_factor and shift_factor of its config."""

    def __init__(self, vae):
        self.module, self.in_channels = vae, vae.config.in_channels
        self.scale, self.shift = float(vae.config.scaling_factor), float(vae.config.get("shift_factor") or 0.0)

    def encode(self, x):
        out = self.module.encode(x)
        return out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents

    def decode(self, z):
        return self.module.decode(z).sample


def load_autoencoder(path):
    """The autoencoder in `path`: a diffusers folder when its config.json names a `_class_name`, else a fewstep
    vae run. Every failure is one line."""
    path = os.path.expanduser(path) if isinstance(path, str) else path
    if not isinstance(path, str) or not os.path.isdir(path):
        raise FewstepError(f"autoencoder folder {path!r} not found; pass --set data.autoencoder= a run of "
                           "`fewstep train vae --net autoencoder --out AE` or a diffusers AutoencoderKL folder")
    config = os.path.join(path, "config.json")
    name = read_json(config, "autoencoder config", kind=dict).get("_class_name") if os.path.isfile(config) else None
    if name is not None:
        return DiffusersAutoencoder(_from_diffusers(name, path))
    from ..runs import load_model                       # runs imports fewstep.data: load it on use
    net, cfg = load_model(path)
    if cfg.method != "vae":
        raise FewstepError(f"{path} is a {cfg.method!r} run, not an autoencoder; train one with: fewstep train vae "
                           "--net autoencoder --data fashion-mnist --set data.pad_to=32 --out AE")
    return FewstepAutoencoder(net)


def _from_diffusers(name, path):
    try:
        import diffusers
    except ImportError:
        raise FewstepError(f"{path} is a diffusers {name}, which needs diffusers; {DIFFUSERS_HINT}") from None
    if name not in DIFFUSERS_AUTOENCODERS:
        raise FewstepError(f"{path} holds a diffusers {name}, not an {' or '.join(DIFFUSERS_AUTOENCODERS)}; "
                           "pass the autoencoder's own folder (a pipeline's vae/)")
    try:
        return getattr(diffusers, name).from_pretrained(path).eval().requires_grad_(False)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise FewstepError(f"cannot load the diffusers {name} in {path} ({first}); save it again with "
                           "save_pretrained") from None


def match_channels(x, channels):
    """Gray <-> RGB: a 1-channel image repeated to 3 channels, a 3-channel one averaged to 1."""
    if x.shape[1] == channels:
        return x
    if (x.shape[1], channels) == (1, 3):
        return x.repeat(1, 3, 1, 1)
    if (x.shape[1], channels) == (3, 1):
        return x.mean(dim=1, keepdim=True)
    raise FewstepError(f"the autoencoder takes {channels}-channel images but the source has {x.shape[1]} channels; "
                       "pass an autoencoder made for this data")


def latent_file(folder, fingerprint, **settings):
    """The cache file of one encoding: the source, its options, split and limit through a short hash, and the
    autoencoder's weights through their fingerprint."""
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(folder, "latents", f"{settings['source']}-{settings['split']}-{key}-{fingerprint}.safetensors")


@torch.no_grad()
def encode_images(autoencoder, images, device="cpu", batch=BATCH, desc="encoding", progress=True):
    """Posterior means of uint8 images (N, C, H, W), in batches on `device`, back on the CPU."""
    ae, out = autoencoder.module.to(device), []
    for i in tqdm(range(0, len(images), batch), disable=None if progress else True, desc=desc, leave=False):
        x = match_channels(images[i:i + batch].to(device).float() / 127.5 - 1, autoencoder.in_channels)
        out.append(autoencoder.encode(x).float().cpu())
    ae.cpu()
    return torch.cat(out)


class Latents:
    """An image dataset's latents, sampled with replacement like InMemoryImages: {"x": scaled latents (n, C, h, w),
    "class_labels": (n,)}, or the latents alone when the source is unlabelled."""

    def __init__(self,
        autoencoder,                # A `fewstep train vae` run, or a diffusers AutoencoderKL / AutoencoderTiny folder.
        source          = None,     # The image dataset it encodes (None: the vae run's own data, else fashion-mnist).
        source_options  = None,     # Its options, e.g. {"pad_to": 32} (None: the vae run's own, else none).
        split           = "train",  # The source's split; datasets without splits take "train" only.
        limit           = None,     # Encode only the first `limit` images (None: all of them).
        classes         = None,     # Train on these class labels only (a style fine-tune on a subset); None: all.
    ):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise FewstepError(f"data.limit must be a positive integer, got {limit!r}; e.g. --set data.limit=1000")
        self.folder = os.path.expanduser(autoencoder) if isinstance(autoencoder, str) else autoencoder
        self.autoencoder = load_autoencoder(self.folder)
        source, source_options = self._source(source, source_options)
        from ..pairs import fingerprint
        settings = dict(source=source, source_options=source_options, split=split, limit=limit)
        path = latent_file(self.folder, fingerprint(self.autoencoder.module), **settings)
        tensors, meta = self._cached(path) or self._encode(path, settings)
        self._set(tensors, meta)
        if classes is not None:
            self._keep(classes)

    def _source(self, source, options):
        """The source dataset and its options: the vae run's own when not given."""
        if isinstance(self.autoencoder, FewstepAutoencoder) and source is None:
            from ..runs import load_config
            cfg = load_config(self.folder)
            source, options = cfg.data, (cfg.data_kwargs if options is None else options)
        source = source or "fashion-mnist"
        if options is not None and not isinstance(options, dict):
            raise FewstepError(f"data.source_options must be a JSON object, got {options!r}; "
                               "e.g. --set data.source_options='{\"pad_to\": 32}'")
        return source, {k: v for k, v in (options or {}).items() if k != "split"}

    @staticmethod
    def _cached(path):
        """(tensors, meta) of an earlier encoding; None when there is none (or a damaged one: encoded again)."""
        try:
            return load_checkpoint(path) if os.path.isfile(path) else None
        except FewstepError:
            return None

    def _encode(self, path, settings):
        """Encode the source once and keep the latents in the cache (in memory only where it cannot be written)."""
        images, labels, class_names = source_images(settings)
        if settings["limit"]:
            images, labels = images[:settings["limit"]], None if labels is None else labels[:settings["limit"]]
        self._check_shapes(images, settings["source"])
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        print(f"encoding {len(images)} {settings['source']} images -> {path}", file=sys.stderr, flush=True)
        z = encode_images(self.autoencoder, images, device, desc=f"encoding {settings['source']}")
        scale = self.autoencoder.scale or 1 / z.float().std().item()     # Stable Diffusion's latent scale factor
        tensors = {"latents": z.contiguous(), **({"labels": labels.contiguous()} if labels is not None else {})}
        meta = {**settings, "scale": scale, "shift": self.autoencoder.shift, "image_shape": list(images.shape[1:]),
                "class_names": class_names}
        try:
            save_checkpoint(path, tensors, meta)
        except (OSError, FewstepError) as e:            # a read-only autoencoder folder: the latents are only not kept
            print(f"cannot keep the latents in {os.path.dirname(path)} ({getattr(e, 'strerror', None) or e}); "
                  "using them from memory", file=sys.stderr)
        return tensors, meta

    @torch.no_grad()
    def _check_shapes(self, images, source):
        """One line, before encoding, for images of another size than a fewstep autoencoder was trained on, or
        than the autoencoder decodes back."""
        shape, size = tuple(images.shape[1:]), lambda s: "x".join(map(str, s))
        trained = getattr(self.autoencoder.module, "img_shape", None)
        if trained is not None and tuple(trained[1:]) != shape[1:]:
            raise FewstepError(f"the autoencoder {self.folder} was trained on {size(trained)} images but {source} "
                               f"gives {size(shape)}; pass the data options it was trained with, e.g. "
                               "--set data.source_options='{\"pad_to\": 32}'")
        decoded = tuple(self.autoencoder.decode(encode_images(self.autoencoder, images[:1], progress=False)).shape[1:])
        if decoded[1:] != shape[1:]:
            raise FewstepError(f"the autoencoder decodes {source}'s {size(shape)} images to {size(decoded)}; pad them "
                               "to a size it keeps, e.g. --set data.source_options='{\"pad_to\": 32}'")

    def _set(self, tensors, meta):
        self.scale, self.shift = meta["scale"], meta["shift"]
        self.latents = (tensors["latents"].float() - self.shift) * self.scale
        self.labels = tensors.get("labels")
        self.class_names = meta["class_names"]
        self.num_classes = len(self.class_names) if self.class_names and self.labels is not None else 0
        self.image_shape = tuple(meta["image_shape"])       # (C, H, W) of the decoded images
        self.shape = tuple(self.latents.shape[1:])          # (C, h, w) of the latents
        self.dim = self.latents[0].numel()

    def _keep(self, classes):
        """Only the latents of `classes`; the labels keep their numbers (and the null label its own), and the scale
        stays the whole source's, so a fine-tune on a subset sees the latents its teacher saw."""
        if not self.num_classes:
            raise FewstepError("data.classes picks classes of a labelled source; this source has no labels")
        if not isinstance(classes, list) or not classes or not all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c < self.num_classes for c in classes):
            raise FewstepError(f"data.classes must be a list of class labels in 0..{self.num_classes - 1}, got "
                               f"{classes!r}; e.g. --set data.classes=[0,2,4]")
        keep = torch.isin(self.labels, torch.tensor(classes))
        self.latents, self.labels = self.latents[keep], self.labels[keep]

    def __len__(self):
        return len(self.latents)

    def sample(self, n, generator=None):
        """n scaled latents drawn with replacement by indices from `generator`."""
        idx = torch.randint(len(self.latents), (n,), generator=generator)
        return {"x": self.latents[idx], "class_labels": self.labels[idx]} if self.num_classes else self.latents[idx]

    @torch.no_grad()
    def decode(self, x, batch=BATCH):
        """Images in [-1, 1] of the source's shape from scaled latents x, in batches on x's device."""
        self.autoencoder.module.to(x.device)
        z = x.float() / self.scale + self.shift
        out = [self.autoencoder.decode(z[i:i + batch]) for i in range(0, len(z), batch)]
        return match_channels(torch.cat(out).float(), self.image_shape[0])


def source_images(settings):
    """(uint8 images (N, C, H, W), labels or None, class names or None) of the source dataset."""
    from . import DATASETS, IMAGE_DATASETS, make_dataset
    source, options, split = settings["source"], dict(settings["source_options"]), settings["split"]
    if source not in IMAGE_DATASETS or source == "latents":
        raise FewstepError(f"data.source must be an image dataset ({', '.join(sorted(IMAGE_DATASETS - {'latents'}))}), "
                           f"got {source!r}")
    params = check_split(DATASETS[source], source, split)
    unknown = sorted(set(options) - set(params))
    if unknown:
        valid = sorted(set(params) - {"split"})
        raise FewstepError(f"dataset {source!r} has no option {unknown[0]!r}; its options are {valid} "
                           "(--set data.source_options='{\"KEY\": VALUE}')")
    if "split" in params:
        options["split"] = split
    try:
        data = make_dataset(source, **options)
    except (TypeError, ValueError) as e:
        raise FewstepError(f"bad data.source_options for {source!r} ({e}); fix them") from None
    return data.images, data.labels, data.class_names


def check_split(factory, source, split):
    """The source's constructor parameters; one line for a split asked of a dataset that has none."""
    import inspect
    params = inspect.signature(factory).parameters
    if "split" not in params and split != "train":
        raise FewstepError(f"dataset {source!r} has no splits; leave data.split out (it reads every image)")
    return params
