"""WeightedTrajectory and ot.sample against exact Gaussian models (analytic oracles)."""

from __future__ import annotations

import h5py
import mdtraj
import numpy as np
import pytest
import torch
from analytic import (
    ContextEnergy,
    FailingEnergy,
    GaussianModel,
    HarmonicEnergy,
    PerturbedFramesModel,
)

import openmm_trade as ot
from openmm_trade.errors import InputError
from openmm_trade.model import BoltzmannModel, check_model
from openmm_trade.sampling import WeightedTrajectory, sample, systematic_resample
from openmm_trade.toys import HarmonicOscillator
from openmm_trade.units import KB


def test_exact_model_has_constant_weights_equal_to_log_z():
    energy, model = HarmonicEnergy(dim=3), GaussianModel(dim=3)
    wt = sample(model, energy, temperature=450.0, n=500, chunk_size=128, seed=0, quiet=True)
    # p = exp(-βU)/Z exactly, so log w = ln Z(β) for every sample.
    np.testing.assert_allclose(wt.log_weights, energy.log_partition_function(450.0), atol=1e-10)
    assert wt.ess == pytest.approx(1.0)
    assert wt.log_partition_estimate == pytest.approx(energy.log_partition_function(450.0))
    assert wt.samples.shape == (500, 3) and wt.xyz is wt.samples
    assert wt.trajectory is None and wt.log_weights.dtype == np.float64
    assert wt.weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(wt.energies, 0.5 * 100.0 * (wt.samples ** 2).sum(1))


def test_wrong_width_is_corrected_and_resampling_preserves_means():
    energy, model = HarmonicEnergy(dim=2), GaussianModel(dim=2, width=1.2)
    wt = sample(model, energy, temperature=400.0, n=20_000, chunk_size=4096, seed=1, quiet=True)
    assert 0.5 < wt.ess < 1.0
    # ESS fraction from its definition
    w = np.exp(wt.log_weights)
    assert wt.ess == pytest.approx(w.sum() ** 2 / (len(w) * (w ** 2).sum()))
    exact = energy.mean_energy(400.0)
    weighted = float(wt.weighted_mean(wt.energies))
    raw = float(wt.energies.mean())
    assert raw == pytest.approx(1.44 * exact, rel=0.05)  # the model is too wide
    assert weighted == pytest.approx(exact, rel=0.03)
    resampled = wt.resample(20_000, seed=3)
    assert resampled.shape == (20_000, 2)
    u = 0.5 * 100.0 * (resampled ** 2).sum(1)
    se = u.std() / np.sqrt(len(u) * wt.ess)
    assert abs(u.mean() - weighted) < 4 * se
    # second moment of a coordinate: exact k_B T / k
    assert float((resampled[:, 0] ** 2).mean()) == pytest.approx(KB * 400.0 / 100.0, rel=0.05)


def test_systematic_resample_counts():
    rng = np.random.default_rng(0)
    weights = np.array([0.1, 0.0, 0.6, 0.3])
    index = systematic_resample(weights, 10, rng)
    counts = np.bincount(index, minlength=4)
    # systematic resampling gives floor(n w) or ceil(n w) copies of each sample
    assert np.all(np.abs(counts - 10 * weights) < 1)
    with pytest.raises(InputError, match="every weight is zero"):
        systematic_resample(np.zeros(3), 2, rng)


def test_failed_energies_have_zero_weight_and_are_counted():
    energy = FailingEnergy(HarmonicEnergy(dim=2), threshold=0.1)
    wt = sample(GaussianModel(dim=2), energy, temperature=300.0, n=400, chunk_size=64, seed=2,
                quiet=True)
    bad = wt.samples[:, 0] > 0.1
    assert bad.any()
    assert wt.n_failed == int(bad.sum()) == energy.n_failed
    assert np.all(np.isposinf(wt.energies[bad])) and np.all(wt.weights[bad] == 0)
    assert np.all(wt.weights[~bad] > 0)
    assert wt.ess == pytest.approx((~bad).mean())  # the remaining weights are equal
    assert "failed = " in wt.summary()


def test_all_failed_gives_zero_ess():
    wt = WeightedTrajectory(np.zeros((3, 1)), [np.nan, np.inf, 1.0], [0.0, 0.0, np.nan], 300.0)
    assert wt.n_failed == 3 and wt.ess == 0.0 and np.all(wt.weights == 0)
    assert wt.log_partition_estimate == -np.inf


def test_seed_reproducible_and_global_rng_untouched():
    energy, model = HarmonicEnergy(), GaussianModel()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = sample(model, energy, 350.0, 100, chunk_size=30, seed=5, quiet=True)
    assert torch.rand(1) == expected_next
    b = sample(model, energy, 350.0, 100, chunk_size=30, seed=5, quiet=True)
    np.testing.assert_array_equal(a.samples, b.samples)


def test_clipping_is_explicit_and_reported():
    energy, model = HarmonicEnergy(dim=2), GaussianModel(dim=2, width=1.5)
    plain = sample(model, energy, 300.0, 1000, seed=0, quiet=True)
    assert plain.clip_log_weights is None and plain.n_clipped == 0
    clipped = sample(model, energy, 300.0, 1000, seed=0, quiet=True, clip_log_weights=0.9)
    np.testing.assert_array_equal(clipped.unclipped_log_weights, plain.log_weights)
    assert clipped.n_clipped == 99 or clipped.n_clipped == 100
    assert clipped.log_weights.max() == pytest.approx(clipped.clip_threshold)
    assert clipped.ess > plain.ess
    assert "clipped" in clipped.summary()
    with pytest.raises(InputError, match="clip_log_weights"):
        sample(model, energy, 300.0, 10, clip_log_weights=2.0)


def test_input_errors():
    model = GaussianModel(dim=2)
    with pytest.raises(InputError, match="event_shape"):
        sample(model, HarmonicEnergy(dim=3), 300.0, 10)
    with pytest.raises(InputError, match="n must be"):
        sample(model, HarmonicEnergy(dim=2), 300.0, 0)
    with pytest.raises(InputError, match="temperature"):
        sample(model, HarmonicEnergy(dim=2), -5.0, 10)
    with pytest.raises(InputError, match="same shape"):
        WeightedTrajectory(np.zeros((2, 1)), [0.0, 1.0], [0.0], 300.0)
    with pytest.raises(InputError, match="samples must have shape"):
        WeightedTrajectory(np.zeros((3, 1)), [0.0, 1.0], [0.0, 0.0], 300.0)


def _assert_same(a: WeightedTrajectory, b: WeightedTrajectory):
    np.testing.assert_array_equal(a.samples, b.samples)
    assert a.samples.dtype == b.samples.dtype
    for name in ("energies", "log_prob", "log_weights", "weights"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.temperature, a.ess, a.n_failed, a.clip_log_weights, a.metadata) == (
        b.temperature, b.ess, b.n_failed, b.clip_log_weights, b.metadata)


def test_save_load_round_trip_toy(tmp_path):
    energy = FailingEnergy(HarmonicEnergy(dim=2), threshold=0.15)
    wt = sample(GaussianModel(dim=2, width=1.1), energy, 420.0, 300, seed=4, quiet=True,
                clip_log_weights=0.99)
    path = wt.save(tmp_path / "toy.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.h5"]  # no temp file left
    back = WeightedTrajectory.load(path)
    _assert_same(wt, back)
    lazy = WeightedTrajectory.load(path, lazy=True)
    assert lazy._samples is None
    _assert_same(wt, lazy)
    with pytest.raises(InputError, match="no such file"):
        WeightedTrajectory.load(tmp_path / "missing.h5")


def test_streaming_output_matches_in_memory(tmp_path):
    energy, model = HarmonicEnergy(dim=2), GaussianModel(dim=2, width=1.1)
    memory = sample(model, energy, 380.0, 250, chunk_size=40, seed=9, quiet=True)
    streamed = sample(model, energy, 380.0, 250, chunk_size=40, seed=9, quiet=True,
                      output=tmp_path / "stream.h5")
    assert streamed._samples is None  # kept on disk until used
    _assert_same(memory, streamed)
    _assert_same(memory, WeightedTrajectory.load(tmp_path / "stream.h5"))


def test_concatenate():
    energy, model = HarmonicEnergy(dim=2), GaussianModel(dim=2, width=1.1)
    parts = [sample(model, energy, 330.0, 100, seed=s, quiet=True) for s in (1, 2)]
    joined = WeightedTrajectory.concatenate(parts)
    assert len(joined) == 200
    np.testing.assert_array_equal(joined.log_weights,
                                  np.concatenate([p.log_weights for p in parts]))
    with pytest.raises(InputError, match="one temperature"):
        WeightedTrajectory.concatenate([parts[0], sample(model, energy, 331.0, 5, seed=3,
                                                          quiet=True)])


# ---------------------------------------------------------------------------- molecules


@pytest.fixture(scope="module")
def reference_energy(vacuum):
    return ContextEnergy(vacuum)


def test_molecular_weighted_trajectory_from_arrays(vacuum, vacuum_frames, reference_energy,
                                                  tmp_path):
    x = torch.tensor(vacuum_frames)
    energies = reference_energy(x).numpy()
    log_p = np.linspace(-1.0, 1.0, len(energies))
    wt = WeightedTrajectory(vacuum_frames, energies, log_p, 400.0,
                            topology=vacuum.mdtraj_topology, metadata={"source": "md"})
    assert isinstance(wt.trajectory, mdtraj.Trajectory)
    assert wt.trajectory.topology == vacuum.mdtraj_topology
    assert wt.trajectory.n_frames == 20
    np.testing.assert_allclose(wt.trajectory.xyz, vacuum_frames, atol=1e-6)  # nm, float32
    np.testing.assert_allclose(wt.log_weights, -energies / (KB * 400.0) - log_p)
    resampled = wt.resample(7, seed=0)
    assert isinstance(resampled, mdtraj.Trajectory) and resampled.n_frames == 7
    path = wt.save(tmp_path / "mol.h5")
    plain = mdtraj.load(str(path))  # an ordinary mdtraj HDF5 file
    np.testing.assert_array_equal(plain.xyz, wt.trajectory.xyz)
    back = WeightedTrajectory.load(path)
    _assert_same(wt, back)
    assert back.topology == vacuum.mdtraj_topology
    with h5py.File(path) as handle:
        assert "openmm_trade/energies" in handle and "coordinates" in handle
    with pytest.raises(InputError, match="molecular samples"):
        WeightedTrajectory(vacuum_frames[:, :5], energies, log_p, 400.0,
                           topology=vacuum.mdtraj_topology)


def test_sample_molecular_model_with_openmm_energy(vacuum, vacuum_frames, reference_energy,
                                                   tmp_path):
    model = PerturbedFramesModel(vacuum, vacuum_frames, sigma=0.002)
    with ot.OpenMMEnergy(vacuum, platform="Reference") as energy:
        wt = sample(model, energy, 400.0, 24, chunk_size=10, seed=0, quiet=True,
                    output=tmp_path / "mol.h5")
    traj = wt.trajectory
    assert isinstance(traj, mdtraj.Trajectory) and traj.topology == vacuum.mdtraj_topology
    assert traj.n_frames == 24
    expected = reference_energy(torch.tensor(traj.xyz, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(wt.energies, expected, rtol=1e-5, atol=1e-3)
    log_p = model.log_prob(torch.tensor(traj.xyz, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(wt.log_prob, log_p, rtol=1e-4, atol=0.5)  # x stored as float32
    assert wt.n_failed == 0
    log_w = -wt.energies / (KB * 400.0) - wt.log_prob  # the weights' definition, by hand
    w = np.exp(log_w - log_w.max())
    assert wt.ess == pytest.approx(w.sum() ** 2 / (w ** 2).sum() / len(w), rel=1e-9)
    assert WeightedTrajectory.load(tmp_path / "mol.h5").trajectory.n_frames == 24
    assert wt.overlap_sigma is None and "overlap" not in wt.summary()

    model.metadata = {"overlap_sigma": 1.75}  # what training records on held-out frames
    with ot.OpenMMEnergy(vacuum, platform="Reference") as energy:
        wt = sample(model, energy, 400.0, 8, seed=0, quiet=True, output=tmp_path / "s.h5")
    again = WeightedTrajectory.load(tmp_path / "s.h5")
    assert wt.overlap_sigma == again.overlap_sigma == 1.75
    assert "model overlap σ at T0 = 1.75" in again.summary()


def test_sample_temperature_flow(vacuum, vacuum_frames):
    flow = pytest.importorskip("openmm_trade.flow.temperature_flow")
    boundary = mdtraj.Trajectory(vacuum_frames, vacuum.mdtraj_topology)
    model = flow.TemperatureFlow.for_system(vacuum, boundary, temperature_range=(300, 600))
    with ot.OpenMMEnergy(vacuum, platform="Reference") as energy:
        wt = sample(model, energy, 450.0, 8, seed=0, quiet=True)
    assert wt.trajectory.topology == vacuum.mdtraj_topology
    assert wt.trajectory.xyz.shape == (8, 22, 3)
    assert np.all(np.isfinite(wt.log_prob))


def test_sample_conditional_flow_toy():
    """The library's own ConditionalFlow on a toy energy: float32 samples, exact bookkeeping."""
    from openmm_trade.flow import ConditionalFlow, Domain
    from openmm_trade.toys import HarmonicOscillator

    energy = HarmonicOscillator(spring_constant=100.0, dim=2)
    model = ConditionalFlow([Domain.real(-1.0, 1.0)] * 2, reference_temperature=300.0,
                            temperature_range=(300.0, 600.0), hidden=16, n_blocks=1, seed=0,
                            prior="uniform", widen_prior=False, prior_floor=0.0)
    wt = sample(model, energy, 450.0, 300, chunk_size=128, seed=0, quiet=True)
    assert wt.samples.dtype == np.float32 and wt.log_prob.dtype == np.float64
    x = torch.from_numpy(wt.samples)
    with torch.no_grad():
        log_p = model.log_prob(x, 450.0).double().numpy()
        u = energy(x).numpy()
    np.testing.assert_allclose(wt.log_prob, log_p, atol=1e-4)
    np.testing.assert_allclose(wt.log_weights, -u / (KB * 450.0) - wt.log_prob)


def test_running_ess_of_progress_bar_matches_metric():
    from openmm_trade.metrics import effective_sample_size
    from openmm_trade.sampling import _RunningESS

    log_w = np.random.default_rng(0).normal(size=1000) * 3
    log_w[5] = -np.inf
    running = _RunningESS()
    for chunk in np.array_split(log_w, 7):
        running.add(chunk)
    assert running.fraction == pytest.approx(effective_sample_size(log_w), rel=1e-12)


def test_same_seed_same_samples_with_a_flow():
    """The seed reaches the flow's own generator: two draws with one seed are identical."""
    from openmm_trade.flow import ConditionalFlow, Domain
    from openmm_trade.toys import HarmonicOscillator

    energy = HarmonicOscillator(spring_constant=50.0, dim=1, window=3.0)
    flow = ConditionalFlow([Domain.interval(-3.0, 3.0)], 300.0, (300.0, 600.0), hidden=8,
                           n_blocks=1, prior="uniform", widen_prior=False, prior_floor=0.0)
    first = ot.sample(flow, energy, temperature=400.0, n=50, seed=11, quiet=True)
    flow.sample(7, 400.0)  # advance the flow's own generator in between
    second = ot.sample(flow, energy, temperature=400.0, n=50, seed=11, quiet=True)
    other = ot.sample(flow, energy, temperature=400.0, n=50, seed=12, quiet=True)
    assert np.array_equal(first.samples, second.samples)
    assert not np.array_equal(first.samples, other.samples)


def test_objects_outside_the_model_protocol_get_one_clear_error():
    """ot.sample, ot.train and refinement name what a model lacks, in one InputError."""
    energy = HarmonicOscillator(spring_constant=100.0, dim=2)

    class NoGenerator(GaussianModel):
        def sample(self, n, temperature):  # the protocol's sample takes generator=
            return super().sample(n, temperature)

    for model, lacks in [(object(), "lacks sample"),
                         (NoGenerator(), "lacks a generator= keyword in sample")]:
        with pytest.raises(InputError, match=lacks):
            sample(model, energy, 450.0, 10, quiet=True)
        with pytest.raises(InputError, match=lacks):
            ot.train(model, energy, torch.zeros(8, 2), 300.0, steps=1, quiet=True)
        with pytest.raises(InputError, match=lacks):
            ot.refine.smc(model, energy, 450.0, 10)
    assert isinstance(GaussianModel(), BoltzmannModel)
    assert not isinstance(object(), BoltzmannModel)
    assert check_model(GaussianModel()) is not None
