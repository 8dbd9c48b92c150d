"""Frechet distance between feature distributions (FID when the features are Inception-v3's).

- `feature_stats`: the mean mu and covariance Sigma of a set of feature vectors.
- `frechet_distance`: the Frechet (Wasserstein-2) distance between N(mu1, Sigma1) and N(mu2, Sigma2)
  (Dowson & Landau 1982; FID: Heusel et al. 2017, "GANs trained by a two time-scale update rule").
- `fd_from_features`: the two steps above for two feature sets.
- `extract_features`: run a feature network over images in batches.

The matrix square root is taken by symmetric eigendecompositions (`torch.linalg.eigh`), not by
scipy's `sqrtm`: it is exact for rank-deficient covariances (fewer samples than dimensions) and
never returns a complex part. All arithmetic is float64.
"""

import torch
from tqdm.auto import tqdm


def _as64(x):
    return torch.as_tensor(x).detach().cpu().double()


def feature_stats(features):
    """(mu, Sigma) of features (n, d) in float64: the mean and the unbiased (n - 1) covariance.

    The same estimate as `np.cov(features, rowvar=False)`, which FID implementations use.
    """
    f = _as64(features)
    f = f.reshape(f.shape[0], -1)
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    mu = f.mean(0)
    centered = f - mu
    return mu, centered.T @ centered / (f.shape[0] - 1)


def _psd_sqrt(S):
    """S^{1/2} of a symmetric PSD matrix: V diag(sqrt(max(w, 0))) V^T from S = V diag(w) V^T."""
    w, V = torch.linalg.eigh(S)
    return (V * w.clamp(min=0).sqrt()) @ V.T


def _symmetric(S):
    return (S + S.T) / 2


def frechet_distance(mu1, Sigma1, mu2, Sigma2):
    """d^2 = ||mu1 - mu2||^2 + Tr(Sigma1 + Sigma2 - 2 (Sigma1 Sigma2)^{1/2}), as a float.

    Sigma1 Sigma2 is not symmetric, but it is similar to the symmetric PSD matrix
    M = Sigma1^{1/2} Sigma2 Sigma1^{1/2} (conjugate by Sigma1^{1/2}), so both have the same
    eigenvalues lambda_i >= 0 and
        Tr((Sigma1 Sigma2)^{1/2}) = Tr((Sigma1^{1/2} Sigma2 Sigma1^{1/2})^{1/2}) = sum_i sqrt(lambda_i).
    Both square roots come from `eigh` of symmetric matrices; eigenvalues that rounding pushes
    slightly below 0 are clamped to 0, and so is the result (d^2 >= 0; for identical statistics the
    rounding error is ~1e-12 of Tr Sigma). Inputs are symmetrised and cast to float64.
    """
    mu1, mu2 = _as64(mu1).flatten(), _as64(mu2).flatten()
    Sigma1, Sigma2 = _symmetric(_as64(Sigma1)), _symmetric(_as64(Sigma2))
    if mu1.shape != mu2.shape or Sigma1.shape != Sigma2.shape or Sigma1.shape != (mu1.numel(),) * 2:
        raise ValueError(f"shapes do not match: mu {tuple(mu1.shape)}, {tuple(mu2.shape)}; "
                         f"Sigma {tuple(Sigma1.shape)}, {tuple(Sigma2.shape)}")
    root1 = _psd_sqrt(Sigma1)
    lam = torch.linalg.eigvalsh(_symmetric(root1 @ Sigma2 @ root1))
    tr_covmean = lam.clamp(min=0).sqrt().sum()
    d2 = (mu1 - mu2).square().sum() + Sigma1.trace() + Sigma2.trace() - 2 * tr_covmean
    return max(d2.item(), 0.0)


def fd_from_features(f1, f2):
    """Frechet distance between the Gaussians fitted to feature sets f1 (n, d) and f2 (m, d)."""
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def _default_device(net):
    p = next(iter(net.parameters()), None) if hasattr(net, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def extract_features(net, images, batch_size=500, device=None, progress=False):
    """Features of `images` (n, ...) as a float64 CPU tensor (n, d).

    Calls `net.features(x)` when the network has that method, else `net(x)`, on batches of
    `batch_size` moved to `device` (default: the device of the network's parameters), in eval mode
    under no_grad; the network's train/eval mode is restored afterwards. Each output is flattened
    to (batch, d). `progress` shows a tqdm bar over the batches.
    """
    device = _default_device(net) if device is None else torch.device(device)
    fn = getattr(net, "features", None)
    fn = net if fn is None else fn
    was_training = getattr(net, "training", False)
    if hasattr(net, "eval"):
        net.eval()
    try:
        out = []
        for start in tqdm(range(0, len(images), batch_size), disable=None if progress else True, desc="features"):
            x = torch.as_tensor(images[start:start + batch_size]).to(device)
            out.append(fn(x).detach().reshape(x.shape[0], -1).cpu().double())
    finally:
        if hasattr(net, "train"):
            net.train(was_training)
    if not out:
        raise ValueError("no images to extract features from")
    return torch.cat(out)
