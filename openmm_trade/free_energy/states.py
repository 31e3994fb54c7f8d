"""Populations of states (regions of CV space), at one temperature or across temperatures."""


from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import mdtraj
import numpy as np

from .. import cv as cvs
from ..errors import InputError
from ..importance import scaled_weights
from ..sampling import WeightedTrajectory
from .bootstrap import _bootstrap_counts, _check_bootstrap, _std, _weighted_data
from .tables import _Table


class Populations(Mapping, _Table):
    """Weighted state populations: a mapping ``state -> (population, error)``.

    ``population`` and ``population_err`` are arrays in the order of ``states``;
    ``temperature`` is in K (``None`` for unweighted data without a temperature).
    """

    def __init__(self, states, population, population_err, temperature):
        self.states = tuple(states)
        self.population = np.asarray(population, dtype=np.float64)
        self.population_err = np.asarray(population_err, dtype=np.float64)
        self.temperature = temperature

    def columns(self) -> dict[str, np.ndarray]:
        return {"state": np.array(self.states, dtype=object), "population": self.population,
                "population_err": self.population_err}

    def __getitem__(self, state: str) -> tuple[float, float]:
        i = self.states.index(state)
        return float(self.population[i]), float(self.population_err[i])

    def __iter__(self):
        return iter(self.states)

    def __len__(self) -> int:
        return len(self.states)

    def __repr__(self) -> str:
        body = ", ".join(f"{s}: {p:.3f} ± {e:.3f}" for s, p, e in
                         zip(self.states, self.population, self.population_err, strict=True))
        return f"Populations({body})"


def state_mask(name: str, state, values: np.ndarray) -> np.ndarray:
    """Boolean membership of each sample in ``state``: a callable on the CV values, or one
    box (``(lo, hi)`` per CV dimension) or a list of boxes, as in :func:`populations`.

    >>> import numpy as np
    >>> state_mask("low", [(-1.0, 0.0)], np.array([[-0.5], [0.5]])).tolist()
    [True, False]
    """
    if callable(state):
        mask = np.asarray(state(values), dtype=bool).reshape(-1)
        if mask.shape != (values.shape[0],):
            raise InputError(f"states[{name!r}] must return a boolean array of shape "
                             f"({values.shape[0]},), got {mask.shape}")
        return mask
    boxes = np.asarray(state, dtype=np.float64)
    if boxes.ndim == 2:
        boxes = boxes[None]
    if boxes.ndim != 3 or boxes.shape[1:] != (values.shape[1], 2):
        raise InputError(f"states[{name!r}] must be a callable, a box ((lo, hi) per CV "
                         f"dimension, {values.shape[1]} here) or a list of boxes, got "
                         f"shape {boxes.shape}")
    mask = np.zeros(values.shape[0], dtype=bool)
    for box in boxes:
        lo, hi = box[:, 0], box[:, 1]
        upper = (values < hi) | ((hi >= math.pi) & (values == hi))
        mask |= np.all((values >= lo) & upper, axis=1)
    return mask


def populations(data, states: Mapping[str, Callable | Sequence] | None = None, cv=None,
                n_bootstrap: int = 200, seed: int | None = None,
                temperature: float | None = None) -> Populations:
    """Weighted populations of user-defined states, with bootstrap errors.

    Parameters
    ----------
    data : WeightedTrajectory, mdtraj.Trajectory or numpy.ndarray
        Weighted samples (plain trajectories/arrays weigh frames equally).
    states : dict, optional
        ``name -> state``; a state is a callable ``values (n, k) -> bool mask (n,)`` or a
        box ``[(lo, hi), ...]`` (one interval per CV dimension, half-open ``[lo, hi)``,
        closed at π) or a list of boxes (their union). Default
        :data:`openmm_trade.cv.RAMACHANDRAN_STATES`.
    cv : callable or array-like, optional
        The CV the states are defined on. Default: :data:`openmm_trade.cv.ramachandran`
        for molecular data, the flattened samples ``(n, d)`` otherwise.
    n_bootstrap, seed
        Bootstrap replicates and seed.
    temperature : float, optional
        Label for unweighted data.

    Returns
    -------
    Populations
        Mapping ``state -> (population, error)``; states may overlap or leave samples out.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[-1.0], [1.0], [2.0], [3.0]])
    >>> pops = populations(x, {"left": [(-10, 0)], "right": lambda v: v[:, 0] > 0},
    ...                    n_bootstrap=10, seed=0)
    >>> pops["left"][0], pops["right"][0]
    (0.25, 0.75)
    """
    log_weights, temperature, lineages = _weighted_data(data, temperature)
    n_bootstrap = _check_bootstrap(n_bootstrap)
    if states is None:
        states = cvs.RAMACHANDRAN_STATES
    if not isinstance(states, Mapping) or not states:
        raise InputError(f"states must be a non-empty dict name -> state, got {states!r}")
    if cv is None:
        molecular = isinstance(data, mdtraj.Trajectory) or (
            isinstance(data, WeightedTrajectory) and data.topology is not None)
        samples = data.samples if isinstance(data, WeightedTrajectory) else data
        cv = cvs.ramachandran if molecular else np.asarray(samples).reshape(len(log_weights), -1)
    values = cvs.evaluate(cv, data)
    w, _ = scaled_weights(log_weights)
    if not (w > 0).any():
        raise InputError("data has no sample with non-zero weight")
    masks = np.stack([state_mask(name, s, values) for name, s in states.items()], axis=1)
    masks = masks.astype(np.float64)
    population = (w @ masks) / w.sum()
    rng = np.random.default_rng(seed)
    replicates = np.concatenate([((c * w) @ masks) / (c * w).sum(-1, keepdims=True)
                                 for c in _bootstrap_counts(rng, lineages, n_bootstrap)])
    return Populations(states.keys(), population, _std(replicates), temperature)


@dataclass
class PopulationProfile(_Table):
    """Populations across temperature: ``population[i, j]`` of state ``j`` at
    ``temperature[i]`` with ``population_err``. CSV columns: ``temperature`` then
    ``<state>`` and ``<state>_err`` per state."""

    temperature: np.ndarray
    states: tuple
    population: np.ndarray
    population_err: np.ndarray

    def columns(self) -> dict[str, np.ndarray]:
        columns = {"temperature": self.temperature}
        for j, state in enumerate(self.states):
            columns[state] = self.population[:, j]
            columns[f"{state}_err"] = self.population_err[:, j]
        return columns

    @classmethod
    def from_csv(cls, path) -> PopulationProfile:
        """Read a table written by :meth:`to_csv`."""
        columns = cls._read_csv_columns(path)
        states = tuple(name for name in columns if name != "temperature"
                       and not name.endswith("_err"))
        return cls(columns["temperature"], states,
                   np.stack([columns[s] for s in states], axis=1),
                   np.stack([columns[f"{s}_err"] for s in states], axis=1))


def populations_vs_temperature(trajectories: Sequence, states=None, cv=None,
                               n_bootstrap: int = 200, seed: int | None = None,
                               temperatures: Sequence[float] | None = None) -> PopulationProfile:
    """:func:`populations` for several trajectories (one per temperature).

    ``temperatures`` labels unweighted trajectories (reference MD); weighted ones carry
    their own. Rows keep the order given.

    Examples
    --------
    >>> import numpy as np
    >>> data = [np.array([[-1.0], [1.0]]), np.array([[1.0], [1.0]])]
    >>> table = populations_vs_temperature(data, {"right": [(0, 10)]}, n_bootstrap=5,
    ...                                    temperatures=[300, 400], seed=0)
    >>> table.population[:, 0].tolist()
    [0.5, 1.0]
    """
    trajectories = list(trajectories)
    if not trajectories:
        raise InputError("trajectories must be a non-empty sequence")
    if temperatures is None:
        temperatures = [None] * len(trajectories)
    elif len(temperatures) != len(trajectories):
        raise InputError(f"temperatures must have one entry per trajectory "
                         f"({len(trajectories)}), got {len(temperatures)}")
    rngs = np.random.default_rng(seed).spawn(len(trajectories))
    tables = [populations(data, states, cv, n_bootstrap, rng, t)
              for data, rng, t in zip(trajectories, rngs, temperatures, strict=True)]
    if any(table.temperature is None for table in tables):
        raise InputError("temperatures are required for unweighted trajectories")
    return PopulationProfile(np.array([t.temperature for t in tables], dtype=np.float64),
                             tables[0].states, np.stack([t.population for t in tables]),
                             np.stack([t.population_err for t in tables]))
