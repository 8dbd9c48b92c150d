"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved precision and recall metric
for assessing generative models", NeurIPS; Eq. 1-3).

Each set of feature vectors estimates its manifold as a union of balls: around each point phi, the
ball of radius ||phi - NN_k(phi)||, the distance to its k-th nearest neighbour in the same set
(the point itself excluded). Then
    precision = fraction of generated points inside the real manifold (inside >= 1 real ball),
    recall    = fraction of real points inside the generated manifold (inside >= 1 generated ball),
with "inside" meaning distance <= radius, as in the paper. k = 3 is the paper's default.

Squared distances |a|^2 + |b|^2 - 2 a.b are computed by one matrix product per row block, so memory
is O(block_size * n) at any size (10k x 10k: about 40 MB per block of 1024 rows, not 400 MB for the
whole matrix), and balls are tested as d^2 <= r^2 (no square roots). The work runs in float32 by
default, after both sets are centred on the real mean in float64: distances do not change, and the
expansion loses less to cancellation near the origin. Pass dtype=torch.float64 where ties at a
radius matter.
"""

import torch

DEFAULT_K = 3                # k-th nearest neighbour that sets each ball's radius (the paper's k = 3)
DEFAULT_BLOCK = 1024         # rows of the distance matrix held at once


def _flat64(x):
    x = torch.as_tensor(x).detach().cpu().double()
    return x.reshape(x.shape[0], -1)


def _sq_distances(a, a_sq, b, b_sq):
    """||a_i - b_j||^2 = |a_i|^2 + |b_j|^2 - 2 a_i.b_j for a (p, d), b (q, d) with their squared
    norms: one addmm, about twice as fast as torch.cdist on CPU, and no square roots. Clamped at 0."""
    return torch.addmm(a_sq[:, None], a, b.T, alpha=-2).add_(b_sq).clamp_(min=0)


def _knn_sq_radii(x, x_sq, k, block_size):
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n - 1] = [1, {n - 1}], got {k}")
    radii_sq = x.new_empty(n)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        d2 = _sq_distances(x[start:stop], x_sq[start:stop], x, x_sq)             # (b, n)
        rows = torch.arange(stop - start)
        d2[rows, start + rows] = float("inf")                                     # not its own neighbour
        radii_sq[start:stop] = d2.topk(k, dim=1, largest=False).values[:, -1]
    return radii_sq


def knn_radii(features, k=DEFAULT_K, block_size=DEFAULT_BLOCK):
    """||phi_i - NN_k(phi_i)|| for each row of features (n, d): the distance from each point to its
    k-th nearest neighbour among the other points (self excluded by index, so duplicates of a point
    count as neighbours at distance 0). Returns (n,) in features' dtype."""
    x = torch.as_tensor(features)
    x = x.reshape(x.shape[0], -1)
    return _knn_sq_radii(x, x.square().sum(1), k, block_size).sqrt()


def _membership(real, real_sq, real_radii_sq, gen, gen_sq, gen_radii_sq, block_size):
    """(gen_in_real (m,), real_in_gen (n,)) boolean masks from one blocked pass over the
    generated-to-real squared distances: whether each generated point lies in some real ball, and
    whether each real point lies in some generated ball."""
    gen_in_real = torch.zeros(gen.shape[0], dtype=torch.bool)
    real_in_gen = torch.zeros(real.shape[0], dtype=torch.bool)
    for start in range(0, gen.shape[0], block_size):
        stop = min(start + block_size, gen.shape[0])
        d2 = _sq_distances(gen[start:stop], gen_sq[start:stop], real, real_sq)   # (b, n)
        gen_in_real[start:stop] = (d2 <= real_radii_sq).any(1)
        real_in_gen |= (d2 <= gen_radii_sq[start:stop, None]).any(0)
    return gen_in_real, real_in_gen


def precision_recall(real_features, gen_features, k=DEFAULT_K, block_size=DEFAULT_BLOCK, dtype=torch.float32):
    """Improved precision and recall of gen_features (m, d) against real_features (n, d).

    Returns {"precision": float, "recall": float}, each in [0, 1]. Both sets need more than k
    points. Cost: three blocked distance passes (real-real, gen-gen, gen-real), each O(n m d).
    """
    real, gen = _flat64(real_features), _flat64(gen_features)
    if real.shape[1] != gen.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} and {gen.shape[1]}")
    center = real.mean(0)
    real, gen = (real - center).to(dtype), (gen - center).to(dtype)
    real_sq, gen_sq = real.square().sum(1), gen.square().sum(1)
    real_radii_sq = _knn_sq_radii(real, real_sq, k, block_size)
    gen_radii_sq = _knn_sq_radii(gen, gen_sq, k, block_size)
    gen_in_real, real_in_gen = _membership(real, real_sq, real_radii_sq, gen, gen_sq, gen_radii_sq, block_size)
    return {"precision": gen_in_real.double().mean().item(), "recall": real_in_gen.double().mean().item()}
