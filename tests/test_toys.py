"""Toy energies: thermodynamics by quadrature checked against scipy and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from openmm_trade.errors import InputError
from openmm_trade.flow import ConditionalFlow
from openmm_trade.toys import DoubleWell1D, HarmonicOscillator, TorsionBond2D, ToyEnergy
from openmm_trade.units import KB, beta_from_temperature

torch.set_num_threads(1)


def _u(toy, *coordinates) -> float:
    return float(toy._energy(torch.tensor([coordinates], dtype=torch.float64)))


@pytest.mark.parametrize("temperature", [300.0, 600.0])
def test_double_well_partition_function_matches_scipy_quad(temperature):
    toy = DoubleWell1D(barrier=10.0, tilt=2.0, interval=(-3.0, 2.5))
    beta = beta_from_temperature(temperature)
    lo, hi = toy.interval
    z, _ = integrate.quad(lambda x: math.exp(-beta * _u(toy, x)), lo, hi, limit=200,
                          epsabs=0, epsrel=1e-12)
    u, _ = integrate.quad(lambda x: _u(toy, x) * math.exp(-beta * _u(toy, x)), lo, hi,
                          limit=200, epsabs=0, epsrel=1e-12)
    assert toy.log_partition_function(temperature) == pytest.approx(math.log(z), abs=1e-9)
    assert toy.mean_energy(temperature) == pytest.approx(u / z, rel=1e-8)


def test_torsion_bond_partition_function_matches_scipy_dblquad():
    toy = TorsionBond2D()
    beta = beta_from_temperature(300.0)
    z, _ = integrate.dblquad(lambda r, phi: math.exp(-beta * _u(toy, phi, r)), -math.pi,
                             math.pi, 0.5, 1.5, epsabs=1e-10, epsrel=1e-10)
    assert toy.log_partition_function(300.0) == pytest.approx(math.log(z), abs=1e-6)


def test_torsion_coordinate_is_periodic():
    toy = TorsionBond2D()
    x = torch.tensor([[-math.pi, 1.1], [math.pi, 1.1], [0.3, 0.9], [0.3 + 2 * math.pi, 0.9]],
                     dtype=torch.float64)
    u = toy(x)
    assert u[0] == pytest.approx(float(u[1]), abs=1e-12)
    assert u[2] == pytest.approx(float(u[3]), abs=1e-12)


def test_harmonic_oscillator_closed_forms_match_quadrature():
    for dim in (1, 2):
        toy = HarmonicOscillator(spring_constant=50.0, dim=dim, center=0.3)
        temperatures = np.array([300.0, 450.0, 700.0])
        np.testing.assert_allclose(toy.log_partition_function(temperatures),
                                   ToyEnergy.log_partition_function(toy, temperatures),
                                   atol=1e-9)
        np.testing.assert_allclose(toy.mean_energy(temperatures),
                                   ToyEnergy.mean_energy(toy, temperatures), rtol=1e-8)
        np.testing.assert_allclose(toy.energy_variance(temperatures),
                                   ToyEnergy.energy_variance(toy, temperatures), rtol=1e-6)


@pytest.mark.parametrize("toy", [DoubleWell1D(), TorsionBond2D(), HarmonicOscillator(dim=2)],
                         ids=["double-well", "torsion-bond", "oscillator"])
def test_thermodynamic_identities(toy):
    """⟨U⟩ = -d ln Z/dβ, Var U = d⟨U⟩/dT · k_B T², ∂_β log q = -U + ⟨U⟩ by differences."""
    t, h = 450.0, 1e-4
    beta = beta_from_temperature(t)
    t_of = lambda b: 1.0 / (KB * b)  # noqa: E731
    d_ln_z = (toy.log_partition_function(t_of(beta + h))
              - toy.log_partition_function(t_of(beta - h))) / (2 * h)
    assert toy.mean_energy(t) == pytest.approx(-d_ln_z, rel=1e-6)
    d_mean = (toy.mean_energy(t_of(beta + h)) - toy.mean_energy(t_of(beta - h))) / (2 * h)
    assert toy.energy_variance(t) == pytest.approx(-d_mean, rel=1e-5)
    x = toy.sample(5, t, seed=0)
    d_log_q = (toy.log_density(x, t_of(beta + h)) - toy.log_density(x, t_of(beta - h))) / (2 * h)
    torch.testing.assert_close(toy.dlog_density_dbeta(x, t), d_log_q, rtol=1e-6, atol=1e-6)
    grid, log_volume = toy.quadrature_grid(t)
    mass = torch.logsumexp(toy.log_density(grid, t) + log_volume, 0)
    assert float(mass) == pytest.approx(0.0, abs=1e-9)


def test_double_well_samples_follow_the_exact_cdf():
    toy = DoubleWell1D()
    x = toy.sample(20000, 400.0, seed=3)[:, 0].numpy()
    grid = np.linspace(-2.5, 2.5, 4001)
    density = np.exp(toy.log_density(torch.from_numpy(grid[:, None]), 400.0).numpy())
    cdf = integrate.cumulative_trapezoid(density, grid, initial=0.0)
    result = stats.kstest(x, lambda v: np.interp(v, grid, cdf))
    assert result.pvalue > 0.01
    assert ((x > -2.5) & (x < 2.5)).all()


def test_torsion_bond_samples_populations_and_energy():
    toy = TorsionBond2D()
    for t in (300.0, 600.0):
        x = toy.sample(40000, t, seed=1)
        assert (x[:, 0] >= -math.pi).all() and (x[:, 0] < math.pi).all()
        assert ((x[:, 1] >= 0.5) & (x[:, 1] <= 1.5)).all()
        grid, log_volume = toy.quadrature_grid(t)
        p = torch.exp(toy.log_density(grid, t) + log_volume)
        upper = float(p[grid[:, 0] > 0].sum())
        sample_upper = float((x[:, 0] > 0).double().mean())
        assert sample_upper == pytest.approx(upper, abs=4 * math.sqrt(upper * (1 - upper) / 40000))
        u = toy(x)
        assert float(u.mean()) == pytest.approx(toy.mean_energy(t),
                                                abs=4 * float(u.std()) / math.sqrt(40000))
    # the upper (φ > 0) well loses population with temperature: energy against entropy
    assert toy.sample(20000, 300.0, seed=2)[:, 0].gt(0).double().mean() > 0.6
    assert toy.sample(20000, 600.0, seed=2)[:, 0].gt(0).double().mean() < 0.55


def test_samples_are_reproducible_and_seeded():
    toy = DoubleWell1D()
    assert torch.equal(toy.sample(10, 300.0, seed=5), toy.sample(10, 300.0, seed=5))
    assert not torch.equal(toy.sample(10, 300.0, seed=5), toy.sample(10, 300.0, seed=6))
    ho = HarmonicOscillator(spring_constant=100.0, dim=3)
    x = ho.sample(50000, 300.0, seed=0)
    assert float(x.var()) == pytest.approx(KB * 300.0 / 100.0, rel=0.03)


def test_kl_divergence_by_quadrature():
    ho = HarmonicOscillator(spring_constant=100.0)
    # KL(N(0, s1²) ‖ N(0, s2²)) with s² = k_B T / k
    s1, s2 = KB * 300.0, KB * 600.0
    exact = 0.5 * (math.log(s2 / s1) + s1 / s2 - 1.0)
    assert ho.kl_divergence(lambda x, t: ho.log_density(x, 600.0), 300.0) == pytest.approx(exact,
                                                                                            rel=1e-6)
    toy = TorsionBond2D()
    # zero up to the quadrature error of a coarser grid than log_density's normalisation
    assert toy.kl_divergence(toy.log_density, 450.0, resolution=128) == pytest.approx(0.0,
                                                                                      abs=1e-5)
    assert toy.kl_divergence(lambda x, t: toy.log_density(x, 300.0), 600.0) > 0.1
    with pytest.raises(InputError, match="log_prob"):
        toy.kl_divergence(object(), 300.0)  # neither a model nor a callable


def test_domains_build_a_conditional_flow():
    for toy in (DoubleWell1D(), TorsionBond2D(), HarmonicOscillator(dim=2)):
        flow = ConditionalFlow(toy.domains, 300.0, (300.0, 600.0), hidden=8, n_blocks=1,
                               prior="uniform", widen_prior=False, prior_floor=0.0)
        assert flow.event_shape == toy.event_shape
        x, _ = flow.sample(64, 450.0)
        assert torch.isfinite(toy(x)).all()
        kl = toy.kl_divergence(flow, 300.0, resolution=64)
        assert math.isfinite(kl) and kl > 0
    assert [d.kind for d in TorsionBond2D().domains] == ["circular", "interval"]
    assert HarmonicOscillator(spring_constant=100.0).domains[0].high == pytest.approx(
        10 * math.sqrt(KB * 1000.0 / 100.0))


def test_energies_are_counted_and_checked():
    toy = DoubleWell1D()
    toy(torch.zeros(7, 1))
    toy.log_partition_function(300.0)  # quadrature does not count
    toy.log_density(torch.zeros(3, 1), 300.0)
    assert toy.n_evaluations == 7
    with pytest.raises(InputError, match="shape"):
        toy(torch.zeros(3, 2))
    with pytest.raises(InputError, match="temperature"):
        toy.mean_energy(-5.0)
    with pytest.raises(InputError, match="n must"):
        toy.sample(0, 300.0)
    with pytest.raises(InputError, match="interval"):
        DoubleWell1D(interval=(1.0, -1.0))
    with pytest.raises(InputError, match="spring_constant"):
        HarmonicOscillator(spring_constant=-1.0)
    with pytest.raises(InputError, match="at most 2"):
        ToyEnergy.log_partition_function(HarmonicOscillator(dim=3), 300.0)
    assert "barrier=10.0" in repr(toy)
