"""Metrics against hand computations and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import short_md_frames

import openmm_trade as ot
from openmm_trade import metrics
from openmm_trade.errors import InputError
from openmm_trade.toys import KB, HarmonicOscillator


def test_effective_sample_size():
    assert metrics.effective_sample_size(np.zeros(8)) == 1.0
    assert metrics.effective_sample_size([0.0, -np.inf, -np.inf, -np.inf]) == 0.25
    log_w = np.log([1.0, 2.0, 3.0])
    assert metrics.effective_sample_size(log_w, fraction=False) == pytest.approx(36 / 14)
    assert metrics.effective_sample_size(log_w + 1000.0) == pytest.approx(36 / 14 / 3)
    assert metrics.effective_sample_size([-np.inf, -np.inf]) == 0.0
    with pytest.raises(InputError, match="NaN"):
        metrics.effective_sample_size([0.0, np.nan])


def test_kl_zero_for_identical_inputs():
    x = np.random.default_rng(1).uniform(-math.pi, math.pi, size=(2000, 2))
    assert abs(metrics.ramachandran_kl(x, x, pseudocount=0.0)) < 1e-14
    smoothed = metrics.ramachandran_kl(x, x)  # default half-count smoothing: small bias only
    assert 0.0 < smoothed < 18 * 18 * 0.5 / 2000


def test_kl_hand_computation():
    # bins=2: quadrants (φ<0 or ≥0) × (ψ<0 or ≥0), flattened as [(-,-), (-,+), (+,-), (+,+)]
    reference = np.array([[-1, -1], [-1, -1], [-1, 1], [1, 1]], dtype=float)  # p = .5 .25 0 .25
    model = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=float)
    weights = np.array([3.0, 1.0, 0.0, 0.0])                                  # q = .75 .25 0 0
    n_eff = 16 / 10  # (Σw)²/Σw²
    q = (n_eff * np.array([0.75, 0.25, 0.0, 0.0]) + 0.5) / (n_eff + 0.5 * 4)
    p = np.array([0.5, 0.25, 0.0, 0.25])
    expected = sum(pj * math.log(pj / qj) for pj, qj in zip(p, q, strict=True) if pj > 0)
    result = metrics.ramachandran_kl(reference, model, weights, bins=2)
    assert result == pytest.approx(expected, rel=1e-12)
    explicit = metrics.ramachandran_kl(reference, model, weights, bins=2, n_eff=10.0)
    q10 = (10 * np.array([0.75, 0.25, 0, 0]) + 0.5) / (10 + 2)
    assert explicit == pytest.approx(sum(pj * math.log(pj / qj) for pj, qj in
                                         zip(p, q10, strict=True) if pj > 0))
    assert metrics.ramachandran_kl(reference, model, weights, bins=2, pseudocount=0) == np.inf


def test_kl_input_errors():
    x = np.zeros((3, 2))
    with pytest.raises(InputError, match="radians"):
        metrics.ramachandran_kl(np.full((3, 2), 100.0), x)
    with pytest.raises(InputError, match=r"\(n, 2\)"):
        metrics.ramachandran_kl(np.zeros((3, 3)), x)
    with pytest.raises(InputError, match="model_weights"):
        metrics.ramachandran_kl(x, x, model_weights=[1.0, -1.0, 0.0])


def test_energy_wasserstein():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=500)
    assert metrics.energy_wasserstein(ref, ref + 2.5) == pytest.approx(2.5)
    model = np.append(rng.normal(size=300), np.inf)
    weights = np.append(rng.uniform(size=300), 0.0)
    expected = scipy.stats.wasserstein_distance(ref, model[:-1], None, weights[:-1])
    assert metrics.energy_wasserstein(ref, model, weights) == pytest.approx(expected)
    with pytest.raises(InputError, match="non-zero weight"):
        metrics.energy_wasserstein(ref, model, np.ones(301))


def test_delta_f_difference():
    c = metrics.delta_f_difference([0.0, 1.0, 2.0], [0.0, 1.3, 1.9], [0.0, 0.1, 0.1],
                                   [0.0, 0.0, 0.0])
    np.testing.assert_allclose(c.difference, [0.0, -0.3, 0.1])
    np.testing.assert_allclose(c.z_score[1:], [-3.0, 1.0])
    assert np.isnan(c.z_score[0])
    assert c.rmse == pytest.approx(math.sqrt(0.1 / 3))
    assert c.within(3.01) and not c.within(2.9)
    with pytest.raises(InputError, match="equal"):
        metrics.delta_f_difference([0.0], [0.0, 1.0])


class _Gaussian:
    """A model ``N(c + shift, (scale s)²)`` per coordinate for a harmonic target ``N(c, s²)``,
    with exact log-densities (from the toy's own, so both share one normalisation)."""

    dtype = torch.float64

    def __init__(self, toy, shift=0.0, scale=1.0):
        self.toy, self.shift, self.scale = toy, shift, scale

    def log_prob(self, x, temperature):
        z = (x - self.shift) / self.scale
        return self.toy.log_density(z, temperature) - self.toy.dim * math.log(self.scale)


def test_overlap_sigma_is_exact_on_gaussians():
    """σ of log w = log q - log p (+ const) on exact samples of q, against closed forms:
    0 for the exact model; δ/s for a model shifted by δ along one of d coordinates (log w
    is linear in x); sqrt(d/2) |1/c² - 1| for a model c times wider (log w ∝ χ²_d)."""
    toy = HarmonicOscillator(spring_constant=100.0, dim=3)
    temperature = 400.0
    s = math.sqrt(KB * temperature / toy.spring_constant)
    frames = toy.sample(40000, temperature, seed=7)
    assert metrics.overlap_sigma(_Gaussian(toy), toy, frames, temperature) < 1e-9
    # standard error of a sample standard deviation: about σ / sqrt(2n) (0.004 for σ = 1
    # and n = 4·10⁴, a little more for the χ² case); margins are ~6 standard errors
    shift = torch.tensor([0.7 * s, 0.0, 0.0], dtype=torch.float64)
    sigma = metrics.overlap_sigma(_Gaussian(toy, shift=shift), toy, frames, temperature)
    assert sigma == pytest.approx(0.7, abs=0.02)
    sigma = metrics.overlap_sigma(_Gaussian(toy, scale=1.2), toy, frames, temperature)
    assert sigma == pytest.approx(math.sqrt(1.5) * abs(1 / 1.2**2 - 1), abs=0.03)
    # given energies are used as they are (here: those of the frames, the same answer)
    log_w = metrics.overlap_log_weights(_Gaussian(toy), toy, frames, temperature,
                                        energies=toy(frames))
    np.testing.assert_allclose(log_w, toy.log_partition_function(temperature), atol=1e-9)
    # ESS ≈ exp(-σ²) for log-normal weights: importance sampling of the shifted model
    model_samples = frames + shift
    log_w_model = (-toy(model_samples) / (KB * temperature)
                   - _Gaussian(toy, shift=shift).log_prob(model_samples, temperature))
    assert metrics.effective_sample_size(log_w_model.numpy()) == pytest.approx(
        math.exp(-0.49), abs=0.02)


def test_overlap_sigma_infinite_outside_the_model_and_input_errors():
    toy = HarmonicOscillator(spring_constant=100.0)
    frames = toy.sample(100, 300.0, seed=0)

    class HalfLine(_Gaussian):
        def log_prob(self, x, temperature):
            out = super().log_prob(x, temperature)
            return torch.where(x[:, 0] > 0, out, torch.full_like(out, -math.inf))

    assert metrics.overlap_sigma(HalfLine(toy), toy, frames, 300.0) == math.inf
    with pytest.raises(InputError, match="energies"):
        metrics.overlap_sigma(_Gaussian(toy), toy, frames, 300.0, energies=np.zeros(3))
    with pytest.raises(InputError, match="frames"):
        metrics.overlap_sigma(_Gaussian(toy), toy, frames[:1], 300.0)
    with pytest.raises(InputError, match="frames"):
        metrics.overlap_sigma(_Gaussian(toy), toy, torch.zeros(5, 2), 300.0)
    with pytest.raises(InputError, match="temperature"):
        metrics.overlap_sigma(_Gaussian(toy), toy, frames, -1.0)


# ---------------------------------------------------------------------- ring closures
@pytest.fixture(scope="module")
def ring_cases():
    """name -> (msys, (40, N, 3) frames of plain OpenMM MD at 400 K)."""
    out = {}
    for seed, name in enumerate(["ace-pro-nme-implicit", "ace-phe-nme-implicit"]):
        msys = ot.systems.load(name)
        out[name] = (msys, short_md_frames(msys, n_frames=40, seed=seed + 3))
    return out


RING_ATOMS = {"ace-pro-nme-implicit": {"N", "CA", "CB", "CG", "CD"},
              "ace-phe-nme-implicit": {"CG", "CD1", "CD2", "CE1", "CE2", "CZ"}}


@pytest.mark.parametrize("name", sorted(RING_ATOMS))
def test_ring_closing_bonds_close_the_rings(ring_cases, name):
    msys, _ = ring_cases[name]
    pairs = metrics.ring_closing_bonds(msys)
    # one closing bond per independent cycle of the bond graph: bonds - atoms + 1
    assert len(pairs) == len(msys.bonds) - msys.n_atoms + 1 == 1
    atoms = list(msys.topology.atoms())
    assert {atoms[i].name for i in pairs[0]} <= RING_ATOMS[name]
    tree = {tuple(sorted(r)) for r in ot.ZMatrix.from_system(msys).rows[1:, :2].tolist()}
    assert tuple(pairs[0]) in set(msys.bonds) - tree


@pytest.mark.parametrize("name", sorted(RING_ATOMS))
def test_clash_fraction_oracle(ring_cases, name):
    msys, frames = ring_cases[name]
    reference, held_out = frames[::2], frames[1::2]
    # MD frames keep their rings: a 5 σ excursion has probability ~6e-7 per frame
    assert metrics.clash_fraction(held_out, msys, reference) == 0.0
    deviation = metrics.ring_closure_deviation(held_out, msys, reference)
    assert deviation.shape == (20,) and deviation.max() < 5
    # move one ring atom along the closing bond so the bond is exactly μ + s σ long
    (i, j), = metrics.ring_closing_bonds(msys)
    lengths = np.linalg.norm(reference[:, i] - reference[:, j], axis=-1)
    mu, sigma = lengths.mean(), lengths.std()

    def stretched(s):
        x = held_out.copy()
        bond = x[:, i] - x[:, j]
        x[:, i] = x[:, j] + (mu + s * sigma) * bond / np.linalg.norm(bond, axis=-1)[:, None]
        return x

    np.testing.assert_allclose(metrics.ring_closure_deviation(stretched(8.0), msys, reference),
                               8.0, rtol=1e-9)
    assert metrics.clash_fraction(stretched(8.0), msys, reference) == 1.0
    assert metrics.clash_fraction(stretched(-6.0), msys, reference) == 1.0
    assert metrics.clash_fraction(stretched(4.0), msys, reference) == 0.0
    assert metrics.clash_fraction(stretched(4.0), msys, reference, k=3.0) == 1.0
    half = held_out.copy()
    half[::2] = stretched(8.0)[::2]
    half[1, 0, 0] = np.nan  # a failed sample counts as broken
    assert metrics.clash_fraction(half, msys, reference) == pytest.approx(11 / 20)
    assert np.isinf(metrics.ring_closure_deviation(half, msys, reference)[1])


def test_clash_fraction_without_rings_and_errors(ring_cases, vacuum, vacuum_frames):
    assert metrics.ring_closing_bonds(vacuum).shape == (0, 2)
    assert metrics.clash_fraction(vacuum_frames, vacuum, vacuum_frames) == 0.0
    msys, frames = ring_cases["ace-pro-nme-implicit"]
    with pytest.raises(InputError, match=r"samples must be .* \(B, 26, 3\)"):
        metrics.clash_fraction(frames[:, :5], msys, frames)
    with pytest.raises(InputError, match="at least 2 finite frames"):
        metrics.clash_fraction(frames, msys, frames[:1])
    with pytest.raises(InputError, match="fixed length"):
        metrics.clash_fraction(frames, msys, np.repeat(frames[:1], 3, axis=0))
    with pytest.raises(InputError, match="k must be"):
        metrics.clash_fraction(frames, msys, frames, k=0)


def test_ring_closure_cost_counts_broken_rings_and_their_weight(ring_cases, vacuum,
                                                                 vacuum_frames):
    msys, frames = ring_cases["ace-phe-nme-implicit"]
    reference, samples = frames[::2], frames[1::2].copy()
    (i, j), = metrics.ring_closing_bonds(msys)
    samples[:5, i] += 0.3 * (samples[:5, i] - samples[:5, j])  # 5 of 20 rings broken
    log_w = np.log(np.arange(1.0, 21.0))  # weights 1..20: the broken ones carry 15 of 210
    cost = metrics.ring_closure_cost(samples, log_w, msys, reference)
    assert cost["broken_fraction"] == 0.25
    assert cost["broken_weight"] == pytest.approx(15 / 210)
    intact = np.arange(6.0, 21.0)  # Kish ESS of the intact ones, as a fraction of 15
    assert cost["ess_intact"] == pytest.approx(intact.sum() ** 2 / (intact**2).sum() / 15)
    assert cost["median_sd"] == pytest.approx(
        np.median(metrics.ring_closure_deviation(samples, msys, reference)))
    assert metrics.ring_closure_cost(vacuum_frames, np.zeros(len(vacuum_frames)), vacuum,
                                     vacuum_frames) is None
    with pytest.raises(InputError, match="log_weights must have shape"):
        metrics.ring_closure_cost(samples, log_w[:3], msys, reference)
    with pytest.raises(InputError, match="k must be"):
        metrics.ring_closure_cost(samples, log_w, msys, reference, k=-1)
