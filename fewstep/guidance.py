"""Guidance (seed 002): classifier-free guidance and classifier guidance, as denoiser wrappers.

A guided denoiser keeps the contract D(x, sigma, **cond), so every sampler and every distillation method
(CD with a guided teacher) uses it unchanged. In VE coordinates D = x - sigma eps, so seed 002's
eps-space formulas carry over to D linearly.
"""

import torch

from .conditions import ClassLabel
from .precond import append_dims


def drop_labels(labels, p, null_label, generator=None):
    """Classifier-free guidance training: replace each label by the null label with probability p."""
    return ClassLabel(null_label).drop(labels, p, generator)


class Guided(torch.nn.Module):
    """A guided denoiser answers for the model it wraps: `process` (generate reads it for VP runs) and
    `net` (the raw network: img_shape, num_classes). A wrapped model without them (a plain function)
    raises AttributeError, so hasattr() tells the same for the wrapper as for the model."""

    @property
    def process(self):
        return self.D.process

    @property
    def net(self):
        return self.D.net

    @property
    def kind(self):
        return self.D.kind


class ClassifierFreeGuidance(Guided):
    """eps_bar = (w + 1) eps(x, t, c) - w eps(x, t, null) (seed 002), i.e. D_bar = (w + 1) D_c - w D_u, for
    any conditions that have a null value (fewstep.conditions). w = 0 is the conditional model; a (B,) tensor w
    guides each row with its own scale (LCM's w ~ U[w_min, w_max]). The default guides the class label, whose
    null is `null_label` (the label trained for "no class")."""

    def __init__(self, D, w, null_label=None, conditions=None):
        super().__init__()
        self.D, self.w = D, w if torch.is_tensor(w) else float(w)
        self.active = bool((torch.as_tensor(w) != 0).any())     # w = 0 everywhere: the conditional model alone
        self.conditions = conditions if conditions is not None else [ClassLabel(null_label)]

    def forward(self, x, sigma, **cond):
        for c in self.conditions:
            if c.name not in cond or cond[c.name] is None:
                raise ValueError(f"classifier-free guidance needs {c.name}; pass cond={{'{c.name}': y}}")
        D_c = self.D(x, sigma, **cond)
        if not self.active:
            return D_c
        D_u = self.D(x, sigma, **{**cond, **{c.name: c.null_like(cond[c.name]) for c in self.conditions}})
        w = append_dims(self.w.to(x), x.ndim) if torch.is_tensor(self.w) else self.w
        return (w + 1) * D_c - w * D_u


class ClassifierGuidance(Guided):
    """eps_bar = eps - sqrt(1 - abar) w grad log p(y | x_t) (seed 002); in VE coordinates the guided score is
    score + w grad_x log p(y | x, sigma), so D_bar = D + w sigma^2 grad_x log p(y | x, sigma).
    `classifier(x, sigma) -> logits` is a noise-conditional classifier."""

    def __init__(self, D, classifier, w):
        super().__init__()
        self.D, self.classifier, self.w = D, classifier, float(w)

    def forward(self, x, sigma, class_labels=None, **cond):
        if class_labels is None:
            raise ValueError("classifier guidance needs class_labels; pass cond={'class_labels': y}")
        D = self.D(x, sigma, **cond)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_p = torch.log_softmax(self.classifier(x_in, sigma), dim=1)
            picked = log_p.gather(1, class_labels.reshape(-1, 1)).sum()
            grad = torch.autograd.grad(picked, x_in)[0]
        return D + self.w * sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2 * grad


def embeds(model, name):
    """Whether a model's raw network takes the scalar condition `name` (LCM's w, CTM's s)."""
    net = getattr(model, "net", None)
    return name in (getattr(net, "map_scalar", None) or getattr(net, "scalar_emb", None) or getattr(net, "scalars", None)
                    or {})


class GuidanceScaleInput(Guided):
    """A model distilled with the guidance scale as an input (LCM, seed 004): D(x, sigma, w=w) with one w for
    every sample; a single network call, unlike classifier-free guidance."""

    def __init__(self, D, w):
        super().__init__()
        self.D, self.w = D, float(w)

    def forward(self, x, sigma, **cond):
        return self.D(x, sigma, w=torch.full((x.shape[0],), self.w, dtype=x.dtype, device=x.device), **cond)


def network_calls(model):
    """Network evaluations per denoiser call: classifier-free guidance runs the model twice (w != 0)."""
    return 2 if isinstance(model, ClassifierFreeGuidance) and model.w != 0 else 1


def guide(model, cfg, guidance=0.0, classifier=None):
    """The model a sampler runs for guidance scale w: classifier guidance with `classifier`, w as an input for
    a model that embeds it (LCM), classifier-free guidance of a conditional run, or the model itself."""
    if classifier is not None:
        return ClassifierGuidance(model, classifier, guidance)
    if embeds(model, "w"):
        return GuidanceScaleInput(model, guidance)
    if cfg.cond and guidance:
        return ClassifierFreeGuidance(model, guidance, null_label=model.net.num_classes)
    return model
