"""Zero-shot editing (fewstep.editing): answers known in advance, on exact Gaussian models and tiny U-Nets."""

import math

import pytest
import torch
from torch import nn

from fewstep.config import TrainConfig
from fewstep.editing import (Colorization, Inpainting, SuperResolution, box_hole, denoise, interpolate, slerp,
                             solve_inverse, stroke_guided)
from fewstep.errors import FewstepError
from fewstep.generate import generate
from fewstep.runs import build_model

SHAPE = (3, 8, 8)
MEAN, STD = 0.1, 0.5
UNET = {"config": "cpu-tiny", "channel_mult": [1, 2]}


class GaussianModel(nn.Module):
    """The exact denoiser ("edm") or consistency function ("ct") of images from N(MEAN, STD^2 I)."""

    class Net(nn.Module):
        img_shape = SHAPE

        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(()))

    def __init__(self, kind, sigma_min=0.002):
        super().__init__()
        self.kind, self.sigma_min, self.net = kind, sigma_min, self.Net()

    def forward(self, x, sigma, **cond):
        sigma = sigma.reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)
        if self.kind == "edm":                                 # posterior mean E[x0 | x]
            return MEAN + STD ** 2 / (STD ** 2 + sigma ** 2) * (x - MEAN)
        ratio = ((STD ** 2 + self.sigma_min ** 2) / (STD ** 2 + sigma ** 2)).sqrt()
        return MEAN + ratio * (x - MEAN)                      # the PF-ODE solution at sigma_min


def gaussian(kind):
    return GaussianModel(kind), TrainConfig(method=kind)


def observed(seed=0, n=4):
    return MEAN + STD * torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind,sampler,steps", [("ct", None, 1), ("ct", None, 3), ("edm", "heun", 6),
                                                ("edm", "euler", 5), ("edm", "ddpm", 5)])
def test_known_pixels_are_kept_exactly(kind, sampler, steps):
    model, cfg = gaussian(kind)
    y = observed()
    hole = box_hole(SHAPE[1:], (2, 1, 6, 5))
    c = Inpainting(hole)
    x, _ = solve_inverse(model, cfg, c.measure(y), c, steps, sampler=sampler, generator=torch.Generator().manual_seed(1))
    keep = ~hole.expand(SHAPE)
    assert torch.equal(x[:, keep], y[:, keep])
    assert (x[:, ~keep] - y[:, ~keep]).abs().mean() > 0.1          # the hole is generated, not copied


@pytest.mark.parametrize("kind,sampler,steps", [("ct", None, 2), ("edm", "heun", 6), ("edm", "ddpm", 4)])
def test_an_empty_mask_is_unconditional_sampling_with_the_same_seed(kind, sampler, steps):
    model, cfg = gaussian(kind)
    c = Inpainting(torch.ones(SHAPE[1:], dtype=torch.bool))
    x, nfe = solve_inverse(model, cfg, c.measure(observed()), c, steps, sampler=sampler,
                           generator=torch.Generator().manual_seed(3))
    ref, ref_nfe = generate(model, cfg, 4, steps, sampler=sampler, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, ref) and nfe == ref_nfe


@pytest.mark.parametrize("kind", ["ct", "edm"])
def test_super_resolution_averages_back_to_the_input(kind):
    model, cfg = gaussian(kind)
    c = SuperResolution(4)
    low = c.measure(observed())
    x, _ = solve_inverse(model, cfg, low, c, 3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, *SHAPE)
    assert torch.allclose(c.measure(x.double()), low.double(), atol=1e-6, rtol=0)
    assert (x - c.view(low)).abs().mean() > 0.05                    # detail was generated inside the blocks


@pytest.mark.parametrize("kind", ["ct", "edm"])
def test_colorization_keeps_the_luminance(kind):
    model, cfg = gaussian(kind)
    c = Colorization()
    gray = c.measure(observed())
    x, _ = solve_inverse(model, cfg, gray, c, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(c.measure(x.double()), gray.double(), atol=1e-6, rtol=0)


def test_projections_are_orthogonal_and_idempotent():
    x, y = observed(1).double(), observed(2).double()
    for c in (Inpainting(box_hole(SHAPE[1:], (0, 0, 3, 8))), Colorization(), SuperResolution(2)):
        p = c.project(x, c.measure(y))
        assert torch.allclose(c.project(p, c.measure(y)), p)             # idempotent
        assert torch.allclose(c.measure(p), c.measure(y))                # lands on the constraint
        q = c.project(y, c.measure(y))                                   # y itself is on it
        assert torch.allclose(q, y)
        residual, along = x - p, p - y                                   # orthogonal: x - P x is normal to the set
        assert abs((residual * along).sum()) < 1e-9 * residual.norm() * along.norm() + 1e-9


def test_one_step_denoising_is_the_posterior_mean_for_the_teacher_and_the_ode_map_for_a_cm():
    sigma = 0.7
    x0 = observed(4)
    y = x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    posterior_mean = MEAN + STD ** 2 / (STD ** 2 + sigma ** 2) * (y.double() - MEAN)
    x, nfe = denoise(*gaussian("edm"), y, sigma)
    assert nfe == 1 and torch.allclose(x.double(), posterior_mean, atol=1e-6)
    ode_map = MEAN + math.sqrt((STD ** 2 + 0.002 ** 2) / (STD ** 2 + sigma ** 2)) * (y.double() - MEAN)
    x, nfe = denoise(*gaussian("ct"), y, sigma)
    assert nfe == 1 and torch.allclose(x.double(), ode_map, atol=1e-6)
    assert (x - x0).pow(2).mean() < (y - x0).pow(2).mean() / 2             # it does remove noise


def test_stroke_guidance_at_a_low_level_stays_near_the_strokes_and_at_a_high_level_forgets_them():
    model, cfg = gaussian("ct")
    strokes = torch.full((64, *SHAPE), 0.9)
    near, _ = stroke_guided(model, cfg, strokes, 0.05, 1, generator=torch.Generator().manual_seed(0))
    far, _ = stroke_guided(model, cfg, strokes, 80.0, 1, generator=torch.Generator().manual_seed(0))
    assert (near - strokes).abs().mean() < 0.1
    assert abs(far.mean() - MEAN) < 0.05 and abs(far.std() - STD) < 0.05      # a fresh sample of the data


def test_slerp_end_points_and_norm():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(3, 100, generator=g, dtype=torch.float64), torch.randn(3, 100, generator=g, dtype=torch.float64)
    assert torch.equal(slerp(z0, z1, 0.0), z0) and torch.equal(slerp(z0, z1, 1.0), z1)
    mid = slerp(z0 / z0.norm(dim=1, keepdim=True), z1 / z1.norm(dim=1, keepdim=True), 0.5)
    assert torch.allclose(mid.norm(dim=1), torch.ones(3, dtype=torch.float64))   # stays on the sphere


@pytest.mark.parametrize("kind,steps", [("ct", 1), ("ct", 3), ("edm", 5)])
def test_interpolation_end_points_reproduce_the_two_samples(kind, steps):
    model, cfg = gaussian(kind)
    strip, _ = interpolate(model, cfg, (7, 8), 5, steps)
    assert strip.shape == (5, *SHAPE)
    for frame, seed in ((0, 7), (-1, 8)):
        ref, _ = generate(model, cfg, 1, steps, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(strip[frame], ref[0])
    assert not torch.equal(strip[2], strip[0])


def test_editing_runs_through_a_real_unet_consistency_model():
    cfg = TrainConfig(method="ct", data="gaussian", net="unet", net_kwargs=UNET)
    model = build_model(cfg, data=_ImageData()).eval()
    y = observed(n=2)
    c = Inpainting(box_hole(SHAPE[1:], (0, 0, 4, 4)))
    x, nfe = solve_inverse(model, cfg, c.measure(y), c, 2, generator=torch.Generator().manual_seed(0))
    assert nfe == 2 and torch.equal(x[:, :, 4:], y[:, :, 4:])


class _ImageData:
    shape, num_classes = SHAPE, 0


def test_bad_requests_are_one_line_errors():
    model, cfg = gaussian("ct")
    with pytest.raises(FewstepError, match="does not fit"):
        box_hole((8, 8), (0, 0, 9, 4))
    with pytest.raises(FewstepError, match="factor"):
        SuperResolution(1)
    with pytest.raises(FewstepError, match="divisible"):
        SuperResolution(3).measure(observed())
    with pytest.raises(FewstepError, match="RGB"):
        Colorization().measure(torch.zeros(1, 1, 8, 8))
    for sigma in (0.0, -1.0, 81.0):
        with pytest.raises(FewstepError, match="outside the run's range"):
            denoise(model, cfg, observed(), sigma)
    with pytest.raises(FewstepError, match="shape"):
        denoise(model, cfg, torch.zeros(2, 1, 8, 8), 0.5)
    with pytest.raises(FewstepError, match="frames"):
        interpolate(model, cfg, (0, 1), 1, 1)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_a_vp_teacher_keeps_the_known_coordinate_and_denoises(sampler):
    cfg = TrainConfig(method="ddpm", net_kwargs={"width": 16, "depth": 1})
    model = build_model(cfg).eval()
    y = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    c = Inpainting(torch.tensor([False, True]))                         # x[0] known, x[1] generated
    x, nfe = solve_inverse(model, cfg, c.measure(y), c, 10, sampler=sampler, generator=torch.Generator().manual_seed(1))
    assert nfe == 10 and torch.equal(x[:, 0], y[:, 0]) and torch.isfinite(x).all()
    x, nfe = denoise(model, cfg, y, 0.5, steps=3, sampler=sampler)
    assert nfe == 3 and x.shape == y.shape and torch.isfinite(x).all()
