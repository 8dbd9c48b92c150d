"""Zero-shot editing (seed 000, "Zero-shot image editing"; seed 001, "Further applications").

Inverse problems follow Song et al. (2023), Algorithm 4: with an orthogonal A and a mask Omega of the
unknown coordinates, every step re-imposes the known part, x <- A^-1[(A y) (1 - Omega) + (A x) Omega].
For an orthogonal A that is the orthogonal projection of x onto the images whose measurements equal
y's, so each task here is a linear measurement `measure(x)` with A A^T = c I and its `project(x, m)`:

    inpainting        known pixels              project: keep x in the hole, y elsewhere
    colorization      luminance w . rgb         project: x + w (m - w . x) / |w|^2
    super-resolution  f x f block averages      project: x + upsample(m - avgpool(x))

A consistency model projects each clean estimate f(x, tau) (Algorithm 4 as written). A diffusion
teacher projects after every ODE/SDE step onto the measurements of y + sigma z at the new level sigma,
with z the initial noise, so the known part follows the forward process and is exactly y at sigma = 0.

Stroke-guided generation (SDEdit) and denoising start the sampler from an image at a noise level sigma
instead of from pure noise; interpolation walks the sphere between two noise draws (seed 001).
"""

import math

import torch
import torch.nn.functional as F

from .errors import FewstepError
from .generate import noise_grid, pick_sampler, run_process, run_sampler
from .nets import sample_shape

LUMA = (0.299, 0.587, 0.114)            # ITU-R BT.601 luminance: gray = w . rgb

#----------------------------------------------------------------------------
# Measurements: A x, and the projection onto {x : A x = m}.


class Inpainting:
    """Known pixels outside a hole. hole: bool (H, W) or (C, H, W), True where pixels are generated."""

    def __init__(self, hole):
        self.hole = torch.as_tensor(hole, dtype=torch.bool)

    def measure(self, x):
        return torch.where(self.hole.to(x.device), torch.zeros_like(x), x)

    def project(self, x, m):
        return torch.where(self.hole.to(x.device), x, m.to(x.dtype))

    def view(self, m):
        return m                                            # the hole shows as mid-gray (0)


class Colorization:
    """Known luminance m = w . x per pixel (a linear map from RGB); the chroma is generated."""

    def __init__(self, weights=LUMA):
        self.w = torch.tensor(weights, dtype=torch.float64).reshape(1, -1, 1, 1)

    def measure(self, x):
        if x.shape[1] != self.w.shape[1]:
            raise FewstepError(f"colorization needs {self.w.shape[1]}-channel (RGB) images, got {x.shape[1]} "
                               "channels; train the run on RGB data (e.g. --data fashion-mnist-rgb)")
        return (self.w.to(x) * x).sum(1, keepdim=True)

    def project(self, x, m):
        w = self.w.to(x)
        return x + w * (m.to(x.dtype) - (w * x).sum(1, keepdim=True)) / (w * w).sum()

    def view(self, m):
        return m.expand(-1, self.w.shape[1], -1, -1)         # the gray image, on every channel


class SuperResolution:
    """Known factor x factor block averages (the low-resolution image); the detail is generated."""

    def __init__(self, factor):
        if not isinstance(factor, int) or factor < 2:
            raise FewstepError(f"the super-resolution factor must be an integer >= 2, got {factor!r}; e.g. --factor 4")
        self.factor = factor

    def measure(self, x):
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise FewstepError(f"super-resolution by {self.factor} needs a size divisible by it, got "
                               f"{tuple(x.shape[-2:])}; pick a factor that divides the run's resolution")
        return F.avg_pool2d(x, self.factor)

    def project(self, x, m):
        return x + F.interpolate(m.to(x.dtype) - self.measure(x), scale_factor=self.factor, mode="nearest")

    def view(self, m):
        return F.interpolate(m, scale_factor=self.factor, mode="nearest")


MAX_FRAMES = 256           # an interpolation strip is one picture; beyond this it is a video, not a strip

def box_hole(shape, box):
    """A (H, W) hole from a pixel box (x0, y0, x1, y1): columns x0..x1-1, rows y0..y1-1."""
    H, W = shape
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
        raise FewstepError(f"box {box} does not fit in a {W} x {H} image; give x0,y0,x1,y1 with "
                           f"0 <= x0 < x1 <= {W} and 0 <= y0 < y1 <= {H}")
    hole = torch.zeros(H, W, dtype=torch.bool)
    hole[y0:y1, x0:x1] = True
    return hole

#----------------------------------------------------------------------------
# The editing procedures.


def _shape_of(model):
    return sample_shape(model.net)


def _check_images(model, y, what="input"):
    shape = _shape_of(model)
    if y.ndim != len(shape) + 1 or tuple(y.shape[1:]) != shape:
        raise FewstepError(f"the {what} has shape {tuple(y.shape[1:])} but the run makes {shape}; "
                           "resize it or use a run trained on data of that shape")


def _check_sigma(cfg, sigma, what="noise level"):
    if not cfg.sigma_min < sigma <= cfg.sigma_max:
        raise FewstepError(f"the {what} sigma = {sigma:g} is outside the run's range ({cfg.sigma_min:g}, "
                           f"{cfg.sigma_max:g}]; pass --sigma inside it")


def known_noise_projector(constraint, m, z):
    """project(x, sigma): onto the measurements of y + sigma z (y's measurements are m); at sigma = 0, m."""
    m, Az = m.double(), constraint.measure(z.double())
    return lambda x, sigma: constraint.project(x, m + sigma * Az)


@torch.no_grad()
def solve_inverse(model, cfg, m, constraint, steps, *, sampler=None, taus=None, generator=None, cond=None):
    """(images, NFE): samples whose measurements equal m (Algorithm 4 of Song et al. 2023, seed 000).
    m: constraint.measure(y) for the observed images y, a batch. The start x = A^+ m + sigma_0 z is
    Algorithm 4's x ~ N(y_known, T^2 I); with nothing known it is plain sampling, draw for draw."""
    sampler = pick_sampler(cfg, sampler)
    shape = (m.shape[0], *_shape_of(model))
    device = next(model.parameters()).device
    try:
        grid = noise_grid(model, cfg, steps, sampler, taus)
    except ValueError as e:
        raise FewstepError(str(e)) from None
    process = run_process(model, cfg)
    noise = process.prior(shape, grid[0], generator=generator, device=device)
    m = m.double().to(device)
    fill = constraint.project(torch.zeros(shape, dtype=torch.float64, device=device), m)
    x = fill.to(noise.dtype) + noise
    z = noise.double() / process.prior_scale(grid[0])
    project = known_noise_projector(constraint, m, z)
    return run_sampler(model, cfg, x, grid, sampler, generator=generator, cond=cond, project=project)


@torch.no_grad()
def sample_from(model, cfg, x, sigma, steps, *, sampler=None, generator=None, cond=None):
    """(images, NFE): the sampler run from images x already at noise level sigma down to the data.
    A consistency model with steps = 1 is one call f(x, sigma); a teacher's steps walk a Karras grid
    from sigma to 0 (steps = 1 is one call D(x, sigma), the posterior mean E[x0 | x], for any of them)."""
    _check_sigma(cfg, sigma)
    sampler = pick_sampler(cfg, sampler)
    try:
        grid = noise_grid(model, cfg, steps, sampler, sigma_start=sigma)
    except ValueError as e:
        raise FewstepError(str(e)) from None
    return run_sampler(model, cfg, x, grid, sampler, generator=generator, cond=cond)


def denoise(model, cfg, y, sigma, steps=1, **kw):
    """(images, NFE): images observed as y = x + sigma n, n ~ N(0, I), mapped back in `steps` steps
    (seed 001: a consistency model recovers x_eps from any noise level)."""
    _check_images(model, y, "noisy image")
    return sample_from(model, cfg, y, sigma, steps, **kw)


def stroke_guided(model, cfg, strokes, sigma, steps, *, generator=None, **kw):
    """(images, NFE): SDEdit-style generation from a coarse stroke image: noise it to level sigma,
    x = strokes + sigma z, then sample back. Lower sigma keeps more of the strokes; higher, more realism."""
    _check_images(model, strokes, "stroke image")
    _check_sigma(cfg, sigma)
    z = torch.randn(strokes.shape, generator=generator, dtype=torch.float64, device=getattr(generator, "device", "cpu"))
    x = (strokes.double() + sigma * z.to(strokes.device)).to(strokes.dtype)
    return sample_from(model, cfg, x, sigma, steps, generator=generator, **kw)


def slerp(z0, z1, alpha):
    """Spherical interpolation: sin((1 - a) theta) / sin(theta) z0 + sin(a theta) / sin(theta) z1 per
    sample, theta the angle between z0 and z1; a = 0 and a = 1 return z0 and z1 exactly."""
    a, b = z0.flatten(1).double(), z1.flatten(1).double()
    theta = torch.arccos((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).clamp(1e-7, math.pi - 1e-7)
    w0 = torch.sin((1 - alpha) * theta) / torch.sin(theta)
    w1 = torch.sin(alpha * theta) / torch.sin(theta)
    return (w0[:, None] * a + w1[:, None] * b).reshape(z0.shape)


@torch.no_grad()
def interpolate(model, cfg, seeds, frames, steps, *, sampler=None, cond=None):
    """(images (frames, *shape), NFE): samples along the great circle between the initial noise of
    seeds[0] and seeds[1] (seed 001, "interpolate between samples through latent space"). Frame 0 and
    the last frame are exactly what `generate` gives with those seeds; the later-step noise of a
    multistep sampler continues seeds[0]'s generator in every frame but the last."""
    if not 2 <= frames <= MAX_FRAMES:
        raise FewstepError(f"interpolation takes 2 to {MAX_FRAMES} frames, got {frames}; e.g. --frames 8")
    sampler = pick_sampler(cfg, sampler)
    shape, device = (1, *_shape_of(model)), next(model.parameters()).device
    try:
        grid = noise_grid(model, cfg, steps, sampler)
    except ValueError as e:
        raise FewstepError(str(e)) from None
    scale = run_process(model, cfg).prior_scale(grid[0])
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    z0, z1 = (torch.randn(shape, generator=g, dtype=torch.float64) for g in gens)
    out, n_fe = [], 0
    for alpha in torch.linspace(0, 1, frames, dtype=torch.float64).tolist():
        g = torch.Generator().set_state((gens[1] if alpha == 1 else gens[0]).get_state())
        x = (scale * slerp(z0, z1, alpha)).float().to(device)
        x, n_fe = run_sampler(model, cfg, x, grid, sampler, generator=g, cond=cond)
        out.append(x)
    return torch.cat(out), n_fe
