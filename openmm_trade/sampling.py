"""Importance-weighted samples from a temperature-conditioned model: ``WeightedTrajectory``.

A model ``p_θ(x | T)`` proposes conformations; each sample gets the importance log-weight

    log w(x) = -β U(x) - log p_θ(x | T),      β = 1 / (k_B T)

so that weighted averages are Boltzmann averages at T. Failed energy evaluations are
``+inf`` (zero weight) and counted in ``n_failed``; a non-finite ``log p`` is a failure too.
The effective sample size is reported as a fraction, ``ESS = (Σw)² / (n Σw²)``.

Files (``WeightedTrajectory.save``) are HDF5: for molecules a standard mdtraj HDF5
trajectory (readable by ``mdtraj.load``) with an extra group ``/openmm_trade`` holding
energies, ``log p`` and metadata; for non-molecular models the samples live in that group.

Example
-------
>>> import numpy as np
>>> wt = WeightedTrajectory(np.zeros((4, 1)), energies=[0.0, 1.0, 2.0, np.inf],
...                         log_prob=[0.0, 0.0, 0.0, 0.0], temperature=300.0)
>>> wt.n_failed, round(float(wt.weights.sum()), 12)
(1, 1.0)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import mdtraj
import numpy as np
import torch

from .errors import InputError
from .files import atomic_write_path
from .importance import effective_sample_size, log_mean_exp, normalized_weights
from .model import check_model
from .progress import shown
from .units import KB, check_temperature

PathLike = str | os.PathLike

#: Name of the HDF5 group that holds the weights and metadata.
GROUP = "openmm_trade"
#: Version of the file layout written by :meth:`WeightedTrajectory.save`.
FORMAT_VERSION = 1
_FORMAT_NAME = "openmm_trade.WeightedTrajectory"


def log_importance_weights(energies, log_prob, temperature: float) -> np.ndarray:
    """``log w = -U / (k_B T) - log p`` (float64); ``-inf`` where either input is not finite.

    >>> log_importance_weights([0.0, np.nan], [-1.0, 0.0], 300.0).tolist()
    [1.0, -inf]
    """
    energies = np.asarray(energies, dtype=np.float64)
    log_prob = np.asarray(log_prob, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        log_w = -energies / (KB * temperature) - log_prob
    log_w[~(np.isfinite(energies) & np.isfinite(log_prob))] = -np.inf
    return log_w


def systematic_resample(weights, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` draws by systematic resampling of normalised ``weights``.

    One uniform offset ``u ~ U(0, 1/n)``; draw ``i`` takes the sample whose cumulative
    weight interval contains ``u + i/n``. Unbiased, with lower variance than multinomial.

    >>> systematic_resample([0.5, 0.0, 0.5], 4, np.random.default_rng(0)).tolist()
    [0, 0, 2, 2]
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.sum() <= 0:
        raise InputError("cannot resample: every weight is zero (all samples failed?)")
    cumulative = np.cumsum(weights / weights.sum())
    positions = (rng.uniform() + np.arange(n)) / n
    return np.minimum(np.searchsorted(cumulative, positions, side="right"), len(weights) - 1)


def _check_clip(clip_log_weights) -> float | None:
    if clip_log_weights is None:
        return None
    value = float(clip_log_weights)
    if not 0.0 < value <= 1.0:
        raise InputError("clip_log_weights must be None or a quantile in (0, 1], "
                         f"got {clip_log_weights!r}")
    return value


class WeightedTrajectory:
    """Samples at one temperature with importance weights for the Boltzmann distribution.

    Parameters
    ----------
    samples : array-like, shape (n, *event_shape)
        Conformations (nm, ``(n, N, 3)`` for molecules) or toy samples. Molecular samples
        are stored as float32, the precision of ``mdtraj``.
    energies : array-like, shape (n,)
        Potential energies in kJ/mol; non-finite values mark failed evaluations.
    log_prob : array-like, shape (n,)
        Model log-densities ``log p_θ(x | T)`` of the samples.
    temperature : float
        Temperature in K.
    topology : mdtraj.Topology, optional
        Makes the samples a molecular trajectory (``trajectory``, ``resample`` return
        ``mdtraj.Trajectory`` objects). Without it ``trajectory`` is ``None``.
    clip_log_weights : float, optional
        Off by default. A quantile ``q`` in (0, 1]: log-weights above the ``q``-quantile
        of the finite log-weights are set to it (truncated importance sampling; biased,
        lower variance). The number clipped is reported in ``n_clipped`` and ``summary()``.
    metadata : dict, optional
        JSON-serialisable information saved with the file (model, seed, ...).
    lineages : array-like of int, shape (n,), optional
        The independent draw each sample descends from. Refinement resamples, so several
        samples can share one flow draw (SMC: its "Eve" index) and are then correlated;
        bootstrap errors (:mod:`openmm_trade.free_energy`) resample whole lineages.
        Default: every sample is its own draw (plain importance sampling).

    Attributes
    ----------
    log_weights : numpy.ndarray
        ``-U/(k_B T) - log p`` (float64, after optional clipping); ``-inf`` for failures.
    weights : numpy.ndarray
        Normalised weights (sum 1).
    ess : float
        Effective sample size as a fraction of ``n``, ``(Σw)² / (n Σw²)``.
    n_failed : int
        Samples with a non-finite energy or log-density (weight zero).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(100, 2))
    >>> wt = WeightedTrajectory(x, energies=np.zeros(100), log_prob=np.zeros(100),
    ...                         temperature=300.0)
    >>> wt.ess, wt.trajectory is None, wt.resample(10, seed=1).shape
    (1.0, True, (10, 2))
    """

    def __init__(self, samples, energies, log_prob, temperature: float, topology=None,
                 clip_log_weights: float | None = None, metadata: dict | None = None,
                 lineages=None):
        self.temperature = check_temperature(temperature)
        self.topology = topology
        if topology is not None and not isinstance(topology, mdtraj.Topology):
            raise InputError("topology must be an mdtraj.Topology or None, "
                             f"got {type(topology).__name__}")
        energies = np.array(energies, dtype=np.float64).reshape(-1)
        log_prob = np.array(log_prob, dtype=np.float64).reshape(-1)
        if energies.shape != log_prob.shape:
            raise InputError(f"energies and log_prob must have the same shape (n,), got "
                             f"{energies.shape} and {log_prob.shape}")
        failed = ~(np.isfinite(energies) & np.isfinite(log_prob))
        energies[failed] = np.inf
        self.energies = energies
        self.log_prob = log_prob
        self.n_failed = int(failed.sum())
        self.lineages = self._check_lineages(lineages)
        self.clip_log_weights = _check_clip(clip_log_weights)
        self.metadata = dict(metadata or {})
        self._source: Path | None = None
        self._samples = None
        self._trajectory = None
        if samples is not None:
            self._samples = self._check_samples(samples)
        self.unclipped_log_weights = log_importance_weights(energies, log_prob, self.temperature)
        self.log_weights, self.n_clipped, self.clip_threshold = self._clip(
            self.unclipped_log_weights)
        self.weights = normalized_weights(self.log_weights)
        self.ess = effective_sample_size(self.log_weights)

    # ------------------------------------------------------------------ construction helpers
    def _check_lineages(self, lineages) -> np.ndarray:
        n = len(self.energies)
        if lineages is None:
            return np.arange(n)
        lineages = np.asarray(lineages)
        if lineages.shape != (n,) or not np.issubdtype(lineages.dtype, np.integer):
            raise InputError(f"lineages must be integers of shape ({n},), got "
                             f"{lineages.dtype} {lineages.shape}")
        return lineages.astype(np.int64)

    @property
    def n_lineages(self) -> int:
        """Number of distinct independent draws among the samples (:attr:`lineages`)."""
        return int(len(np.unique(self.lineages)))

    @property
    def lineage_ess(self) -> float:
        """ESS counted over independent draws, as a fraction of ``n``: the Kish ESS of the
        lineages' total weights. Equal to :attr:`ess` without refinement; after SMC it says
        how many of the flow's draws the refined samples really rest on (copies of one
        draw are not independent samples, however many of them there are).

        >>> import numpy as np
        >>> wt = WeightedTrajectory(np.zeros((4, 1)), np.zeros(4), np.zeros(4), 300.0,
        ...                         lineages=[0, 0, 0, 1])
        >>> wt.ess, wt.lineage_ess
        (1.0, 0.4)
        """
        _, index = np.unique(self.lineages, return_inverse=True)
        totals = np.bincount(index, weights=self.weights)
        return float(totals.sum() ** 2 / (len(self) * (totals ** 2).sum()))

    def _check_samples(self, samples) -> np.ndarray:
        if isinstance(samples, torch.Tensor):
            samples = samples.detach().cpu().numpy()
        samples = np.asarray(samples)
        if samples.ndim < 1 or samples.shape[0] != self.energies.shape[0]:
            raise InputError(f"samples must have shape (n, ...) with n = {len(self.energies)} "
                             f"(the number of energies), got {samples.shape}")
        if self.topology is not None:
            expected = (self.topology.n_atoms, 3)
            if samples.shape[1:] != expected:
                raise InputError(f"molecular samples must have shape (n, {expected[0]}, 3) nm, "
                                 f"got {samples.shape}")
            samples = samples.astype(np.float32, copy=False)
        return samples

    def _clip(self, log_weights):
        if self.clip_log_weights is None:
            return log_weights, 0, None
        finite = np.isfinite(log_weights)
        if not finite.any():
            return log_weights, 0, None
        threshold = float(np.quantile(log_weights[finite], self.clip_log_weights))
        clipped = finite & (log_weights > threshold)
        return np.where(clipped, threshold, log_weights), int(clipped.sum()), threshold

    # ------------------------------------------------------------------ data
    def __len__(self) -> int:
        return int(self.energies.shape[0])

    @property
    def n(self) -> int:
        """Number of samples drawn (failed ones included)."""
        return len(self)

    @property
    def samples(self) -> np.ndarray:
        """Samples as a numpy array ``(n, *event_shape)`` (loaded from file on first use)."""
        if self._samples is None:
            self._samples = _read_samples(self._source)[0]
        return self._samples

    @property
    def xyz(self) -> np.ndarray:
        """Alias of :attr:`samples` (nm for molecules)."""
        return self.samples

    @property
    def trajectory(self) -> mdtraj.Trajectory | None:
        """The samples as an ``mdtraj.Trajectory`` (unweighted order), ``None`` without topology."""
        if self.topology is None:
            return None
        if self._trajectory is None:
            self._trajectory = mdtraj.Trajectory(self.samples, self.topology)
        return self._trajectory

    @property
    def beta(self) -> float:
        """β = 1/(k_B T) in mol/kJ."""
        return 1.0 / (KB * self.temperature)

    @property
    def log_partition_estimate(self) -> float:
        """``ln Z(β) ≈ ln mean(w)``, the importance-sampling estimate (``-f(β)``)."""
        return log_mean_exp(self.log_weights)

    @property
    def refinement(self) -> dict | None:
        """What :mod:`openmm_trade.refine` recorded (history, ``ln Z`` error, distinct
        ancestors, force evaluations), or ``None`` for plain importance sampling.

        For refined trajectories ``log_prob`` holds the effective proposal log-density
        ``-βU - log w``, so that :attr:`weights` are the SMC weights and
        :attr:`log_partition_estimate` is the SMC estimate of ``ln Z``.
        """
        return self.metadata.get("refinement")

    @property
    def overlap_sigma(self) -> float | None:
        """The model's overlap σ at its T0 (std of the log-weights on held-out boundary
        frames, :func:`openmm_trade.metrics.overlap_sigma`; ``ESS ≈ exp(-σ²)``), when the
        model recorded one in training; ``None`` otherwise."""
        return self.metadata.get("model_overlap_sigma")

    @property
    def log_partition_error(self) -> float | None:
        """Standard error of :attr:`log_partition_estimate` recorded by a refinement
        (independent SMC islands), ``None`` for plain importance sampling."""
        refinement = self.refinement
        if refinement is None:
            return None
        value = refinement.get("log_partition_error")
        return math.nan if value is None else float(value)

    def weighted_mean(self, values) -> np.ndarray:
        """Self-normalised importance-sampling average of ``values`` (shape ``(n, ...)``)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape[:1] != (len(self),):
            raise InputError(f"values must have shape ({len(self)}, ...), got {values.shape}")
        keep = self.weights > 0
        return np.tensordot(self.weights[keep], values[keep], axes=1)

    # ------------------------------------------------------------------ resampling
    def resample(self, n: int | None = None, seed: int | None = None):
        """Draw an unweighted ensemble by systematic resampling.

        Parameters
        ----------
        n : int, optional
            Number of frames, default ``len(self)``.
        seed : int, optional
            Seed of the uniform offset.

        Returns
        -------
        mdtraj.Trajectory or numpy.ndarray
            A trajectory for molecules, otherwise an array ``(n, *event_shape)``.
        """
        n = len(self) if n is None else int(n)
        if n < 1:
            raise InputError(f"n must be a positive number of frames, got {n}")
        index = systematic_resample(self.weights, n, np.random.default_rng(seed))
        if self.topology is not None:
            return self.trajectory[index]
        return self.samples[index]

    # ------------------------------------------------------------------ combination
    @classmethod
    def concatenate(cls, trajectories: Sequence[WeightedTrajectory]) -> WeightedTrajectory:
        """Join draws from the same model at the same temperature into one.

        Temperatures, topologies (or sample shapes) and clipping settings must agree. Clipping
        is re-applied to the union.
        """
        trajectories = list(trajectories)
        if not trajectories or not all(isinstance(t, cls) for t in trajectories):
            raise InputError("trajectories must be a non-empty sequence of WeightedTrajectory")
        first = trajectories[0]
        for other in trajectories[1:]:
            if not math.isclose(other.temperature, first.temperature, rel_tol=1e-12):
                raise InputError("trajectories must share one temperature, got "
                                 f"{first.temperature} K and {other.temperature} K")
            if (other.topology is None) != (first.topology is None) or (
                    first.topology is not None and other.topology != first.topology):
                raise InputError("trajectories must share one topology")
            if other.samples.shape[1:] != first.samples.shape[1:]:
                raise InputError("trajectories must share the sample shape, got "
                                 f"{first.samples.shape[1:]} and {other.samples.shape[1:]}")
            if other.clip_log_weights != first.clip_log_weights:
                raise InputError("trajectories must share clip_log_weights")
        metadata = dict(first.metadata, concatenated=len(trajectories))
        # one run's refinement record (its ln Z error, history) does not describe the union;
        # the union's weights still average the runs' ln Z estimates (see refinement)
        metadata.pop("refinement", None)
        offsets = np.cumsum([0] + [len(t) for t in trajectories[:-1]])  # lineages stay apart
        return cls(np.concatenate([t.samples for t in trajectories]),
                   np.concatenate([t.energies for t in trajectories]),
                   np.concatenate([t.log_prob for t in trajectories]),
                   first.temperature, topology=first.topology,
                   clip_log_weights=first.clip_log_weights, metadata=metadata,
                   lineages=np.concatenate([t.lineages + o for t, o in
                                            zip(trajectories, offsets, strict=True)]))

    # ------------------------------------------------------------------ files
    def save(self, path: PathLike) -> Path:
        """Write the samples, energies, log-densities and metadata to HDF5 atomically.

        Molecular files are ordinary mdtraj HDF5 trajectories (``mdtraj.load(path)``
        works) with the weights in the extra group ``/openmm_trade``.
        """
        path = Path(path)
        with atomic_write_path(path) as tmp, _Writer(tmp, self.topology, self.temperature,
                                                      self.clip_log_weights, self.metadata) as w:
            w.append(self.samples, self.energies, self.log_prob)
            w.lineages = self.lineages
        return path

    @classmethod
    def load(cls, path: PathLike, lazy: bool = False) -> WeightedTrajectory:
        """Read a file written by :meth:`save` or by :func:`sample` with ``output``.

        With ``lazy=True`` the samples stay on disk until first accessed; weights and
        energies are read at once.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"path: no such file {path}")
        with h5py.File(path, "r") as handle:
            if GROUP not in handle or handle[GROUP].attrs.get("format") != _FORMAT_NAME:
                raise InputError(f"path: {path} is not a WeightedTrajectory file "
                                 f"(no /{GROUP} group)")
            group = handle[GROUP]
            energies = group["energies"][()]
            log_prob = group["log_prob"][()]
            lineages = group["lineages"][()] if "lineages" in group else None
            attrs = dict(group.attrs)
        clip = float(attrs["clip_log_weights"])
        topology = None
        samples = None
        if attrs["molecular"]:
            with mdtraj.formats.HDF5TrajectoryFile(str(path), "r") as reader:
                topology = reader.topology
        if not lazy:
            samples = _read_samples(path)[0]
        wt = cls(samples, energies, log_prob, float(attrs["temperature"]), topology=topology,
                 clip_log_weights=None if math.isnan(clip) else clip,
                 metadata=json.loads(attrs["metadata"]), lineages=lineages)
        wt._source = path
        return wt

    # ------------------------------------------------------------------ reports
    def summary(self) -> str:
        """One line: T, n, ESS, failures, clipping and (refined) the ESS over lineages."""
        text = (f"T = {self.temperature:g} K, n = {len(self)}, ESS = {self.ess:.1%}, "
                f"failed = {self.n_failed}")
        if self.clip_log_weights is not None:
            text += (f", log-weights clipped at the {self.clip_log_weights:g} quantile "
                     f"({self.n_clipped} clipped)")
        if self.refinement is not None:
            text += f", ESS over the {self.n_lineages} lineages = {self.lineage_ess:.1%}"
        if self.overlap_sigma is not None:
            text += f", model overlap σ at T0 = {self.overlap_sigma:.2f}"
        return text

    def __repr__(self) -> str:
        return f"WeightedTrajectory({self.summary()})"


class _Writer:
    """Append chunks of samples to a WeightedTrajectory HDF5 file (molecular or not)."""

    def __init__(self, path: Path, topology, temperature: float, clip, metadata: dict):
        self.path = path
        self.topology = topology
        self.attrs = {
            "format": _FORMAT_NAME, "version": FORMAT_VERSION, "temperature": temperature,
            "molecular": topology is not None,
            "clip_log_weights": math.nan if clip is None else clip,
            "metadata": json.dumps(metadata),
        }
        self.energies: list[np.ndarray] = []
        self.log_prob: list[np.ndarray] = []
        #: lineages of the samples (None: each its own draw, nothing written)
        self.lineages: np.ndarray | None = None
        self._mdtraj = None
        self._h5 = None

    def __enter__(self) -> _Writer:
        if self.topology is not None:
            self._mdtraj = mdtraj.formats.HDF5TrajectoryFile(str(self.path), "w",
                                                              force_overwrite=True)
            self._mdtraj.topology = self.topology
        else:
            self._h5 = h5py.File(self.path, "w")
        return self

    def append(self, samples, energies, log_prob) -> None:
        samples = np.asarray(samples)
        if self._mdtraj is not None:
            self._mdtraj.write(coordinates=samples.astype(np.float32, copy=False))
        else:
            if f"{GROUP}/samples" not in self._h5:
                self._h5.create_dataset(f"{GROUP}/samples", data=samples, chunks=True,
                                        maxshape=(None, *samples.shape[1:]))
            else:
                data = self._h5[f"{GROUP}/samples"]
                data.resize(data.shape[0] + samples.shape[0], axis=0)
                data[-samples.shape[0]:] = samples
        self.energies.append(np.asarray(energies, dtype=np.float64))
        self.log_prob.append(np.asarray(log_prob, dtype=np.float64))

    def __exit__(self, *exc) -> None:
        if self._mdtraj is not None:
            self._mdtraj.close()
            self._h5 = h5py.File(self.path, "a")
        try:
            if exc[0] is None:
                group = self._h5.require_group(GROUP)
                group.create_dataset("energies", data=np.concatenate(self.energies or [[]]))
                group.create_dataset("log_prob", data=np.concatenate(self.log_prob or [[]]))
                if self.lineages is not None:
                    group.create_dataset("lineages", data=self.lineages)
                group.attrs.update(self.attrs)
        finally:
            self._h5.close()


def _read_samples(path: Path) -> tuple[np.ndarray, mdtraj.Topology | None]:
    """Samples (and topology) from a WeightedTrajectory file."""
    with h5py.File(path, "r") as handle:
        if f"{GROUP}/samples" in handle:
            return handle[f"{GROUP}/samples"][()], None
    trajectory = mdtraj.load_hdf5(str(path))
    return trajectory.xyz, trajectory.topology


class _RunningESS:
    """ESS fraction of a growing set of log-weights from running sums (for progress bars)."""

    def __init__(self) -> None:
        self.shift, self.s1, self.s2, self.n = -math.inf, 0.0, 0.0, 0

    def add(self, log_weights: np.ndarray) -> None:
        self.n += log_weights.size
        finite = log_weights[np.isfinite(log_weights)]
        if finite.size == 0:
            return
        shift = max(self.shift, float(finite.max()))
        scale = math.exp(self.shift - shift) if math.isfinite(self.shift) else 0.0
        w = np.exp(finite - shift)
        self.s1 = self.s1 * scale + float(w.sum())
        self.s2 = self.s2 * scale ** 2 + float((w ** 2).sum())
        self.shift = shift

    @property
    def fraction(self) -> float:
        return self.s1 ** 2 / (self.n * self.s2) if self.s2 > 0 else 0.0


def sample(model, energy, temperature: float, n: int, chunk_size: int = 1000,
           output: PathLike | None = None, seed: int | None = None, quiet: bool = False,
           clip_log_weights: float | None = None, refine=None) -> WeightedTrajectory:
    """Draw ``n`` samples at ``temperature`` from ``model`` and weight them with ``energy``.

    Samples are drawn and evaluated in chunks under ``torch.no_grad()``, so memory stays
    bounded; with ``output`` each chunk is streamed to an HDF5 file (written atomically at
    the end) and the returned object reads the samples back lazily.

    Parameters
    ----------
    model
        A model of the protocol :class:`openmm_trade.model.BoltzmannModel` (only
        ``sample(n, T, generator=None) -> (x, log_p)`` is used; ``log_prob`` too with
        ``refine``).
        Molecular models expose ``.system`` (a ``MolecularSystem``) and give trajectories.
    energy : openmm_trade.energy.Energy
        Batched potential energy in kJ/mol (``+inf`` for failed evaluations).
    temperature : float
        Target temperature in K.
    n : int
        Number of samples.
    chunk_size : int
        Samples per call to ``model.sample`` and ``energy``.
    output : path, optional
        Stream the samples to this ``.h5`` file (for ~10⁶ samples).
    seed : int, optional
        Seed of the draw: passed as a seeded ``torch.Generator`` to ``model.sample``, and
        also set in a forked global RNG state (the caller's global state is untouched).
        The same seed gives the same samples.
    quiet : bool
        No progress bar (also quiet when stderr is not a TTY).
    clip_log_weights : float, optional
        See :class:`WeightedTrajectory` (off by default).
    refine : bool or openmm_trade.SMC, optional
        ``True`` or an :class:`~openmm_trade.refine.SMC` of options: refine the model's
        samples with the force field by sequential Monte Carlo
        (:func:`openmm_trade.refine.smc`; ``chunk_size`` sets its batch size unless the
        options do). Not combined with ``clip_log_weights``.

    Returns
    -------
    WeightedTrajectory

    Examples
    --------
    >>> from openmm_trade.flow import ConditionalFlow, Domain
    >>> from openmm_trade.toys import HarmonicOscillator
    >>> energy = HarmonicOscillator(spring_constant=100.0, dim=2)
    >>> model = ConditionalFlow([Domain.real(-1.0, 1.0)] * 2, reference_temperature=300.0,
    ...                         temperature_range=(300.0, 600.0), hidden=16, n_blocks=1, seed=0)
    >>> wt = sample(model, energy, temperature=450.0, n=1000, seed=0, quiet=True)
    >>> len(wt), wt.n_failed, 0.0 < wt.ess <= 1.0
    (1000, 0, True)
    """
    check_model(model, "sample")
    temperature = check_temperature(temperature)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    event_shape = tuple(getattr(model, "event_shape", ()))
    if tuple(energy.event_shape) != event_shape:
        raise InputError(f"energy.event_shape {tuple(energy.event_shape)} does not match "
                         f"model.event_shape {event_shape}")
    system = getattr(model, "system", None)
    topology = getattr(system, "mdtraj_topology", None)
    clip = _check_clip(clip_log_weights)
    if refine is not None and refine is not False:
        return _refined(model, energy, temperature, int(n), chunk_size, output, seed, quiet,
                        clip, refine)
    metadata = {"n": int(n), "seed": seed, "model": type(model).__name__,
                "energy": type(energy).__name__, **_model_overlap(model)}

    from tqdm.auto import tqdm

    progress = tqdm(total=int(n), desc=f"sampling {temperature:g} K", unit="samples",
                    disable=not shown(quiet))
    samples, energies, log_probs = [], [], []
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))
        generator = None
        if seed is not None:
            torch.manual_seed(seed)  # for models that also draw from torch's global generator
            generator = torch.Generator(device=getattr(model, "device", "cpu"))
            generator.manual_seed(int(seed))
        writer = None
        if output is not None:
            tmp = stack.enter_context(atomic_write_path(output))
            writer = stack.enter_context(_Writer(tmp, topology, temperature, clip, metadata))
        stack.enter_context(torch.no_grad())
        stack.callback(progress.close)
        done = failed = 0
        running = _RunningESS()
        while done < n:
            m = min(int(chunk_size), int(n) - done)
            x, log_p = model.sample(m, temperature, generator=generator)
            u = energy(x).detach().cpu().numpy().astype(np.float64)
            x = x.detach().cpu().numpy()
            log_p = log_p.detach().cpu().numpy().astype(np.float64)
            if writer is not None:
                writer.append(x, u, log_p)
            else:
                samples.append(x)
            energies.append(u)
            log_probs.append(log_p)
            done += m
            failed += int((~np.isfinite(u)).sum())
            running.add(log_importance_weights(u, log_p, temperature))
            progress.update(m)
            progress.set_postfix(ESS=f"{running.fraction:.1%}", failed=failed)
    energies, log_probs = np.concatenate(energies), np.concatenate(log_probs)
    if output is not None:
        wt = WeightedTrajectory(None, energies, log_probs, temperature, topology=topology,
                                clip_log_weights=clip, metadata=metadata)
        wt._source = Path(output)
        return wt
    return WeightedTrajectory(np.concatenate(samples), energies, log_probs, temperature,
                              topology=topology, clip_log_weights=clip, metadata=metadata)


def _model_overlap(model) -> dict:
    """``{"model_overlap_sigma": σ}`` when the model's metadata holds a finite σ, else ``{}``."""
    sigma = (getattr(model, "metadata", None) or {}).get("overlap_sigma")
    return {} if sigma is None or not math.isfinite(sigma) else {"model_overlap_sigma": sigma}


def _refined(model, energy, temperature, n, chunk_size, output, seed, quiet, clip, refine):
    """:func:`sample` with ``refine``: SMC, then optionally written to ``output``."""
    from .refine import SMC, check_options, smc

    options = check_options(refine)
    if clip is not None:
        raise InputError("clip_log_weights must be None with refine (SMC weights are not "
                         f"clipped), got {clip!r}")
    if refine is True:
        options = SMC(chunk_size=int(chunk_size))
    wt = smc(model, energy, temperature, n, options=options, seed=seed, quiet=quiet)
    wt.metadata.update(_model_overlap(model))
    if output is not None:
        wt.save(output)
    return wt


__all__ = [
    "WeightedTrajectory", "atomic_write_path", "log_importance_weights", "normalized_weights",
    "sample", "systematic_resample",
]
