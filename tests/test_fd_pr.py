"""Numeric contracts of fewstep.metrics.fd and fewstep.metrics.precision_recall against closed forms
and hand-built examples."""

import math

import pytest
import torch
from torch import nn

from fewstep.metrics.fd import extract_features, fd_from_features, feature_stats, frechet_distance
from fewstep.metrics.precision_recall import knn_radii, precision_recall


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rotation(d, seed):
    """A random orthogonal matrix (QR of a Gaussian matrix)."""
    return torch.linalg.qr(torch.randn(d, d, generator=gen(seed), dtype=torch.float64)).Q


def points(xs):
    """1-D points as an (n, 1) feature set."""
    return torch.tensor(xs, dtype=torch.float64)[:, None]

#----------------------------------------------------------------------------
# Frechet distance.


def test_feature_stats_match_unbiased_covariance():
    f = torch.randn(200, 5, generator=gen(0), dtype=torch.float32)
    mu, Sigma = feature_stats(f)
    assert mu.dtype == Sigma.dtype == torch.float64
    torch.testing.assert_close(mu, f.double().mean(0))
    torch.testing.assert_close(Sigma, torch.cov(f.double().T))          # (n - 1) normalisation


@pytest.mark.parametrize("n, d", [(1000, 64), (50, 64)])               # (50, 64): rank-deficient Sigma
def test_fd_of_a_set_with_itself_is_zero(n, d):
    f = 3.0 * torch.randn(n, d, generator=gen(1), dtype=torch.float64) + 5.0
    scale = feature_stats(f)[1].trace().item()
    assert 0.0 <= fd_from_features(f, f) <= 1e-6 * scale


def test_fd_commuting_covariances_closed_form():
    # Sigma_i = Q diag(a_i) Q^T share eigenvectors: FD = ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2.
    d = 16
    g = gen(2)
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    a, b = torch.rand(d, generator=g, dtype=torch.float64) * 4, torch.rand(d, generator=g, dtype=torch.float64) * 4
    expected = ((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()).item()
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-10)
    Q = rotation(d, 3)
    value = frechet_distance(mu1, Q @ torch.diag(a) @ Q.T, mu2, Q @ torch.diag(b) @ Q.T)
    assert value == pytest.approx(expected, rel=1e-9)


def _sqrt2x2(M):
    """Principal square root of a 2x2 PSD matrix: (M + sqrt(det M) I) / sqrt(tr M + 2 sqrt(det M))."""
    (a, b), (c, d) = M
    s = math.sqrt(a * d - b * c)
    t = math.sqrt(a + d + 2 * s)
    return [[(a + s) / t, b / t], [c / t, (d + s) / t]]


def _matmul2x2(A, B):
    return [[sum(A[i][k] * B[k][j] for k in range(2)) for j in range(2)] for i in range(2)]


def test_fd_non_commuting_2x2_by_hand():
    S1, S2 = [[2.0, 1.0], [1.0, 2.0]], [[1.0, 0.0], [0.0, 3.0]]         # S1 S2 != S2 S1
    mu1, mu2 = [0.0, 0.0], [1.0, 2.0]
    R = _sqrt2x2(S1)
    C = _sqrt2x2(_matmul2x2(_matmul2x2(R, S2), R))                          # (S1^1/2 S2 S1^1/2)^1/2
    tr_covmean = C[0][0] + C[1][1]
    # For 2x2, Tr sqrt(A) = sqrt(tr A + 2 sqrt(det A)); tr(S1 S2) = 8, det = 3 * 3: sqrt(14).
    assert tr_covmean == pytest.approx(math.sqrt(14), rel=1e-12)
    expected = 5.0 + 4.0 + 4.0 - 2 * tr_covmean                               # 13 - 2 sqrt(14)
    t = lambda x: torch.tensor(x, dtype=torch.float64)
    assert frechet_distance(t(mu1), t(S1), t(mu2), t(S2)) == pytest.approx(expected, rel=1e-12)


def test_fd_is_symmetric():
    g = gen(4)
    f1 = torch.randn(500, 32, generator=g, dtype=torch.float64)
    f2 = torch.randn(400, 32, generator=g, dtype=torch.float64) @ torch.randn(32, 32, generator=g, dtype=torch.float64) + 1
    assert fd_from_features(f1, f2) == pytest.approx(fd_from_features(f2, f1), rel=1e-9)


def test_fd_from_gaussian_samples_approaches_closed_form():
    # N(mu1, Q diag(a) Q^T) vs N(mu2, Q diag(b) Q^T): FD = 1 + (1-2)^2 + (2-1)^2 + (3-1)^2 = 7.
    n, Q, g = 200_000, rotation(3, 5), gen(6)
    a, b = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64), torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64)
    mu1, mu2 = torch.zeros(3, dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    x1 = (torch.randn(n, 3, generator=g, dtype=torch.float64) * a.sqrt() + mu1) @ Q.T
    x2 = (torch.randn(n, 3, generator=g, dtype=torch.float64) * b.sqrt() + mu2) @ Q.T
    assert fd_from_features(x1, x2) == pytest.approx(7.0, abs=0.05)


def test_fd_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3))

#----------------------------------------------------------------------------
# Feature extraction.


class FeatureNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Dropout(0.5))  # dropout: eval mode shows
        self.head = nn.Linear(8, 1)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def test_extract_features_batching_equals_one_batch():
    torch.manual_seed(0)
    net = FeatureNet().train()
    images = torch.randn(37, 3, 2, 2, generator=gen(7))
    small = extract_features(net, images, batch_size=4)
    whole = extract_features(net, images, batch_size=1000)
    assert small.shape == (37, 8) and small.dtype == torch.float64
    torch.testing.assert_close(small, whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(whole, net.body.eval()(images).double())      # eval mode: no dropout
    assert extract_features(net.train(), images, batch_size=5).shape == (37, 8) and net.training


def test_extract_features_without_features_method_calls_net():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    images = torch.randn(10, 3, 4, generator=gen(8))
    torch.testing.assert_close(extract_features(net, images, batch_size=3), net(images).detach().double())

#----------------------------------------------------------------------------
# Improved precision and recall.


def test_knn_radii_excludes_self_and_counts_duplicates():
    x = points([0.0, 1.0, 3.0, 6.0])
    torch.testing.assert_close(knn_radii(x, k=1), torch.tensor([1.0, 1.0, 2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(knn_radii(x, k=3), torch.tensor([6.0, 5.0, 3.0, 6.0], dtype=torch.float64))
    torch.testing.assert_close(knn_radii(points([2.0, 2.0, 5.0]), k=1), torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        knn_radii(x, k=4)


def test_knn_radii_match_brute_force_across_blocks():
    x = torch.randn(203, 24, generator=gen(13), dtype=torch.float64)
    d = torch.cdist(x, x).fill_diagonal_(float("inf"))
    expected = d.sort(dim=1).values[:, 4]                                   # k = 5
    torch.testing.assert_close(knn_radii(x, k=5, block_size=50), expected, rtol=1e-9, atol=1e-9)


def test_pr_identical_sets():
    f = torch.randn(500, 64, generator=gen(9))
    assert precision_recall(f, f.clone()) == {"precision": 1.0, "recall": 1.0}


def test_pr_far_apart_sets():
    real = torch.randn(300, 16, generator=gen(10))
    fake = torch.randn(300, 16, generator=gen(11)) + 100.0
    assert precision_recall(real, fake) == {"precision": 0.0, "recall": 0.0}


def test_pr_tight_cluster_inside_real_support():
    # Real 0..9, k = 3: radii 3 at the ends, 2 inside, so the real manifold is [-3, 12] and holds
    # every generated point: precision 1. Generated 4.2, 4.4, 4.6, 4.8: radii 0.6, 0.4, 0.4, 0.6,
    # union [3.6, 5.4], which holds the real points 4 and 5 only: recall 2 / 10.
    real = points([float(i) for i in range(10)])
    fake = points([4.2, 4.4, 4.6, 4.8])
    result = precision_recall(real, fake, k=3)
    assert result["precision"] == 1.0
    assert result["recall"] == pytest.approx(0.2, abs=1e-12)


def test_pr_k_is_respected():
    # Real 0, 1, 2, 3; generated 4.2, 4.7, 5.2, 5.7.
    # k = 1: every radius is 1 (real) or 0.5 (generated); real manifold [-1, 4], generated
    #        [3.7, 6.2]: no generated point is within 1 of 3, no real point within 0.5 of 4.2 -> (0, 0).
    # k = 3: real radii 3, 2, 2, 3 (manifold [-3, 6]) holds all generated points -> precision 1;
    #        generated radii 1.5, 1, 1, 1.5 (manifold [2.7, 7.2]) holds the real point 3 -> recall 1/4.
    real, fake = points([0.0, 1.0, 2.0, 3.0]), points([4.2, 4.7, 5.2, 5.7])
    assert precision_recall(real, fake, k=1) == {"precision": 0.0, "recall": 0.0}
    result = precision_recall(real, fake, k=3)
    assert result["precision"] == 1.0 and result["recall"] == pytest.approx(0.25, abs=1e-12)


def test_pr_independent_of_block_size_and_asymmetric_sizes():
    g = gen(12)
    real = torch.randn(300, 16, generator=g)
    fake = 0.7 * torch.randn(250, 16, generator=g) + 0.3
    whole = precision_recall(real, fake, block_size=1024)
    assert precision_recall(real, fake, block_size=7) == whole
    assert 0.0 < whole["recall"] < whole["precision"] < 1.0                 # narrower fake set: mode-dropping
    exact = precision_recall(real, fake, dtype=torch.float64)
    swapped = precision_recall(fake, real, dtype=torch.float64)
    assert (swapped["precision"], swapped["recall"]) == (exact["recall"], exact["precision"])  # roles swap
