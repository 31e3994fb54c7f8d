r"""InternalCoordinates: Cartesian conformations <-> Z-matrix internal coordinates.

Layout of ``z`` (``n_dof = 3N - 6 - C`` entries, ``C`` = constrained bonds)::

    z = [ free bonds (N - 1 - C) | angles (N - 2) | torsions (N - 3) ]

in the row order of the :class:`~openmm_trade.ZMatrix` (bond of rows 1.., angle of rows
2.., torsion of rows 3..). Domains: bonds in nm, ``> 0``; angles in rad, in ``(0, π)``;
torsions in rad, in ``[-π, π)`` (IUPAC sign, as ``mdtraj.compute_dihedrals``).
:attr:`InternalCoordinates.bond_mask`, ``angle_mask``, ``torsion_mask`` select the kinds,
:attr:`~InternalCoordinates.dof_names` names every entry.

Rigid-body motion. ``forward`` is invariant under translations and rotations;
``inverse`` returns the canonical pose: the first placed atom at the origin, the second
on ``+x``, the third in the ``xy``-plane with ``y > 0``.

Constraints. Bonds held fixed by the OpenMM ``System`` (``msys.constrained_pairs``,
e.g. HBonds) are not degrees of freedom: ``forward`` drops them (their measured lengths
are *not* checked) and ``inverse`` sets them to the constraint length. A constraint that
is not a Z-matrix bond raises :class:`~openmm_trade.errors.InputError`.

Log-determinant convention (exact). Let ``F`` be the square map of ``3N`` Cartesian
coordinates to ``(x_0, θ_1, φ_1, γ, b_1..b_{N-1}, a_2..a_{N-1}, t_3..t_{N-1})``: the
position ``x_0`` of row 0's atom, the polar/azimuthal angles ``(θ_1, φ_1)`` of
``x_1 - x_0`` about the lab ``z`` axis, an azimuth ``γ`` of row 2's atom about its
bond-partner/angle-atom axis (measured from any lab-fixed half plane), all bond lengths
(constrained ones included), angles and torsions. Its Jacobian determinant is
``|det ∂F/∂x| = 1 / (sin θ_1 · Π_{k≥1} b_k² · Π_{k≥2} sin a_k)``. The returned

    logdet_forward(x) = log|det ∂F/∂x| + log sin θ_1
                      = -Σ_{k≥1} 2 log b_k - Σ_{k≥2} log sin a_k,

with constrained ``b_k`` taken at their constraint length (a constant). This does not
depend on the orientation and is the log-density change to the reduced space with
rotations uniform on SO(3): ``log p_x(x) = log p_z(z) + logdet_forward(x) + const``.
``inverse`` returns exactly ``-logdet_forward`` of its output, so forward + inverse
log-determinants sum to zero.

Numerics. Norms use ``sqrt(max(|v|², 1e-20))``; angles are ``atan2(|u×v|, u·v)``,
clamped to ``[ANGLE_EPS, π - ANGLE_EPS]`` with ``ANGLE_EPS = 1e-6`` rad; torsions with
both atan2 arguments below ``1e-20`` (collinear atoms) are defined as 0 with finite
gradients. Nothing returns NaN for finite input; float32 and float64 both work (the
computation runs in the input's dtype).

Example
-------
>>> import torch, openmm_trade as ot
>>> msys = ot.systems.load("alanine-dipeptide-vacuum")
>>> ic = InternalCoordinates.from_system(msys)
>>> ic.n_dof, int(ic.bond_mask.sum()), int(ic.torsion_mask.sum())
(48, 9, 19)
>>> x = torch.as_tensor(msys.positions)[None]
>>> z, logdet = ic.forward(x)
>>> x2, logdet2 = ic.inverse(z)
>>> float((logdet + logdet2).abs().max()) < 1e-10
True
>>> phi = ic.torsion_index("phi")
>>> bool(torch.isclose(z[0, phi], ic.reference_z[phi]))
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError
from .topology import backbone_torsions, ring_bonds, stereocentres
from .zmatrix import ZMatrix

#: Bond angles are clamped to [ANGLE_EPS, π - ANGLE_EPS] rad in ``forward``.
ANGLE_EPS = 1e-6
#: Floor under squared norms (nm²) and under squared atan2 arguments.
NORM_EPS2 = 1e-20
#: Default scales of :meth:`InternalCoordinates.statistics` without data.
DEFAULT_SCALES = {"bond": 0.005, "angle": 0.05, "torsion": math.pi / math.sqrt(3.0)}
#: Largest circular standard deviation reported (that of a uniform angle).
MAX_CIRCULAR_STD = math.pi / math.sqrt(3.0)


# ---------------------------------------------------------------------- geometry
def _norm(v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((v * v).sum(-1).clamp_min(NORM_EPS2))


def bond_lengths(xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """Distances ``|xa - xb|`` over the last axis (safe at 0)."""
    return _norm(xa - xb)


def bond_angles(xa: torch.Tensor, xb: torch.Tensor, xc: torch.Tensor) -> torch.Tensor:
    """Angles ``a-b-c`` in rad, clamped to ``[ANGLE_EPS, π - ANGLE_EPS]``."""
    u, v = xa - xb, xc - xb
    angle = torch.atan2(_norm(torch.cross(u, v, dim=-1)), (u * v).sum(-1))
    return angle.clamp(ANGLE_EPS, math.pi - ANGLE_EPS)


def torsions(xa, xb, xc, xd) -> torch.Tensor:
    """IUPAC dihedrals ``a-b-c-d`` in ``[-π, π)`` (as ``mdtraj.compute_dihedrals``)."""
    b1, b2, b3 = xb - xa, xc - xb, xd - xc
    n1, n2 = torch.cross(b1, b2, dim=-1), torch.cross(b2, b3, dim=-1)
    y = _norm(b2) * (b1 * n2).sum(-1)
    x = (n1 * n2).sum(-1)
    degenerate = x * x + y * y < NORM_EPS2
    angle = torch.atan2(y, torch.where(degenerate, torch.ones_like(x), x))
    return torch.where(angle >= math.pi, angle - 2 * math.pi, angle)


def place(xt, xg, xp, bond, angle, torsion) -> torch.Tensor:
    """Position of an atom ``a`` with ``|a-p| = bond``, ``angle(a,p,g)``, ``dihedral(a,p,g,t)``.

    The natural-extension reference frame (NeRF) construction.
    """
    e1 = xp - xg
    e1 = e1 / _norm(e1)[..., None]
    n = torch.cross(xg - xt, e1, dim=-1)
    n = n / _norm(n)[..., None]
    m = torch.cross(n, e1, dim=-1)
    r_sin = (bond * torch.sin(angle))[..., None]
    return (xp - (bond * torch.cos(angle))[..., None] * e1
            + r_sin * torch.cos(torsion)[..., None] * m
            + r_sin * torch.sin(torsion)[..., None] * n)


@dataclass(frozen=True)
class CoordinateStatistics:
    """Per-coordinate ``mean``, ``std``, ``min``, ``max`` (each ``(n_dof,)`` tensors).

    Torsions have the circular mean and the circular standard deviation
    ``sqrt(-2 log R)`` (capped at ``π/√3``); their min/max are those of the values in
    ``[-π, π)``.
    """

    mean: torch.Tensor
    std: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor


# ---------------------------------------------------------------------- the module
class InternalCoordinates(torch.nn.Module):
    """Bijection between Cartesian conformations and Z-matrix internal coordinates.

    See the module docstring for the layout of ``z``, the domains, the treatment of
    constraints and the exact log-determinant convention. Index tables are
    (non-persistent) buffers, so ``.to(device)`` moves them.

    Parameters
    ----------
    zmatrix : ZMatrix
        Placement table.
    constrained_pairs : array-like (C, 2), optional
        Atom pairs held at fixed distance; each must be a Z-matrix bond.
    constraint_lengths : array-like (C,), optional
        Their lengths in nm.
    atom_labels : sequence of str, optional
        One label per atom for :attr:`dof_names` (default ``"0"``, ``"1"``, ...).
    named_torsions : dict, optional
        ``name -> (i, j, k, l)`` atom quadruples (e.g. ``"phi"``) to look up by name.
    chiral_atoms : sequence of int, optional
        Stereocentres; rows placing one of their neighbours by an improper-like torsion
        about them become :attr:`chirality_torsions`.
    ring_bonds : sequence of (int, int), optional
        Bonds on a ring; rows placing an atom by a torsion about one of them become
        :attr:`ring_torsions` (they cannot turn freely).
    reference_positions : array-like (N, 3), optional
        Reference conformation in nm (fallback statistics, reference chirality).

    Examples
    --------
    >>> import openmm_trade as ot
    >>> ic = InternalCoordinates.from_system(ot.systems.load("alanine-dipeptide-vacuum"))
    >>> ic.dof_names[ic.torsion_index("psi")]
    'torsion:NME3.N-ALA2.C-ALA2.CA-ALA2.N'
    >>> [ic.dof_names[i] for i in ic.chirality_torsions.tolist()]
    ['torsion:ALA2.CB-ALA2.CA-ALA2.N-ALA2.C', 'torsion:ALA2.HA-ALA2.CA-ALA2.N-ALA2.C']
    """

    def __init__(
        self,
        zmatrix: ZMatrix,
        constrained_pairs=None,
        constraint_lengths=None,
        atom_labels: Sequence[str] | None = None,
        named_torsions: dict[str, Sequence[int]] | None = None,
        chiral_atoms: Sequence[int] = (),
        reference_positions=None,
        ring_bonds: Sequence[tuple[int, int]] = (),
    ):
        super().__init__()
        if not isinstance(zmatrix, ZMatrix):
            zmatrix = ZMatrix(zmatrix)
        self.zmatrix = zmatrix
        rows = zmatrix.rows
        n = zmatrix.n_atoms
        self.n_atoms = n
        self.atom_labels = list(atom_labels) if atom_labels is not None else list(
            map(str, range(n)))
        if len(self.atom_labels) != n:
            raise InputError(f"atom_labels must have {n} entries, got {len(self.atom_labels)}")

        free, lengths = self._constraints(rows, constrained_pairs, constraint_lengths)
        self.n_bonds = int(free.sum())
        self.n_angles = n - 2
        self.n_torsions = n - 3
        self.n_constraints = n - 1 - self.n_bonds
        self.n_dof = self.n_bonds + self.n_angles + self.n_torsions
        kinds = np.repeat([0, 1, 2], [self.n_bonds, self.n_angles, self.n_torsions])

        def buffer(name, value, dtype=torch.long):
            self.register_buffer(name, torch.as_tensor(np.array(value), dtype=dtype),
                                 persistent=False)

        buffer("bond_mask", kinds == 0, torch.bool)
        buffer("angle_mask", kinds == 1, torch.bool)
        buffer("torsion_mask", kinds == 2, torch.bool)
        buffer("_rows", rows)
        buffer("_free_bond_columns", np.flatnonzero(free))
        buffer("_bond_constants", lengths, torch.float64)
        buffer("_constrained", ~free, torch.bool)
        self._layer_names = []
        for d, layer in enumerate(zmatrix.layers):
            buffer(f"_layer{d}", layer)
            self._layer_names.append(f"_layer{d}")

        self.dof_names = self._dof_names(rows, free)
        self._named = {}
        for name, atoms in (named_torsions or {}).items():
            found = self._find_torsion_row(atoms)
            if found is not None:
                self._named[name] = found
        self._named_atoms = {k: tuple(int(a) for a in v) for k, v in
                             (named_torsions or {}).items()}
        self._neighbour_sets = None
        chiral = set(int(a) for a in chiral_atoms)
        chirality = [self.torsion_offset + k - 3 for k in range(3, n)
                     if rows[k, 1] in chiral and self._is_improper(rows[k])]
        buffer("chirality_torsions", np.asarray(chirality, dtype=np.int64))
        ring = {(min(a, b), max(a, b)) for a, b in ring_bonds}
        buffer("ring_torsions", np.asarray(
            [self.torsion_offset + k - 3 for k in range(3, n)
             if (min(rows[k, 1], rows[k, 2]), max(rows[k, 1], rows[k, 2])) in ring],
            dtype=np.int64))
        if reference_positions is None:
            self.register_buffer("reference_positions", None, persistent=False)
        else:
            ref = np.asarray(reference_positions, dtype=np.float64)
            if ref.shape != (n, 3):
                raise InputError(
                    f"reference_positions must have shape ({n}, 3), got {ref.shape}")
            buffer("reference_positions", ref, torch.float64)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_system(cls, msys, zmatrix: ZMatrix | Sequence | None = None) -> InternalCoordinates:
        """Internal coordinates of a :class:`~openmm_trade.MolecularSystem`.

        Parameters
        ----------
        msys : MolecularSystem
            Supplies bonds, constraints, atom names, reference positions.
        zmatrix : ZMatrix or (N, 4) table, optional
            Explicit Z-matrix (validated); built by :meth:`ZMatrix.from_system` by default.

        >>> import openmm_trade as ot
        >>> ic = InternalCoordinates.from_system(
        ...     ot.systems.load("alanine-dipeptide-vacuum", constraints=None))
        >>> ic.n_dof == 3 * 22 - 6
        True
        """
        if zmatrix is None:
            zmatrix = ZMatrix.from_system(msys)
        elif not isinstance(zmatrix, ZMatrix):
            zmatrix = ZMatrix(zmatrix, n_atoms=msys.n_atoms)
        if zmatrix.n_atoms != msys.n_atoms:
            raise InputError(
                f"zmatrix places {zmatrix.n_atoms} atoms but the system has {msys.n_atoms}")
        atoms = list(msys.topology.atoms())
        labels = [f"{a.residue.name}{a.residue.id}.{a.name}" for a in atoms]
        ic = cls(
            zmatrix,
            constrained_pairs=msys.constrained_pairs,
            constraint_lengths=msys.constraint_lengths,
            atom_labels=labels,
            named_torsions=backbone_torsions(msys.topology),
            chiral_atoms=stereocentres(msys.topology),
            reference_positions=msys.positions,
            ring_bonds=ring_bonds(msys.topology),
        )
        return ic

    @staticmethod
    def _constraints(rows, pairs, lengths):
        n = len(rows)
        free = np.ones(n - 1, dtype=bool)
        values = np.zeros(n - 1)
        pairs = np.zeros((0, 2), dtype=np.int64) if pairs is None else np.asarray(pairs)
        lengths = np.zeros(0) if lengths is None else np.asarray(lengths, dtype=np.float64)
        if len(pairs) != len(lengths):
            raise InputError(f"constraint_lengths must have {len(pairs)} entries (one per "
                             f"constrained pair), got {len(lengths)}")
        column = {frozenset((int(a), int(p))): k - 1 for k, (a, p, _, _) in
                  enumerate(rows.tolist()) if k >= 1}
        for (i, j), d in zip(pairs.tolist(), lengths.tolist(), strict=True):
            k = column.get(frozenset((int(i), int(j))))
            if k is None:
                raise InputError(
                    f"the constraint between atoms {i} and {j} is not a Z-matrix bond, so it "
                    "cannot be held fixed; use constraints=None/HBonds, or a zmatrix whose "
                    "rows include every constrained pair as (atom, bond_partner)")
            if not d > 0:
                raise InputError(f"constraint length of ({i}, {j}) must be > 0, got {d}")
            free[k], values[k] = False, d
        return free, values

    def _dof_names(self, rows, free) -> list[str]:
        label = self.atom_labels
        names = [f"bond:{label[a]}-{label[p]}" for k, (a, p, _, _) in enumerate(rows[1:])
                 if free[k]]
        names += [f"angle:{label[a]}-{label[p]}-{label[g]}" for a, p, g, _ in rows[2:]]
        names += ["torsion:" + "-".join(label[i] for i in row) for row in rows[3:]]
        return names

    def _find_torsion_row(self, atoms) -> int | None:
        quad = [int(a) for a in atoms]
        if len(quad) != 4:
            raise InputError(f"a torsion needs 4 atom indices, got {atoms!r}")
        rows = self.zmatrix.rows
        for k in range(3, self.n_atoms):
            row = rows[k].tolist()
            if row == quad or row == quad[::-1]:
                return self.torsion_offset + k - 3
        return None

    def _is_improper(self, row) -> bool:
        """Whether atom, angle atom and torsion atom of a row are all Z-matrix bonded to
        its bond partner (an improper-like torsion about the partner)."""
        if self._neighbour_sets is None:
            sets: dict[int, set[int]] = {}
            for a, p, _, _ in self.zmatrix.rows[1:].tolist():
                sets.setdefault(a, set()).add(p)
                sets.setdefault(p, set()).add(a)
            self._neighbour_sets = sets
        a, p, g, t = (int(v) for v in row)
        near = self._neighbour_sets.get(p, set())
        return a in near and g in near and t in near

    # ------------------------------------------------------------------ layout
    @property
    def bond_slice(self) -> slice:
        """Slice of the free bonds in ``z``."""
        return slice(0, self.n_bonds)

    @property
    def angle_slice(self) -> slice:
        """Slice of the angles in ``z``."""
        return slice(self.n_bonds, self.n_bonds + self.n_angles)

    @property
    def torsion_slice(self) -> slice:
        """Slice of the torsions in ``z``."""
        return slice(self.torsion_offset, self.n_dof)

    @property
    def torsion_offset(self) -> int:
        """Index in ``z`` of the first torsion."""
        return self.n_bonds + self.n_angles

    @property
    def torsion_names(self) -> list[str]:
        """Names accepted by :meth:`torsion_index` (e.g. ``"phi"``, ``"psi:ALA2"``)."""
        return sorted(self._named)

    def torsion_index(self, name_or_atoms: str | Sequence[int]) -> int:
        """Index in ``z`` of a named torsion (``"phi"``, ``"psi"``, ``"phi:ALA2"``) or of
        the torsion over four atom indices (either direction).

        Raises
        ------
        InputError
            If the name is unknown or the torsion is not a Z-matrix torsion.

        >>> import openmm_trade as ot
        >>> ic = InternalCoordinates.from_system(ot.systems.load("alanine-dipeptide-vacuum"))
        >>> ic.torsion_index("phi") == ic.torsion_index((4, 6, 8, 14))
        True
        """
        if not isinstance(name_or_atoms, str):
            return self.index_of_torsion(name_or_atoms)
        name = name_or_atoms
        if name in self._named:
            return self._named[name]
        if name in self._named_atoms:
            raise InputError(
                f"torsion {name!r} (atoms {self._named_atoms[name]}) is not a torsion of this "
                "Z-matrix; build the zmatrix so that one row places these four atoms")
        raise InputError(f"unknown torsion name {name!r}; known: {self.torsion_names}")

    def index_of_torsion(self, atoms: Sequence[int]) -> int:
        """Index in ``z`` of the Z-matrix torsion over ``atoms`` (4 indices, either order)."""
        found = self._find_torsion_row(atoms)
        if found is None:
            raise InputError(f"atoms {tuple(atoms)} are not the four atoms of a Z-matrix row "
                             "(in either order)")
        return found

    # ------------------------------------------------------------------ transforms
    def _check(self, tensor: torch.Tensor, shape: tuple, name: str) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != len(shape) + 1 or tuple(tensor.shape[1:]) != shape:
            raise InputError(f"{name} must have shape (B, {', '.join(map(str, shape))}), got "
                             f"{tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise InputError(f"{name} must be floating point, got {tensor.dtype}")

    def _logdet(self, bonds_all: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """``Σ 2 log b + Σ log sin a`` (the inverse direction's log-determinant)."""
        return 2 * torch.log(bonds_all).sum(-1) + torch.log(
            torch.sin(angles).clamp_min(math.sin(ANGLE_EPS))).sum(-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cartesian ``(B, N, 3)`` nm -> ``(z (B, n_dof), logdet (B,))``.

        ``logdet`` follows the convention of the module docstring.

        >>> import torch, openmm_trade as ot
        >>> ic = InternalCoordinates.from_system(ot.systems.load("alanine-dipeptide-vacuum"))
        >>> z, logdet = ic.forward(torch.zeros(2, 22, 3).normal_())
        >>> z.shape, logdet.shape
        (torch.Size([2, 48]), torch.Size([2]))
        """
        self._check(x, (self.n_atoms, 3), "x")
        rows = self._rows
        pick = [x[:, rows[1:, 0]], x[:, rows[1:, 1]]]
        bonds = bond_lengths(*pick)
        a_rows = rows[2:]
        angles = bond_angles(x[:, a_rows[:, 0]], x[:, a_rows[:, 1]], x[:, a_rows[:, 2]])
        t_rows = rows[3:]
        tors = torsions(*(x[:, t_rows[:, c]] for c in range(4)))
        constants = self._bond_constants.to(x.dtype)
        bonds_all = torch.where(self._constrained, constants, bonds)
        z = torch.cat([bonds[:, self._free_bond_columns], angles, tors], dim=-1)
        return z, -self._logdet(bonds_all, angles)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Internal coordinates ``(B, n_dof)`` -> ``(x (B, N, 3) nm, logdet (B,))``.

        ``x`` is in the canonical pose; ``logdet = -forward(x)[1]``. Constrained bonds
        are set to their constraint lengths.

        >>> import torch, openmm_trade as ot
        >>> ic = InternalCoordinates.from_system(ot.systems.load("alanine-dipeptide-vacuum"))
        >>> x, logdet = ic.inverse(ic.reference_z[None])
        >>> x.shape, bool(x[0, 1:, 2].abs().max() > 0)
        (torch.Size([1, 22, 3]), True)
        """
        self._check(z, (self.n_dof,), "z")
        batch = z.shape[0]
        rows = self._rows
        constants = self._bond_constants.to(z.dtype)
        bonds = constants.expand(batch, -1).index_copy(
            1, self._free_bond_columns, z[:, self.bond_slice])
        angles = z[:, self.angle_slice]
        tors = z[:, self.torsion_slice]

        x = z.new_zeros(batch, self.n_atoms, 3)
        # rows 0-2: canonical pose
        x1 = torch.stack([bonds[:, 0], torch.zeros_like(bonds[:, 0]),
                          torch.zeros_like(bonds[:, 0])], dim=-1)
        x = x.index_copy(1, rows[1:2, 0], x1[:, None])
        xp, xg = x[:, rows[2, 1]], x[:, rows[2, 2]]
        axis = (xg - xp) / _norm(xg - xp)[..., None]
        up = torch.zeros_like(axis)
        up[..., 1] = 1.0
        x2 = xp + bonds[:, 1:2] * (torch.cos(angles[:, 0:1]) * axis
                                    + torch.sin(angles[:, 0:1]) * up)
        x = x.index_copy(1, rows[2:3, 0], x2[:, None])
        # later rows, one dependency layer at a time
        for name in self._layer_names:
            layer = getattr(self, name)
            a, p, g, t = rows[layer].unbind(-1)
            new = place(x[:, t], x[:, g], x[:, p], bonds[:, layer - 1], angles[:, layer - 2],
                        tors[:, layer - 3])
            x = x.index_copy(1, a, new)
        return x, self._logdet(bonds, angles)

    # ------------------------------------------------------------------ extras
    @property
    def reference_z(self) -> torch.Tensor:
        """``z`` of the reference positions, ``(n_dof,)`` float64."""
        if self.reference_positions is None:
            raise InputError("this InternalCoordinates has no reference_positions")
        return self.forward(self.reference_positions[None])[0][0]

    def chirality_signs(self, x: torch.Tensor) -> torch.Tensor:
        """Signs (±1) of the :attr:`chirality_torsions` of ``x`` (B, N, 3) -> ``(B, K)``.

        Each chirality torsion places a neighbour of a stereocentre by an improper-like
        torsion (about ±120°), whose sign is the centre's handedness; MD never changes
        it, so a flow should keep each of these torsions in the half (``> 0`` or ``< 0``)
        of :attr:`reference_chirality_signs` (or of the data).
        """
        z, _ = self.forward(x)
        return torch.where(z[:, self.chirality_torsions] >= 0, 1.0, -1.0).to(z.dtype)

    @property
    def reference_chirality_signs(self) -> torch.Tensor:
        """:meth:`chirality_signs` of the reference positions, ``(K,)``."""
        return self.chirality_signs(self.reference_positions[None])[0]

    def statistics(self, x=None) -> CoordinateStatistics:
        """Per-coordinate mean, std, min and max of ``z`` over conformations ``x``.

        Parameters
        ----------
        x : tensor (B, N, 3), numpy array or mdtraj.Trajectory, optional
            Boundary data in nm. Without data the reference positions give the mean,
            :data:`DEFAULT_SCALES` the std, and min/max are mean ± 4 std within the
            domain (torsions: ``[-π, π)``).

        Returns
        -------
        CoordinateStatistics
            float64 tensors of shape ``(n_dof,)``; torsions use circular mean/std.

        >>> import openmm_trade as ot
        >>> ic = InternalCoordinates.from_system(ot.systems.load("alanine-dipeptide-vacuum"))
        >>> s = ic.statistics()
        >>> bool((s.min <= s.mean).all() and (s.mean <= s.max).all())
        True
        """
        tm, bm, am = self.torsion_mask.cpu(), self.bond_mask.cpu(), self.angle_mask.cpu()
        if x is None:
            mean = self.reference_z.detach().cpu()
            std = torch.where(bm, DEFAULT_SCALES["bond"], torch.where(
                am, DEFAULT_SCALES["angle"], DEFAULT_SCALES["torsion"])).to(mean.dtype)
            low = torch.where(bm, (mean - 4 * std).clamp_min(1e-3), (mean - 4 * std))
            low = torch.where(am, low.clamp_min(ANGLE_EPS), low)
            high = torch.where(am, (mean + 4 * std).clamp_max(math.pi - ANGLE_EPS),
                               mean + 4 * std)
            low = torch.where(tm, -math.pi, low)
            high = torch.where(tm, math.pi, high)
            return CoordinateStatistics(mean, std, low, high)
        xyz = getattr(x, "xyz", x)
        xyz = torch.as_tensor(np.asarray(xyz.detach().cpu() if torch.is_tensor(xyz) else xyz),
                              dtype=torch.float64)
        if xyz.dim() == 2:
            xyz = xyz[None]
        with torch.no_grad():
            z = _forward_cpu(self, xyz)
        mean, std = z.mean(0), z.std(0, unbiased=False)
        sin, cos = torch.sin(z).mean(0), torch.cos(z).mean(0)
        resultant = torch.sqrt(sin**2 + cos**2).clamp(1e-12, 1.0)
        circ_std = torch.sqrt(-2 * torch.log(resultant)).clamp_max(MAX_CIRCULAR_STD)
        mean = torch.where(tm, torch.atan2(sin, cos), mean)
        std = torch.where(tm, circ_std, std)
        return CoordinateStatistics(mean, std, z.min(0).values, z.max(0).values)

    def extra_repr(self) -> str:
        return (f"n_atoms={self.n_atoms}, n_dof={self.n_dof}, n_constraints="
                f"{self.n_constraints}, layers={len(self._layer_names)}")


def _forward_cpu(ic: InternalCoordinates, xyz: torch.Tensor) -> torch.Tensor:
    device = ic.bond_mask.device
    z = ic.forward(xyz.to(device))[0]
    return z.cpu()
