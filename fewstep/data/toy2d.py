"""2-D (and d-dimensional) data generated in-process.

`GaussianMixture` is also an oracle: for a mixture of isotropic Gaussians the noised marginal
p(x; sigma) = sum_k pi_k N(x; mu_k, (s_k^2 + sigma^2) I) is known, so the ideal denoiser
D(x, sigma) = E[x0 | x], the score (D - x) / sigma^2 and, for one component, the PF-ODE solution
and the consistency function are closed-form.
"""

import math

import torch


class GaussianMixture:
    """Mixture of isotropic Gaussians: weights pi_k, means mu_k (K, d), standard deviations s_k."""

    def __init__(self, means, stds, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        K, self.dim = self.means.shape
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(K).clone()
        w = torch.ones(K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()

    def sample(self, n, generator=None, labels=False):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = (self.means[k] + self.stds[k, None] * z).float()
        return (x, k) if labels else x

    def _posterior(self, x, sigma):
        """Posterior weights of the components given x at noise level sigma, and their variances."""
        x = x.double()
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)            # (B or 1, 1)
        var = self.stds[None, :] ** 2 + sigma ** 2                                     # (B, K)
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)                          # (B, K)
        logits = self.weights.log()[None] - 0.5 * sq / var - 0.5 * self.dim * var.log()
        return torch.softmax(logits, dim=1), var

    def denoiser(self, x, sigma):
        """D(x, sigma) = E[x0 | x_sigma = x] = sum_k w_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k))."""
        w, var = self._posterior(x, sigma)
        gain = self.stds[None, :] ** 2 / var                                          # (B, K)
        per_k = self.means[None] + gain[..., None] * (x.double()[:, None, :] - self.means[None])
        return (w[..., None] * per_k).sum(1).to(x.dtype)

    def score(self, x, sigma):
        """grad_x log p(x; sigma) = (D(x, sigma) - x) / sigma^2 (Tweedie)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        return ((self.denoiser(x, sigma).double() - x.double()) / sigma ** 2).to(x.dtype)

    def log_prob(self, x, sigma=0.0):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        var = self.stds[None, :] ** 2 + sigma ** 2
        sq = ((x.double()[:, None, :] - self.means[None]) ** 2).sum(-1)
        comp = -0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return torch.logsumexp(self.weights.log()[None] + comp, dim=1)

    def ode_solution(self, x, sigma_from, sigma_to):
        """Closed-form PF-ODE map x(sigma_from) -> x(sigma_to); one component only:
        x(sigma) - mu is proportional to sqrt(s^2 + sigma^2)."""
        if len(self.weights) != 1:
            raise NotImplementedError("the PF-ODE has a closed form for one Gaussian only; use a fine Heun solve")
        s2 = self.stds[0] ** 2
        sigma_from = torch.as_tensor(sigma_from, dtype=torch.float64).reshape(-1, 1)
        sigma_to = torch.as_tensor(sigma_to, dtype=torch.float64).reshape(-1, 1)
        ratio = torch.sqrt((s2 + sigma_to ** 2) / (s2 + sigma_from ** 2))
        return (self.means[0] + ratio * (x.double() - self.means[0])).to(x.dtype)

    def consistency_function(self, x, t, sigma_min):
        """f(x, t): the PF-ODE solution at sigma_min of the trajectory through x at t (one component)."""
        return self.ode_solution(x, t, sigma_min)


def _check(**values):
    """ValueError (one line) unless each count is a positive integer and each scale a positive number."""
    for name, v in values.items():
        count = name in ("k", "dim")
        if isinstance(v, bool) or not isinstance(v, int if count else (int, float)) or not (v >= 1 if count else 0 < v < math.inf):
            raise ValueError(f"{name} must be a positive {'integer' if count else 'number'}, got {v!r}")


def gaussian(dim=2, mean=0.0, std=0.5):
    _check(dim=dim, std=std)
    return GaussianMixture(torch.full((1, dim), float(mean)), [std])


def _check_weights(weights, k):
    """ValueError (one line) unless weights is a list of k positive finite numbers (e.g. a JSON list)
    whose float sum is finite too: GaussianMixture divides by it."""
    try:
        ok = (isinstance(weights, (list, tuple)) and len(weights) == k
              and all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < math.inf for w in weights)
              and sum(float(w) for w in weights) < math.inf)
    except OverflowError:                                                       # an int beyond float range
        ok = False
    if not ok:
        raise ValueError(f"weights must be a list of k={k} positive finite numbers, got {weights!r}")


def gmm_ring(k=8, radius=0.7, std=0.05, weights=None):
    """k modes on a circle; the defaults give each coordinate a standard deviation near 0.5.

    weights: None for equal modes, or a list of k positive numbers, the relative mode weights
    (normalised to sum to 1), e.g. `--set data.weights=[1,2,3,4,5,6,7,8]`. Unequal modes show
    whether a few-step sampler keeps each mode's mass, not only its support (`mode_stats`).
    """
    _check(k=k, radius=radius, std=std)
    if weights is not None:
        _check_weights(weights, k)
        weights = [float(w) for w in weights]
    angle = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    return GaussianMixture(torch.stack([angle.cos(), angle.sin()], 1) * radius, [std], weights)


def gmm_grid(k=5, spacing=0.3, std=0.04):
    """k x k modes on a square grid centred on 0."""
    _check(k=k, spacing=spacing, std=std)
    c = (torch.arange(k, dtype=torch.float64) - (k - 1) / 2) * spacing
    return GaussianMixture(torch.cartesian_prod(c, c), [std])


class Moons:
    """Two interleaved half circles with Gaussian jitter, centred near 0 (standard deviations about 0.44, 0.25)."""
    dim = 2

    def __init__(self, noise=0.05):
        _check(noise=noise)
        self.noise = noise

    def sample(self, n, generator=None):
        u = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
        upper = torch.rand(n, generator=generator) < 0.5
        x = torch.where(upper[:, None], torch.stack([u.cos(), u.sin()], 1),
                        torch.stack([1 - u.cos(), 0.5 - u.sin()], 1))
        x = (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 0.5
        return (x + self.noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)).float()


class Checkerboard:
    """Uniform on the black squares of a 4 x 4 board spanning [-0.8, 0.8]^2."""
    dim = 2

    def sample(self, n, generator=None):
        x1 = torch.rand(n, generator=generator, dtype=torch.float64) * 4 - 2
        x2 = torch.rand(n, generator=generator, dtype=torch.float64) - torch.randint(0, 2, (n,), generator=generator) * 2
        x2 = x2 + (torch.floor(x1) % 2)
        return (torch.stack([x1, x2], 1) * 0.4).float()


class Spiral:
    """A two-armed spiral with Gaussian jitter."""
    dim = 2

    def __init__(self, noise=0.03):
        _check(noise=noise)
        self.noise = noise

    def sample(self, n, generator=None):
        r = torch.rand(n, generator=generator, dtype=torch.float64).sqrt()
        arm = torch.randint(0, 2, (n,), generator=generator) * math.pi
        angle = 3 * math.pi * r + arm
        x = torch.stack([r * angle.cos(), r * angle.sin()], 1) * 0.8
        return (x + self.noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)).float()


TOY_DATASETS = {
    "gmm": gmm_ring,             # 8-mode ring: the default, with a closed-form denoiser
    "gmm-grid": gmm_grid,
    "gaussian": gaussian,        # one Gaussian: closed-form PF-ODE and consistency function
    "moons": Moons,
    "checkerboard": Checkerboard,
    "spiral": Spiral,
}
