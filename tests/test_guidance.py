"""Guidance against closed forms on a two-class Gaussian toy (seed 002)."""

import pytest
import torch

from fewstep.data.toy2d import GaussianMixture
from fewstep.guidance import ClassifierFreeGuidance, ClassifierGuidance, drop_labels

MEANS = torch.tensor([[-0.6, 0.2], [0.5, -0.3]], dtype=torch.float64)
STD, NULL = 0.3, 2
MIX = GaussianMixture(MEANS, [STD], weights=[0.3, 0.7])
CLASS = [GaussianMixture(MEANS[i:i + 1], [STD]) for i in range(2)]


def exact_D(x, sigma, class_labels=None):
    """The exact conditional denoiser per label; the null label gets the unconditional mixture's."""
    out = MIX.denoiser(x, sigma)
    for y, gm in enumerate(CLASS):
        rows = class_labels == y
        out[rows] = gm.denoiser(x[rows], sigma[rows])
    return out


def bayes_classifier(x, sigma):
    """log p(y | x, sigma) of the mixture, up to a constant per row (logits)."""
    return torch.stack([gm.log_prob(x, sigma) + MIX.weights[y].log() for y, gm in enumerate(CLASS)], dim=1)


def _inputs(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    sigma = torch.rand(n, generator=g, dtype=torch.float64) * 2 + 0.05
    y = torch.randint(0, 2, (n,), generator=g)
    return x, sigma, y


def test_cfg_with_w0_is_the_conditional_model():
    x, sigma, y = _inputs()
    torch.testing.assert_close(ClassifierFreeGuidance(exact_D, 0.0, NULL)(x, sigma, class_labels=y),
                               exact_D(x, sigma, class_labels=y))


@pytest.mark.parametrize("w", [0.5, 2.0])
def test_cfg_guided_score_is_the_closed_form(w):
    # guided score = (w + 1) grad log p(x | y) - w grad log p(x), each closed-form for Gaussians
    x, sigma, y = _inputs()
    D_bar = ClassifierFreeGuidance(exact_D, w, NULL)(x, sigma, class_labels=y)
    score_c = torch.stack([CLASS[int(yi)].score(xi[None], si) [0] for xi, si, yi in zip(x, sigma, y)])
    want = (w + 1) * score_c - w * MIX.score(x, sigma)
    torch.testing.assert_close((D_bar - x) / sigma[:, None] ** 2, want)


def test_classifier_guidance_with_the_bayes_classifier_recovers_the_class_score():
    # score(x) + 1 * grad log p(y | x) = grad log p(x | y) (Bayes): w = 1 turns the unconditional
    # denoiser into the exact class-conditional one.
    x, sigma, y = _inputs()
    uncond = lambda x, s, **c: MIX.denoiser(x, s)                                   # noqa: E731
    D_bar = ClassifierGuidance(uncond, bayes_classifier, 1.0)(x, sigma, class_labels=y)
    torch.testing.assert_close(D_bar, exact_D(x, sigma, class_labels=y))
    D_0 = ClassifierGuidance(uncond, bayes_classifier, 0.0)(x, sigma, class_labels=y)
    torch.testing.assert_close(D_0, MIX.denoiser(x, sigma))


def test_drop_labels():
    y = torch.arange(10).repeat(1000)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(drop_labels(y, 0.0, 10, g), y)
    assert (drop_labels(y, 1.0, 10, g) == 10).all()
    dropped = (drop_labels(y, 0.2, 10, g) == 10).float().mean().item()
    assert dropped == pytest.approx(0.2, abs=0.015)


def test_guidance_needs_labels():
    x, sigma, _ = _inputs()
    with pytest.raises(ValueError, match="class_labels"):
        ClassifierFreeGuidance(exact_D, 1.0, NULL)(x, sigma)
