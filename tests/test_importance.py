"""openmm_trade.importance against direct float64 arithmetic (no log-space shortcuts)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from openmm_trade.errors import InputError
from openmm_trade.importance import (
    effective_sample_size,
    log_mean_exp,
    log_sum_exp,
    normalized_weights,
    scaled_weights,
)


@pytest.fixture
def log_w():
    """Moderate log-weights (exp does not overflow) with some failed samples."""
    rng = np.random.default_rng(5)
    values = rng.normal(0.0, 2.0, 400)
    values[rng.random(400) < 0.1] = -np.inf
    return values


def test_against_direct_float64(log_w):
    w = np.exp(log_w)  # direct: zero for -inf, no shift needed at this scale
    np.testing.assert_allclose(normalized_weights(log_w), w / w.sum(), rtol=1e-13, atol=0)
    assert effective_sample_size(log_w) == pytest.approx(
        w.sum() ** 2 / (w ** 2).sum() / w.size, rel=1e-13)
    assert effective_sample_size(log_w, fraction=False) == pytest.approx(
        w.sum() ** 2 / (w ** 2).sum(), rel=1e-13)
    assert log_sum_exp(log_w) == pytest.approx(math.log(w.sum()), rel=1e-13)
    assert log_mean_exp(log_w) == pytest.approx(math.log(w.mean()), rel=1e-13)
    scaled, shift = scaled_weights(log_w)
    np.testing.assert_allclose(scaled * math.exp(shift), w, rtol=1e-13, atol=0)
    assert scaled.max() == 1.0


def test_shift_invariance_without_overflow(log_w):
    """A shift of 10^4 overflows exp directly; weights and ESS do not move, ln Z shifts."""
    shifted = log_w + 1.0e4
    np.testing.assert_allclose(normalized_weights(shifted), normalized_weights(log_w),
                               rtol=1e-9)
    assert effective_sample_size(shifted) == pytest.approx(effective_sample_size(log_w),
                                                           rel=1e-9)
    assert log_mean_exp(shifted) == pytest.approx(log_mean_exp(log_w) + 1.0e4, abs=1e-9)


def test_limits():
    n = 8
    assert effective_sample_size(np.full(n, -3.7)) == pytest.approx(1.0, rel=1e-15)
    one_hot = np.full(n, -np.inf)
    one_hot[2] = 0.5
    assert effective_sample_size(one_hot) == 1.0 / n
    assert normalized_weights(one_hot).tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
    assert log_mean_exp(one_hot) == pytest.approx(0.5 - math.log(n), rel=1e-15)
    none = np.full(3, -np.inf)
    assert effective_sample_size(none) == 0.0
    assert log_sum_exp(none) == -math.inf and log_mean_exp(none) == -math.inf
    assert normalized_weights(none).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("bad", [[], [0.0, np.nan], [0.0, np.inf]])
def test_ess_rejects_bad_log_weights(bad):
    with pytest.raises(InputError, match="log_weights"):
        effective_sample_size(bad)
