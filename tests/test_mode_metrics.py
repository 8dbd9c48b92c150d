"""Mode coverage on a Gaussian mixture (`mode_stats`) and weighted rings (`gmm_ring(weights=...)`),
against answers worked out by hand."""

import math
from types import SimpleNamespace

import pytest
import torch

from fewstep.cli import parse_value
from fewstep.data import make_dataset
from fewstep.data.toy2d import GaussianMixture, gmm_ring
from fewstep.errors import FewstepError
from fewstep.metrics.toy import mode_stats
from fewstep.runs import build_dataset

WEIGHTS = [1, 2, 3, 4, 5, 6, 7, 8]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def at_means(mixture, counts):
    """counts[k] copies of mean k, in float64: each point lies exactly on its mode."""
    return torch.cat([mixture.means[k].expand(c, -1) for k, c in counts.items()])

#----------------------------------------------------------------------------
# gmm_ring(weights=...).


def test_default_ring_is_unchanged():
    # The ring as it was built before weights existed: 8 equal modes at radius 0.7, std 0.05.
    angle = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
    means = torch.stack([angle.cos(), angle.sin()], 1) * 0.7
    by_hand = GaussianMixture(means, [0.05])
    ring = gmm_ring()
    assert torch.equal(ring.means, by_hand.means) and torch.equal(ring.weights, by_hand.weights)
    assert torch.equal(ring.sample(5000, generator=gen()), by_hand.sample(5000, generator=gen()))
    # equal weights given explicitly, as ints or floats, draw the very same samples
    for weights in ([1] * 8, [2.5] * 8):
        same = gmm_ring(weights=weights).sample(5000, generator=gen())
        assert torch.equal(same, by_hand.sample(5000, generator=gen()))


def test_weights_are_normalised():
    expected = torch.arange(1, 9, dtype=torch.float64) / 36
    assert torch.equal(gmm_ring(weights=WEIGHTS).weights, expected)
    assert torch.equal(gmm_ring(weights=[w / 2 for w in WEIGHTS]).weights, expected)      # floats, same ratios
    assert torch.equal(gmm_ring(k=3, weights=(1, 1, 2)).weights, torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64))
    # sampled labels follow the weights
    _, k = gmm_ring(weights=WEIGHTS).sample(40000, generator=gen(), labels=True)
    share = torch.bincount(k, minlength=8).double() / 40000
    assert (share - expected).abs().max() < 0.01


def test_weights_as_the_user_passes_them():
    # --set data.weights=[1,2,3,4,5,6,7,8] arrives as a JSON list
    data = make_dataset("gmm", weights=parse_value("[1,2,3,4,5,6,7,8]"))
    assert torch.equal(data.weights, torch.arange(1, 9, dtype=torch.float64) / 36)
    cfg = SimpleNamespace(data="gmm", data_kwargs={"weights": parse_value("[1,2,3]")})
    with pytest.raises(FewstepError, match=r"weights must be a list of k=8 positive finite numbers"):
        build_dataset(cfg)


@pytest.mark.parametrize("weights", [
    [1] * 7, [1] * 9, [],                                 # wrong length
    [1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, -2],  # not positive
    [1, 1, 1, 1, 1, 1, 1, float("nan")], [1, 1, 1, 1, 1, 1, 1, float("inf")],
    [1e308] * 8, [1] * 7 + [10 ** 400],                   # the sum, or one weight, beyond float range
    [1, 1, 1, 1, 1, 1, 1, "2"], [1, 1, 1, 1, 1, 1, 1, None], [True] * 8, [[1]] * 8,  # not numbers
    "1,2,3,4,5,6,7,8", 8, {"a": 1},                       # not a list
])
def test_bad_weights_are_one_line(weights):
    with pytest.raises(ValueError, match=r"^weights must be a list of k=8 positive finite numbers, got ") as e:
        gmm_ring(weights=weights)
    assert "\n" not in str(e.value)


def test_bad_weights_name_k():
    with pytest.raises(ValueError, match=r"k=3"):
        gmm_ring(k=3, weights=WEIGHTS)

#----------------------------------------------------------------------------
# mode_stats.


@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_samples_of_the_mixture_cover_it(weights):
    data = gmm_ring(weights=weights)
    stats = mode_stats(data.sample(20000, generator=gen()), data)
    assert stats["modes_hit"] == 1.0
    assert stats["weight_tv"] < 0.03
    # |x - mu_k| / s_k is chi with 2 degrees of freedom: P(> 3) = exp(-9 / 2) ~ 0.011 (std 0.0007 here)
    assert abs(stats["off_mode"] - math.exp(-4.5)) < 0.003


def test_a_dropped_mode_or_a_wrong_weight_shows():
    data, unequal = gmm_ring(), gmm_ring(weights=WEIGHTS)
    x = data.sample(20000, generator=gen())
    # samples of the equal ring against the weighted one: TV = 0.5 sum |1/8 - i/36| = 2/9 (sampling noise aside)
    assert mode_stats(x, unequal)["weight_tv"] == pytest.approx(2 / 9, abs=0.02)
    # drop mode 0 entirely: 7 of 8 modes, p_hat = 1/7 elsewhere, TV = 1/8 exactly in expectation
    _, k = data.sample(20000, generator=gen(), labels=True)
    stats = mode_stats(x[k != 0], data)
    assert stats["modes_hit"] == 7 / 8
    assert stats["weight_tv"] == pytest.approx(1 / 8, abs=0.02)


def test_samples_at_three_means():
    data = gmm_ring()
    x = at_means(data, {0: 10, 2: 20, 5: 70})
    stats = mode_stats(x, data)
    assert stats["modes_hit"] == 3 / 8
    # p_hat = (0.1, 0, 0.2, 0, 0, 0.7, 0, 0) against 1/8 each: 0.5 (0.025 + 0.075 + 0.575 + 5 / 8) = 0.65
    assert stats["weight_tv"] == pytest.approx(0.65, abs=1e-12)
    assert stats["off_mode"] == 0.0
    # against weights i/36: the excess over pi is (0.1 - 1/36) + (0.2 - 3/36) + (0.7 - 6/36) = 26/36
    stats = mode_stats(x, gmm_ring(weights=WEIGHTS))
    assert stats["modes_hit"] == 3 / 8 and stats["weight_tv"] == pytest.approx(13 / 18, abs=1e-12)
    # float32 samples (what the samplers return) give the same answer
    assert mode_stats(x.float(), data) == mode_stats(x, data)


@pytest.mark.parametrize("count, hit", [(9, 7 / 8), (10, 1.0)])
def test_a_mode_with_less_than_min_share_is_not_hit(count, hit):
    data = gmm_ring()
    counts = {0: count, **{k: 100 for k in range(1, 7)}, 7: 400 - count}       # 1000 samples
    x = at_means(data, counts)
    stats = mode_stats(x, data)                                                # min_share 0.01: 10 samples
    assert stats["modes_hit"] == hit
    assert stats["off_mode"] == 0.0
    # the few samples still count as assigned to mode 0: TV = |c/1000 - 1/8| + ... by hand
    p_hat = torch.tensor([count, 100, 100, 100, 100, 100, 100, 400 - count], dtype=torch.float64) / 1000
    assert stats["weight_tv"] == pytest.approx(0.5 * (p_hat - 1 / 8).abs().sum().item(), abs=1e-12)
    assert mode_stats(x, data, min_share=0.009)["modes_hit"] == 1.0
    assert mode_stats(x, data, min_share=0.2)["modes_hit"] == 1 / 8           # only mode 7 holds >= 200


def test_radius_in_standard_deviations():
    data = gmm_ring()                                                          # s = 0.05, modes 0.54 apart
    inside = data.means[0] + torch.tensor([2.9 * 0.05, 0.0], dtype=torch.float64)
    outside = data.means[0] + torch.tensor([0.0, 3.1 * 0.05], dtype=torch.float64)
    assert mode_stats(inside[None], data) == {"modes_hit": 1 / 8, "weight_tv": 7 / 8, "off_mode": 0.0}
    assert mode_stats(outside[None], data) == {"modes_hit": 0.0, "weight_tv": 1.0, "off_mode": 1.0}
    assert mode_stats(outside[None], data, radius=3.2)["modes_hit"] == 1 / 8


def test_points_off_every_mode_are_left_out_of_tv():
    data = gmm_ring()
    far = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.7, 0.7]], dtype=torch.float64).repeat(10, 1)   # 30 points
    x = torch.cat([at_means(data, {0: 10, 2: 20, 5: 70}), far])
    stats = mode_stats(x, data)
    assert stats["off_mode"] == pytest.approx(30 / 130, abs=1e-15)
    assert stats["weight_tv"] == pytest.approx(0.65, abs=1e-12)            # as without the far points
    assert stats["modes_hit"] == 3 / 8                                    # 10/130 still >= 0.01
    assert mode_stats(far, data) == {"modes_hit": 0.0, "weight_tv": 1.0, "off_mode": 1.0}


def test_hit_counts_every_mode_in_reach_but_assignment_the_nearest():
    # two overlapping modes 2 s apart: a point at 0.8 s from the first is within 3 s of both
    mixture = GaussianMixture([[0.0, 0.0], [0.1, 0.0]], [0.05])
    x = torch.tensor([[0.04, 0.0]], dtype=torch.float64).repeat(50, 1)
    assert mode_stats(x, mixture) == {"modes_hit": 1.0, "weight_tv": 0.5, "off_mode": 0.0}


def test_per_mode_standard_deviations():
    mixture = GaussianMixture([[0.0, 0.0], [1.0, 0.0]], [0.01, 0.2], weights=[3, 1])
    # (0.6, 0) is 2 s from mode 1, its nearest; (0.45, 0) is nearest mode 0 but 45 s from it: off every
    # mode, though within 3 s of mode 1, which both points hit
    x = torch.tensor([[0.6, 0.0], [0.45, 0.0]], dtype=torch.float64)
    assert mode_stats(x, mixture) == {"modes_hit": 0.5, "weight_tv": 0.75, "off_mode": 0.5}


@pytest.mark.parametrize("kwargs", [{"radius": 0}, {"radius": float("nan")}, {"min_share": 0}, {"min_share": 1.5}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="radius"):
        mode_stats(torch.zeros(4, 2), gmm_ring(), **kwargs)


@pytest.mark.parametrize("x", [torch.zeros(0, 2), torch.zeros(4, 3)])
def test_bad_samples(x):
    with pytest.raises(ValueError, match="samples must be"):
        mode_stats(x, gmm_ring())
