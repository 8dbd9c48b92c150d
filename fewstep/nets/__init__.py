"""Raw networks: they see (x, c_noise, class_labels) and know nothing of noise schedules."""

from .classifier import Classifier
from .mlp import MLP
from .unet import UNet

NETS = {"mlp": MLP, "unet": UNet, "classifier": Classifier}       # Network name (the config's `net`) -> class.


def make_net(name="mlp", **kwargs):
    if name not in NETS:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(NETS)}")
    return NETS[name](**kwargs)
