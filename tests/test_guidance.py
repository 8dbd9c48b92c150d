"""Guidance against closed forms on a two-class Gaussian toy (seed 002)."""

import functools

import pytest
import torch

from fewstep.config import TrainConfig
from fewstep.data.toy2d import GaussianMixture
from fewstep.generate import generate
from fewstep.guidance import ClassifierFreeGuidance, ClassifierGuidance, drop_labels
from fewstep.runs import build_model, load_model
from fewstep.sampling import SAMPLERS, sample_langevin
from fewstep.train import train
from oracles import use_labelled_mixture

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


#----------------------------------------------------------------------------
# Guided run models through the samplers (a tiny class-conditional MLP on a labelled 2-D mixture).

TINY = dict(data="labelled", cond=True, label_dropout=0.1, net_kwargs={"width": 8, "depth": 1})


def _sample(model, cfg, sampler, steps=3):
    y = torch.arange(8) % 2
    return generate(model, cfg, 8, steps, sampler=sampler, cond={"class_labels": y},
                    generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("sampler", [*SAMPLERS, "consistency"])
def test_guidance_runs_through_every_sampler(monkeypatch, sampler):
    use_labelled_mixture(monkeypatch)
    monkeypatch.setitem(SAMPLERS, "langevin", functools.partial(sample_langevin, n_steps=5))   # not 100: fast
    cfg = TrainConfig(method="ct" if sampler == "consistency" else "edm", **TINY)
    torch.manual_seed(0)
    model = build_model(cfg).eval().requires_grad_(False)
    torch.nn.init.normal_(model.net.out.weight, std=0.5)        # zero at init, where labels would not matter
    plain, _ = _sample(model, cfg, sampler)
    unguided, _ = _sample(ClassifierFreeGuidance(model, 0.0, null_label=2), cfg, sampler)
    guided, _ = _sample(ClassifierFreeGuidance(model, 2.0, null_label=2), cfg, sampler)
    assert torch.equal(unguided, plain)                          # w = 0 is the conditional model, bit for bit
    assert guided.shape == plain.shape == (8, 2) and torch.isfinite(guided).all()
    assert not torch.allclose(guided, plain)


def test_cfg_guided_ddim_on_a_vp_run(tmp_path, monkeypatch):
    # generate reads model.process for VP runs: the guidance wrapper must answer for the model it wraps
    use_labelled_mixture(monkeypatch)
    train(TrainConfig(method="ddpm", steps=2, batch=16, **TINY), str(tmp_path / "ddpm"), progress=False)
    model, cfg = load_model(str(tmp_path / "ddpm"))
    guided = ClassifierFreeGuidance(model, 2.0, null_label=model.net.num_classes)
    assert guided.process is model.process and guided.net is model.net
    x, nfe = _sample(guided, cfg, "ddim", steps=4)
    assert x.shape == (8, 2) and torch.isfinite(x).all()
    assert nfe == 2 * _sample(model, cfg, "ddim", steps=4)[1]               # CFG: two network calls a step
    unguided = _sample(ClassifierFreeGuidance(model, 0.0, null_label=2), cfg, "ddim", steps=4)[0]
    assert torch.equal(unguided, _sample(model, cfg, "ddim", steps=4)[0])
    assert not hasattr(ClassifierFreeGuidance(exact_D, 1.0, NULL), "process")     # a plain function has none
