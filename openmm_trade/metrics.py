"""Accuracy metrics: effective sample size, overlap σ, Ramachandran KL, energy distances, Δf.

``effective_sample_size`` is :func:`openmm_trade.importance.effective_sample_size`.

Example
-------
>>> import numpy as np
>>> effective_sample_size(np.zeros(10))
1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.stats
import torch

from .errors import InputError
from .importance import effective_sample_size
from .units import beta_from_temperature, check_temperature


def overlap_log_weights(model, energy, frames, temperature: float, energies=None,
                        batch_size: int = 2048) -> np.ndarray:
    """``log w = -β U(x) - log p_θ(x | T)`` of given frames (float64, one per frame).

    Up to a constant (``-ln Z``) this is ``log q(x|T) - log p_θ(x|T)``: on samples of the
    target ``q`` (e.g. held-out MD frames at ``T``) its spread measures how well the model
    overlaps the Boltzmann density, before any flow sample is drawn
    (:func:`overlap_sigma`).

    Parameters
    ----------
    model : flow-protocol model
        Anything with ``log_prob(x, temperature)`` (``TemperatureFlow``,
        ``ConditionalFlow``); evaluated without gradients.
    energy : Energy
        ``U(x)`` in kJ/mol.
    frames : mdtraj.Trajectory, array or tensor
        ``(M, *energy.event_shape)`` coordinates (a trajectory's ``xyz`` in nm).
    temperature : float
        ``T`` in K.
    energies : array or tensor, optional
        ``U`` of the frames in kJ/mol when already known (then ``energy`` is not called).
    batch_size : int
        Frames per model / energy call.

    Returns
    -------
    numpy.ndarray, shape (M,)
        ``+inf`` where the model gives the frame zero density.

    Examples
    --------
    >>> from openmm_trade.toys import HarmonicOscillator
    >>> toy = HarmonicOscillator(spring_constant=100.0)
    >>> class Exact:
    ...     def log_prob(self, x, temperature):
    ...         return toy.log_density(x, temperature)
    >>> log_w = overlap_log_weights(Exact(), toy, toy.sample(5, 300.0, seed=0), 300.0)
    >>> bool(np.allclose(log_w, toy.log_partition_function(300.0)))
    True
    """
    temperature = check_temperature(temperature, "temperature")
    if not isinstance(temperature, float):
        raise InputError(f"temperature must be one temperature in K, got {temperature!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = frames.xyz if hasattr(frames, "xyz") and hasattr(frames, "topology") else frames
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    x = energy.check_input(x.detach(), "frames")
    if x.shape[0] < 2:
        raise InputError(f"frames must hold at least 2 frames, got {x.shape[0]}")
    if energies is None:
        with torch.no_grad():
            energies = torch.cat([energy(chunk.to(torch.float64))
                                  for chunk in torch.split(x, batch_size)])
    energies = torch.as_tensor(energies, dtype=torch.float64).detach().cpu().reshape(-1)
    if energies.shape[0] != x.shape[0]:
        raise InputError(f"energies must hold one value per frame ({x.shape[0]}), "
                         f"got {energies.shape[0]}")
    if not bool(torch.isfinite(energies).all()):
        raise InputError("frames must all have a finite energy, got "
                         f"{int((~torch.isfinite(energies)).sum())} non-finite")
    dtype = getattr(model, "dtype", torch.float32)
    device = getattr(model, "device", "cpu")
    with torch.no_grad():
        log_p = torch.cat([model.log_prob(chunk.to(device=device, dtype=dtype), temperature)
                           .detach().to(torch.float64).cpu()
                           for chunk in torch.split(x, batch_size)])
    log_p = torch.where(torch.isnan(log_p), -math.inf, log_p)  # NaN: no density
    return (-beta_from_temperature(temperature) * energies - log_p).numpy()


def overlap_sigma(model, energy, frames, temperature: float, energies=None,
                  batch_size: int = 2048) -> float:
    """Overlap diagnostic σ: the standard deviation of ``log w = -β U - log p_θ(·|T)`` on
    samples of the target at ``T`` (held-out boundary MD frames at ``T0``).

    σ = 0 when the model equals the Boltzmann density; for log-normal weights the
    effective sample size of flow samples is ``ESS ≈ exp(-σ²)`` (σ = 1 → 37 %, σ = 2 →
    2 %), so σ says whether a model fits before anyone draws samples. Infinite when the
    model gives a frame zero density. The frames should not have been used for fitting
    (a model over-fitted to its training frames looks better on them than it is).

    Parameters
    ----------
    model, energy, frames, temperature, energies, batch_size
        As in :func:`overlap_log_weights`.

    Returns
    -------
    float
        Sample standard deviation (``ddof=1``) of the log-weights, in nats.

    Examples
    --------
    A model equal to the target (σ = 0) and one shifted by ``δ`` for a harmonic target of
    width ``s``: ``log w`` is then linear in ``x`` with standard deviation ``δ / s``.

    >>> from openmm_trade.toys import HarmonicOscillator
    >>> toy = HarmonicOscillator(spring_constant=100.0)
    >>> class Shifted:
    ...     def __init__(self, shift): self.shift = shift
    ...     def log_prob(self, x, temperature):
    ...         return toy.log_density(x - self.shift, temperature)
    >>> frames = toy.sample(20000, 300.0, seed=0)
    >>> overlap_sigma(Shifted(0.0), toy, frames, 300.0) < 1e-6  # float32 frames
    True
    >>> s = math.sqrt(toy.mean_energy(300.0) * 2 / 100.0)  # the width, k_B T / k
    >>> abs(overlap_sigma(Shifted(0.5 * s), toy, frames, 300.0) - 0.5) < 0.01
    True
    """
    log_w = overlap_log_weights(model, energy, frames, temperature, energies, batch_size)
    if not np.all(np.isfinite(log_w)):
        return math.inf
    return float(np.std(log_w, ddof=1))


def _check_angles(values, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 2:
        raise InputError(f"{name} must have shape (n, 2) (φ, ψ in radians), got {values.shape}")
    if values.shape[0] == 0:
        raise InputError(f"{name} must hold at least one (φ, ψ) pair")
    if not np.all(np.isfinite(values)) or np.abs(values).max() > math.pi + 1e-6:
        raise InputError(f"{name} must be finite angles in radians within [-π, π] "
                         "(degrees given?)")
    return values


def _check_weights(weights, n: int, name: str) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if weights.shape != (n,):
        raise InputError(f"{name} must have shape ({n},), got {weights.shape}")
    if not np.all(np.isfinite(weights)) or (weights < 0).any() or weights.sum() <= 0:
        raise InputError(f"{name} must be finite, non-negative and not all zero")
    return weights / weights.sum()


def ramachandran_kl(reference_phi_psi, model_phi_psi, model_weights=None, bins: int = 18,
                    pseudocount: float = 0.5, n_eff: float | None = None) -> float:
    """KL(reference ‖ model) of Ramachandran histograms, in nats.

    Both sets of (φ, ψ) are histogrammed on a ``bins × bins`` grid over [-π, π]²
    (18 → 20° bins). The reference histogram is the plain normalised count ``p_j``.
    The model histogram ``q_j`` is the weighted fraction of model samples in bin ``j``,
    turned into counts with the effective sample size and smoothed::

        q̃_j = (n_eff q_j + pseudocount) / (n_eff + pseudocount · bins²)

    with ``n_eff`` the Kish effective sample size ``(Σw)²/Σw²`` of ``model_weights``
    (the number of samples when unweighted) unless given. Then
    ``KL = Σ_{j: p_j > 0} p_j ln(p_j / q̃_j)``. The smoothing keeps the KL finite where
    the model has no samples; it biases identical inputs to a small positive value of
    order ``pseudocount · bins² / n_eff`` (``pseudocount=0`` gives exactly 0).

    Parameters
    ----------
    reference_phi_psi, model_phi_psi : array-like, shape (m, 2) and (n, 2)
        Dihedrals in radians (e.g. from :func:`openmm_trade.cv.ramachandran`).
    model_weights : array-like, shape (n,), optional
        Importance weights of the model samples (need not be normalised).
    bins : int
        Bins per angle.
    pseudocount : float
        Counts added to every model bin.
    n_eff : float, optional
        Effective number of model samples used to turn ``q`` into counts.

    Examples
    --------
    >>> x = np.random.default_rng(0).uniform(-np.pi, np.pi, size=(500, 2))
    >>> abs(ramachandran_kl(x, x, pseudocount=0.0)) < 1e-14
    True
    """
    reference = _check_angles(reference_phi_psi, "reference_phi_psi")
    model = _check_angles(model_phi_psi, "model_phi_psi")
    weights = _check_weights(model_weights, model.shape[0], "model_weights")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise InputError(f"bins must be a positive integer, got {bins!r}")
    if pseudocount < 0:
        raise InputError(f"pseudocount must be >= 0, got {pseudocount}")
    if n_eff is None:
        n_eff = 1.0 / float((weights ** 2).sum())
    elif n_eff <= 0:
        raise InputError(f"n_eff must be > 0, got {n_eff}")
    edges = np.linspace(-math.pi, math.pi, bins + 1)
    p = np.histogram2d(reference[:, 0], reference[:, 1], bins=(edges, edges))[0]
    p = (p / p.sum()).ravel()
    q = np.histogram2d(model[:, 0], model[:, 1], bins=(edges, edges), weights=weights)[0]
    q = (q / q.sum()).ravel()
    q_smooth = (n_eff * q + pseudocount) / (n_eff + pseudocount * bins * bins)
    support = p > 0
    with np.errstate(divide="ignore"):
        return float(np.sum(p[support] * (np.log(p[support]) - np.log(q_smooth[support]))))


def energy_wasserstein(ref_energies, model_energies, model_weights=None,
                       ref_weights=None) -> float:
    """1-D Wasserstein-1 distance (kJ/mol) between reference and weighted model energies.

    Non-finite model energies (failed evaluations) must carry zero weight and are dropped.

    Examples
    --------
    >>> energy_wasserstein([0.0, 1.0], [1.0, 2.0])
    1.0
    >>> energy_wasserstein([0.0, 1.0], [1.0, 0.0, 5.0], model_weights=[1, 1, 0])
    0.0
    """
    ref = np.asarray(ref_energies, dtype=np.float64).reshape(-1)
    model = np.asarray(model_energies, dtype=np.float64).reshape(-1)
    if ref.size == 0 or not np.all(np.isfinite(ref)):
        raise InputError("ref_energies must be a non-empty array of finite energies (kJ/mol)")
    model_w = _check_weights(model_weights, model.size, "model_weights")
    ref_w = _check_weights(ref_weights, ref.size, "ref_weights")
    finite = np.isfinite(model)
    if (model_w[~finite] > 0).any():
        raise InputError("model_energies has non-finite values with non-zero weight")
    keep = finite & (model_w > 0)
    return float(scipy.stats.wasserstein_distance(ref, model[keep], ref_w, model_w[keep]))


@dataclass(frozen=True)
class DeltaFComparison:
    """Differences model − reference of Δf(T) (kT) with their combined uncertainty.

    Attributes: ``difference`` and ``error`` (σ added in quadrature) per temperature,
    ``z_score`` = difference / error (NaN where error is 0), ``rmse`` and
    ``max_abs_difference`` over temperatures, ``within(k)`` tests |z| ≤ k everywhere.
    """

    difference: np.ndarray
    error: np.ndarray
    z_score: np.ndarray
    rmse: float
    max_abs_difference: float

    def within(self, n_sigma: float = 3.0) -> bool:
        """True when every difference is within ``n_sigma`` combined standard errors."""
        z = self.z_score[np.isfinite(self.z_score)]
        exact = ~np.isfinite(self.z_score)
        return bool(np.all(np.abs(z) <= n_sigma)
                    and np.allclose(self.difference[exact], 0.0, atol=1e-12))


def delta_f_difference(model_delta_f, reference_delta_f, model_err=None,
                       reference_err=None) -> DeltaFComparison:
    """Compare Δf(T) of the model with a reference (MBAR, exact) at the same temperatures.

    Both must be relative to the same reference temperature and in the same unit (kT).

    Examples
    --------
    >>> c = delta_f_difference([0.0, -1.0], [0.0, -1.2], [0.0, 0.1], [0.0, 0.05])
    >>> round(c.max_abs_difference, 6), c.within(3)
    (0.2, True)
    """
    model = np.asarray(model_delta_f, dtype=np.float64).reshape(-1)
    reference = np.asarray(reference_delta_f, dtype=np.float64).reshape(-1)
    if model.shape != reference.shape or model.size == 0:
        raise InputError("model_delta_f and reference_delta_f must be non-empty and of equal "
                         f"length, got {model.shape} and {reference.shape}")
    errors = [np.zeros_like(model) if e is None else np.asarray(e, np.float64).reshape(-1)
              for e in (model_err, reference_err)]
    if any(e.shape != model.shape for e in errors):
        raise InputError("model_err and reference_err must match the Δf arrays in length")
    difference = model - reference
    error = np.hypot(*errors)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(error > 0, difference / error, np.nan)
    return DeltaFComparison(difference, error, z, float(np.sqrt(np.mean(difference ** 2))),
                            float(np.max(np.abs(difference))))


def ring_closing_bonds(msys, zmatrix=None) -> np.ndarray:
    """Bonds of the topology that the Z-matrix does not place: one per ring.

    A Z-matrix places every atom by a bond to an earlier atom, so its bonds form a
    spanning tree of the bond graph; each bond left out closes a ring, and its length
    follows from the bonds, angles and torsions of the tree instead of being modelled.

    Parameters
    ----------
    msys : MolecularSystem
        The system (its topology's bonds).
    zmatrix : ZMatrix or (N, 4) table, optional
        Default :meth:`openmm_trade.ZMatrix.from_system` (the flow's own Z-matrix).

    Returns
    -------
    numpy.ndarray, shape (R, 2)
        Atom index pairs ``i < j``, sorted; ``R = 0`` for a molecule without rings.

    Examples
    --------
    >>> import openmm_trade as ot
    >>> ring_closing_bonds(ot.systems.load("alanine-dipeptide-vacuum")).shape
    (0, 2)
    >>> ring_closing_bonds(ot.systems.load("ace-pro-nme-implicit")).shape
    (1, 2)
    """
    from .zmatrix import ZMatrix

    if zmatrix is None:
        zmatrix = ZMatrix.from_system(msys)
    elif not isinstance(zmatrix, ZMatrix):
        zmatrix = ZMatrix(zmatrix, n_atoms=msys.n_atoms)
    if zmatrix.n_atoms != msys.n_atoms:
        raise InputError(f"zmatrix places {zmatrix.n_atoms} atoms but msys has {msys.n_atoms}")
    tree = {tuple(sorted(pair)) for pair in zmatrix.rows[1:, :2].tolist()}
    closing = [pair for pair in msys.bonds if pair not in tree]
    return np.array(closing, dtype=np.int64).reshape(-1, 2)


def _positions(x, n_atoms: int, name: str) -> np.ndarray:
    """(B, N, 3) float64 nm from an mdtraj.Trajectory, a tensor or an array."""
    if hasattr(x, "xyz"):
        x = x.xyz
    elif hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x.reshape(len(x), -1, 3)
    if x.ndim != 3 or x.shape[1:] != (n_atoms, 3) or len(x) == 0:
        raise InputError(f"{name} must be an mdtraj.Trajectory or positions of shape "
                         f"(B, {n_atoms}, 3) in nm with B >= 1, got shape {x.shape}")
    return x


def _bond_lengths(x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x[:, pairs[:, 0]] - x[:, pairs[:, 1]], axis=-1)


def ring_closure_deviation(samples, msys, reference, zmatrix=None) -> np.ndarray:
    """Per sample, the largest deviation of a ring-closing bond in units of its MD σ.

    For each bond of :func:`ring_closing_bonds` the mean ``μ`` and standard deviation
    ``σ`` of its length over the ``reference`` frames (boundary MD) are the yardstick; a
    sample's deviation is ``max_bonds |d - μ| / σ``. Flow samples whose torsions and
    angles are slightly off put ring-closing atoms far from each other (or on top of each
    other): deviations of tens to thousands of σ.

    Parameters
    ----------
    samples : mdtraj.Trajectory, array-like or torch.Tensor, shape (B, N, 3) or (B, 3N)
        Conformations in nm (e.g. ``WeightedTrajectory.samples``).
    msys : MolecularSystem
        The system.
    reference : mdtraj.Trajectory or array-like, shape (M, N, 3), M >= 2
        Frames that define ``μ`` and ``σ`` (boundary MD).
    zmatrix : ZMatrix or (N, 4) table, optional
        Passed to :func:`ring_closing_bonds`.

    Returns
    -------
    numpy.ndarray, shape (B,)
        ``inf`` for a sample with any non-finite coordinate (a failed sample); otherwise
        zeros for a molecule without rings.

    Examples
    --------
    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("ace-pro-nme-implicit")
    >>> md = msys.positions[None] + np.random.default_rng(0).normal(0, 0.003, (20, 26, 3))
    >>> bool((ring_closure_deviation(md[:5], msys, md) < 5).all())
    True
    """
    pairs = ring_closing_bonds(msys, zmatrix)
    x = _positions(samples, msys.n_atoms, "samples")
    ref = _positions(reference, msys.n_atoms, "reference")
    if len(ref) < 2 or not np.isfinite(ref).all():
        raise InputError(f"reference must hold at least 2 finite frames, got {len(ref)}")
    finite = np.isfinite(x).all(axis=(1, 2))
    if len(pairs) == 0:
        return np.where(finite, 0.0, np.inf)
    ref_lengths = _bond_lengths(ref, pairs)
    mu, sigma = ref_lengths.mean(0), ref_lengths.std(0)
    if (sigma <= 0).any():
        raise InputError("reference frames hold a ring-closing bond at a fixed length (σ = 0): "
                         "pass MD frames, not copies of one structure")
    with np.errstate(invalid="ignore"):
        z = np.abs(_bond_lengths(x, pairs) - mu) / sigma
    return np.where(finite, z.max(axis=1), np.inf)


def clash_fraction(samples, msys, reference, k: float = 5.0, zmatrix=None) -> float:
    """Fraction of samples with a broken ring: a ring-closing bond more than ``k`` σ off.

    See :func:`ring_closure_deviation` for ``μ``, ``σ`` and the arguments. Unweighted:
    it measures the flow's proposals, not the reweighted ensemble. 0 for a molecule
    without rings.

    Examples
    --------
    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("ace-phe-nme-implicit")
    >>> md = msys.positions[None] + np.random.default_rng(0).normal(0, 0.003, (20, 32, 3))
    >>> (i, j), = ring_closing_bonds(msys)  # CZ-CE2 closes the phenyl ring
    >>> broken = md[:4].copy()
    >>> broken[:, i] += 0.5 * (broken[:, i] - broken[:, j])  # stretch the bond by 50 %
    >>> clash_fraction(md[:4], msys, md), clash_fraction(broken, msys, md)
    (0.0, 1.0)
    """
    if not k > 0:
        raise InputError(f"k must be a positive number of standard deviations, got {k!r}")
    return float(np.mean(ring_closure_deviation(samples, msys, reference, zmatrix) > k))


def ring_closure_cost(samples, log_weights, msys, reference, k: float = 5.0,
                      zmatrix=None) -> dict | None:
    """What broken rings cost a set of importance-weighted samples.

    A sample's ring is broken when a ring-closing bond is more than ``k`` σ off its
    ``reference`` length (:func:`ring_closure_deviation`). The weights mostly discard such
    samples, so they cost ESS rather than correctness; this says how much.

    Parameters
    ----------
    samples, msys, reference, zmatrix
        As in :func:`ring_closure_deviation`.
    log_weights : array-like, shape (B,)
        The samples' log importance weights (e.g. ``WeightedTrajectory.log_weights``).
    k : float, default 5.0
        Threshold in σ.

    Returns
    -------
    dict or None
        ``None`` for a molecule without rings; else ``k``, ``median_sd`` (the median
        deviation; about 0.67 for MD frames), ``broken_fraction`` (share of the samples),
        ``broken_weight`` (normalised weight they carry) and ``ess_intact`` (ESS, as a
        fraction, of the intact samples alone: roughly the ESS a model would reach that put
        no mass on broken rings and kept the rest).

    Examples
    --------
    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("ace-phe-nme-implicit")
    >>> md = msys.positions[None] + np.random.default_rng(0).normal(0, 0.003, (20, 32, 3))
    >>> (i, j), = ring_closing_bonds(msys)
    >>> samples = md[:4].copy()
    >>> samples[:2, i] += 0.5 * (samples[:2, i] - samples[:2, j])  # break two rings
    >>> cost = ring_closure_cost(samples, [0.0, 0.0, 0.0, np.log(3)], msys, md)
    >>> [round(cost[key], 3) for key in ("broken_fraction", "broken_weight", "ess_intact")]
    [0.5, 0.333, 0.8]
    >>> ring_closure_cost(md, np.zeros(20), ot.systems.load("ace-leu-nme-implicit"), md) is None
    True
    """
    from .importance import effective_sample_size, normalized_weights

    if not k > 0:
        raise InputError(f"k must be a positive number of standard deviations, got {k!r}")
    if len(ring_closing_bonds(msys, zmatrix)) == 0:
        return None
    deviation = ring_closure_deviation(samples, msys, reference, zmatrix)
    log_weights = np.asarray(log_weights, dtype=np.float64)
    if log_weights.shape != deviation.shape:
        raise InputError(f"log_weights must have shape {deviation.shape} (one per sample), "
                         f"got {log_weights.shape}")
    intact = deviation <= k
    weights = normalized_weights(log_weights)
    return {"k": float(k), "median_sd": float(np.median(deviation)),
            "broken_fraction": float(1 - intact.mean()),
            "broken_weight": float(weights[~intact].sum()),
            "ess_intact": (effective_sample_size(log_weights[intact]) if intact.any()
                           else 0.0)}


__all__ = [
    "DeltaFComparison", "delta_f_difference", "effective_sample_size", "energy_wasserstein",
    "overlap_log_weights", "overlap_sigma", "ramachandran_kl", "ring_closing_bonds",
    "ring_closure_deviation", "ring_closure_cost", "clash_fraction",
]
