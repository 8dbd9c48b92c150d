"""Exponential moving average of a network's parameters: theta^- <- mu theta^- + (1 - mu) theta."""

import copy

import torch


def ema_warmup(rate, k):
    """A warm-up schedule: min(rate, (1 + k) / (10 + k)), so early averages do not remember the init."""
    return min(rate, (1 + k) / (10 + k))


class EMA:
    """An EMA copy of `net` (`.module`, frozen, eval mode). `rate` is a float mu or a schedule mu(k);
    `update(net, k)` applies stopgrad(mu theta^- + (1 - mu) theta) (seed 000, Algorithms 2-3)."""

    def __init__(self, net, rate):
        self.module = copy.deepcopy(net).requires_grad_(False).eval()
        self.rate = rate

    def mu(self, k):
        return self.rate(k) if callable(self.rate) else self.rate

    @torch.no_grad()
    def update(self, net, k):
        mu = self.mu(k)
        for p_ema, p in zip(self.module.parameters(), net.parameters()):
            p_ema.lerp_(p.detach(), 1 - mu)
        for b_ema, b in zip(self.module.buffers(), net.buffers()):
            b_ema.copy_(b)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state):
        self.module.load_state_dict(state)
