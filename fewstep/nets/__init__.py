"""Raw networks: they see (x, c_noise, class_labels) and know nothing of noise schedules."""

from .autoencoder import Autoencoder
from .classifier import Classifier
from .diffusers import DiffusersUNet
from .mlp import MLP
from .unet import UNet

NETS = {"mlp": MLP, "unet": UNet, "classifier": Classifier,
        "autoencoder": Autoencoder, "diffusers": DiffusersUNet}       # Network name (the config's `net`) -> class.


def sample_shape(net):
    """The shape of one sample a raw network makes: (C, H, W) for images, (dim,) for flat data."""
    return tuple(getattr(net, "img_shape", None) or (net.dim,))


def make_net(name="mlp", **kwargs):
    if name not in NETS:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(NETS)}")
    return NETS[name](**kwargs)
