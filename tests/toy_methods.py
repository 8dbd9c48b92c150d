"""A test fixture, not a product feature: a method with two networks, two optimizer groups (one updated
twice per step), an EMA copy of its own and non-trainable state, to hold the training loop to the
method protocol (fewstep/methods/base.py). `register()` adds it to fewstep.methods.METHODS as "toy-two"."""

import torch

from fewstep.kinds import DENOISER
from fewstep.methods import METHODS
from fewstep.methods.base import Group, Method
from fewstep.methods.diffusion import EDMLoss


class TwoNetworks(Method):
    """"net" learns EDM's denoising loss plus a pull towards "critic"'s output; "critic" learns the same
    denoising loss (twice per step, at its own learning rate). The pull must move only "net": the loop
    keeps each group's gradients to its own parameters."""

    produces = DENOISER
    groups = {"net": Group(("net",)), "critic": Group(("critic",), lr=5e-4, betas=(0.5, 0.9), updates=2)}

    def __init__(self, pull=0.1):
        self.pull, self.edm = pull, EDMLoss()
        self.critic_k = torch.tensor(-1)              # the last step the critic trained at: state a resume restores

    def build(self, net, make_model):
        return {"net": net, "critic": make_model()}

    def emas(self):
        return {"critic_ema": ("critic", 0.9)}

    def loss(self, group, nets, batch, *, k, generator):
        if group == "critic":
            self.critic_k = torch.tensor(k)
            return self.edm(nets["critic"], batch, generator=generator)
        sigma = torch.full((batch.shape[0],), 1.0)
        pull = (nets["net"](batch, sigma) - nets["critic"](batch, sigma)).square().mean()
        return self.edm(nets["net"], batch, generator=generator) + self.pull * pull

    def state_dict(self):
        return {"critic_k": self.critic_k.clone()}

    def load_state_dict(self, state):
        self.critic_k = state["critic_k"].clone()


def register():
    METHODS["toy-two"] = TwoNetworks
