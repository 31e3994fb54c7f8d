"""Collective variables (CVs): backbone φ/ψ, dihedrals and any callable on mdtraj.

A CV is anything that maps an ``mdtraj.Trajectory`` (or, for non-molecular models, the
sample array) to an array of shape ``(n,)`` or ``(n, k)``. :class:`CollectiveVariable`
adds names, units and a natural range (used as the default histogram range), e.g. the
periodic range [-π, π] of dihedrals. Angles are in radians throughout.

Example
-------
>>> import openmm_trade as ot, mdtraj
>>> msys = ot.systems.load("alanine-dipeptide-vacuum")
>>> traj = mdtraj.Trajectory(msys.positions[None], msys.mdtraj_topology)
>>> ramachandran(traj).shape
(1, 2)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import mdtraj
import numpy as np

from .errors import InputError
from .topology import phi_psi_pairs

_DEG = math.pi / 180.0

#: Ramachandran basins of alanine dipeptide as boxes on (φ, ψ) in radians. A state is a
#: list of boxes ``((φ_lo, φ_hi), (ψ_lo, ψ_hi))``; a sample belongs to the state when it
#: lies in any of its boxes (half-open intervals ``[lo, hi)``, the last ψ box closed at π).
#: Together the three states cover the whole torus without overlap:
#:
#: * ``C7eq/beta``: φ ∈ [-180°, 0°), ψ ∈ [50°, 180°] ∪ [-180°, -150°)  (extended, PII, C7eq)
#: * ``alphaR``:    φ ∈ [-180°, 0°), ψ ∈ [-150°, 50°)                  (right-handed helix)
#: * ``alphaL/C7ax``: φ ∈ [0°, 180°], any ψ                            (left-handed, C7ax)
RAMACHANDRAN_STATES: dict[str, list] = {
    "C7eq/beta": [((-math.pi, 0.0), (50 * _DEG, math.pi)),
                  ((-math.pi, 0.0), (-math.pi, -150 * _DEG))],
    "alphaR": [((-math.pi, 0.0), (-150 * _DEG, 50 * _DEG))],
    "alphaL/C7ax": [((0.0, math.pi), (-math.pi, math.pi))],
}


class CollectiveVariable:
    """A named CV: ``function(trajectory, **options) -> (n,) or (n, k)`` array.

    Parameters
    ----------
    function : callable
        Maps an ``mdtraj.Trajectory`` to an array.
    names : tuple of str
        One label per output column (used in plots).
    range : tuple of (low, high) pairs, optional
        Natural range per column, the default histogram range.
    unit : str
        Unit label, e.g. ``"rad"``.
    options : dict, optional
        Keyword arguments bound to ``function``.

    Examples
    --------
    >>> import numpy as np, mdtraj
    >>> radius = CollectiveVariable(lambda t: mdtraj.compute_rg(t), names=("Rg",), unit="nm")
    >>> radius.names
    ('Rg',)
    """

    def __init__(self, function: Callable, names: tuple[str, ...], range=None,
                 unit: str = "", options: dict | None = None):
        self.function = function
        self.names = tuple(names)
        self.range = None if range is None else tuple(tuple(map(float, r)) for r in range)
        self.unit = unit
        self.options = dict(options or {})

    def __call__(self, trajectory, **options) -> np.ndarray:
        return np.asarray(self.function(trajectory, **{**self.options, **options}))

    def with_options(self, **options) -> CollectiveVariable:
        """A copy with keyword arguments bound, e.g. ``ramachandran.with_options(index=1)``."""
        return CollectiveVariable(self.function, self.names, self.range, self.unit,
                                  {**self.options, **options})

    def __repr__(self) -> str:
        return f"CollectiveVariable(names={self.names}, unit={self.unit!r})"


def has_ramachandran(topology: mdtraj.Topology) -> bool:
    """True when the topology has exactly one φ/ψ pair (``ramachandran`` works without index).

    >>> import openmm_trade as ot
    >>> has_ramachandran(ot.systems.load("alanine-dipeptide-vacuum").mdtraj_topology)
    True
    """
    return len(phi_psi_pairs(topology)) == 1


def _phi_psi(trajectory: mdtraj.Trajectory, index: int | None = None) -> np.ndarray:
    if not isinstance(trajectory, mdtraj.Trajectory):
        raise InputError("ramachandran needs an mdtraj.Trajectory, got "
                         f"{type(trajectory).__name__} (a model without a topology?)")
    pairs = phi_psi_pairs(trajectory.topology)
    if not pairs:
        raise InputError("the topology has no residue with both φ and ψ (not a peptide?)")
    if index is None:
        if len(pairs) != 1:
            residues = [str(trajectory.topology.residue(r)) for r, _, _ in pairs]
            raise InputError(f"the topology has {len(pairs)} φ/ψ pairs (residues "
                             f"{', '.join(residues)}); choose one with index=0..{len(pairs) - 1}")
        index = 0
    if not 0 <= index < len(pairs):
        raise InputError(f"index must be in 0..{len(pairs) - 1}, got {index}")
    _, phi, psi = pairs[index]
    return _wrap(mdtraj.compute_dihedrals(trajectory, np.array([phi, psi])))


def _wrap(angles) -> np.ndarray:
    """Angles as float64 in [-π, π] (mdtraj's float32 values can exceed π by rounding)."""
    angles = np.asarray(angles, dtype=np.float64)
    return np.arctan2(np.sin(angles), np.cos(angles))


#: Backbone (φ, ψ) in radians, shape ``(n, 2)``. Peptides with one φ/ψ pair (alanine
#: dipeptide) need no options; otherwise call ``ramachandran(traj, index=i)`` or use
#: ``ramachandran.with_options(index=i)``; the pairs are listed by :func:`phi_psi_pairs`.
ramachandran = CollectiveVariable(_phi_psi, names=("φ", "ψ"),
                                  range=((-math.pi, math.pi), (-math.pi, math.pi)), unit="rad")


def dihedral(atoms, name: str = "dihedral") -> CollectiveVariable:
    """A CV for the dihedral over four atom indices, in radians, shape ``(n, 1)``.

    >>> phi = dihedral([4, 6, 8, 14], name="φ")
    >>> phi.range
    ((-3.141592653589793, 3.141592653589793),)
    """
    atoms = np.asarray(atoms, dtype=int).reshape(1, 4)
    return CollectiveVariable(lambda traj: _wrap(mdtraj.compute_dihedrals(traj, atoms)),
                              names=(name,),
                              range=((-math.pi, math.pi),), unit="rad")


def evaluate(cv, data) -> np.ndarray:
    """Values of ``cv`` on ``data`` as a float64 array of shape ``(n, k)``.

    Parameters
    ----------
    cv : callable or array-like
        A :class:`CollectiveVariable`, any callable ``trajectory -> array`` or precomputed
        values of shape ``(n,)``/``(n, k)``.
    data : WeightedTrajectory, mdtraj.Trajectory or numpy.ndarray
        The samples. Callables receive the ``mdtraj.Trajectory`` for molecules and the
        sample array otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> evaluate(lambda x: x[:, 0], np.arange(6.0).reshape(3, 2)).ravel().tolist()
    [0.0, 2.0, 4.0]
    """
    if hasattr(data, "log_weights"):  # a WeightedTrajectory
        source = data.trajectory if data.trajectory is not None else data.samples
        n = len(data)
    elif isinstance(data, mdtraj.Trajectory):
        source, n = data, data.n_frames
    else:
        source = np.asarray(data)
        n = source.shape[0]
    values = cv(source) if callable(cv) else cv
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != n:
        raise InputError(f"cv must give an array of shape ({n},) or ({n}, k), "
                         f"got {values.shape}")
    return values


def natural_range(cv) -> tuple | None:
    """The declared range of a :class:`CollectiveVariable` (``None`` for other CVs)."""
    return getattr(cv, "range", None)


__all__ = [
    "RAMACHANDRAN_STATES", "CollectiveVariable", "dihedral", "evaluate", "has_ramachandran",
    "natural_range", "phi_psi_pairs", "ramachandran",
]
