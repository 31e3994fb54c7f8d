"""Z-matrix construction: the order in which atoms are placed and their references.

A Z-matrix is a table with one row per atom, in placement order::

    (atom, bond_partner, angle_atom, torsion_atom)

Row 0 places the first atom (no references, ``-1`` in the other columns), row 1 places
an atom by a distance to row 0's atom, row 2 by a distance and an angle, and every
later row by a bond length ``|atom - bond_partner|``, a bond angle
``angle(atom, bond_partner, angle_atom)`` and a torsion
``dihedral(atom, bond_partner, angle_atom, torsion_atom)`` (IUPAC sign, the same as
``mdtraj.compute_dihedrals``). All references of a row are placed in earlier rows.

Automatic construction (:meth:`ZMatrix.from_system`, :meth:`ZMatrix.from_topology`,
:meth:`ZMatrix.from_bonds`) walks the bond graph breadth first from a root atom:

* the root is the lowest-index heavy atom with at most one heavy neighbour (a chain end,
  e.g. the methyl carbon of an ACE cap), else the lowest-index heavy atom;
* heavy atoms are placed before hydrogens, so heavy atoms are the references wherever
  the graph allows; the children of an atom are ranked hydrogen-last, protein backbone
  atoms (``N``, ``CA``, ``C``) first, then by decreasing degree, then by index;
* the *first* child of an atom is placed by the chain torsion
  ``(child, parent, grandparent, great-grandparent)``; further children use the first
  child as torsion atom, an improper-like torsion ``(child, parent, grandparent,
  first_child)`` that sits near ±120° at a tetrahedral centre and whose sign is the
  centre's handedness (used for chirality, see
  :attr:`openmm_trade.InternalCoordinates.chirality_torsions`);
* when such a reference does not exist, the next candidate is taken from a fixed list
  (siblings, neighbours of the angle atom, neighbours of the bond partner, any placed
  atom); with reference positions, candidates that make a near-collinear frame (sine of
  the frame angle below ``0.1``) are skipped.

For peptides this makes the backbone dihedrals Z-matrix torsions: for ACE-ALA-NME the
row of ALA ``C`` is ``(C, CA, N, C_ace)`` (φ) and the row of NME ``N`` is
``(N_nme, C, CA, N)`` (ψ). Ring-closure bonds are not Z-matrix bonds (they follow from
the others). Construction is deterministic: the same topology gives the same table.

A topology with several molecules (more than one connected component of the bond
graph) has no automatic Z-matrix and raises :class:`~openmm_trade.errors.InputError`;
an explicit table may place atoms of different molecules relative to each other (the
"bond" of a row need not be a chemical bond).

Example
-------
>>> import openmm_trade as ot
>>> zm = ot.ZMatrix.from_system(ot.systems.load("alanine-dipeptide-vacuum"))
>>> zm.rows[:3].tolist()
[[1, -1, -1, -1], [4, 1, -1, -1], [6, 4, 1, -1]]
>>> ZMatrix([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1]]).n_atoms
3
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from itertools import chain as chain_iter
from itertools import islice

import numpy as np

from .errors import InputError

#: Candidate torsion/angle frames whose sine falls below this are skipped when reference
#: positions are given (about 5.7 degrees from collinear).
COLLINEAR_SINE = 0.1

#: Protein backbone atom names preferred as first children (chain continuation).
BACKBONE_NAMES = ("N", "CA", "C")


class ZMatrix:
    """A validated Z-matrix: rows ``(atom, bond_partner, angle_atom, torsion_atom)``.

    Parameters
    ----------
    rows : array-like of int, shape (N, 4)
        Rows in placement order; ``-1`` marks absent references (row 0: all three,
        row 1: angle and torsion atom, row 2: torsion atom).
    n_atoms : int, optional
        Number of atoms of the system; defaults to ``len(rows)``. Every atom
        ``0 .. n_atoms-1`` must be placed exactly once.

    Raises
    ------
    InputError
        If the table has the wrong shape, an index out of range, an atom placed twice or
        never, a reference not placed earlier, a missing reference, or a row that repeats
        an atom.

    Examples
    --------
    >>> zm = ZMatrix([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 0]])
    >>> zm.placement_order.tolist(), zm.layers
    ([0, 1, 2, 3], [array([3])])
    >>> ZMatrix([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 1, -1]])
    Traceback (most recent call last):
    ...
    openmm_trade.errors.InputError: zmatrix row 2 (2, 1, 1, -1) repeats an atom
    """

    def __init__(self, rows, n_atoms: int | None = None):
        try:
            table = np.asarray(rows, dtype=np.int64)
        except (TypeError, ValueError) as err:
            raise InputError(f"zmatrix must be an (N, 4) integer table, got {rows!r}") from err
        if table.ndim != 2 or table.shape[1] != 4:
            raise InputError(f"zmatrix must have shape (N, 4), got {table.shape}")
        n = len(table) if n_atoms is None else int(n_atoms)
        _validate(table, n)
        self._rows = table
        self._rows.setflags(write=False)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_system(cls, msys, root: int | None = None) -> ZMatrix:
        """Build the Z-matrix of a :class:`~openmm_trade.MolecularSystem`.

        Uses the topology's bonds and elements, and the reference positions to avoid
        near-collinear reference frames.

        >>> import openmm_trade as ot
        >>> zm = ZMatrix.from_system(ot.systems.load("alanine-dipeptide-vacuum"))
        >>> zm.row_of(14).tolist()  # ALA C placed by phi
        [14, 8, 6, 4]
        """
        return cls.from_topology(msys.topology, positions=msys.positions, root=root)

    @classmethod
    def from_topology(cls, topology, positions=None, root: int | None = None) -> ZMatrix:
        """Build the Z-matrix of an ``openmm.app.Topology`` (or ``mdtraj.Topology``).

        >>> from openmmtools import testsystems
        >>> ZMatrix.from_topology(testsystems.TolueneVacuum().topology).n_atoms
        15
        """
        atoms = list(topology.atoms())
        bonds = [(a.index, b.index) for a, b in topology.bonds()]
        heavy = [not _is_hydrogen(atom) for atom in atoms]
        backbone = _backbone_atoms(topology)
        return cls.from_bonds(
            len(atoms), bonds, heavy=heavy, backbone=backbone, positions=positions, root=root
        )

    @classmethod
    def from_bonds(
        cls,
        n_atoms: int,
        bonds: Iterable[tuple[int, int]],
        heavy: Sequence[bool] | None = None,
        backbone: Iterable[int] = (),
        positions=None,
        root: int | None = None,
    ) -> ZMatrix:
        """Build a Z-matrix from a bond list (the algorithm of the module docstring).

        Parameters
        ----------
        n_atoms : int
            Number of atoms (at least 3).
        bonds : iterable of (int, int)
            Bonded pairs; must connect all atoms into one molecule.
        heavy : sequence of bool, optional
            Which atoms are heavy (not hydrogen); all heavy by default.
        backbone : iterable of int
            Atoms preferred as the first (chain-continuing) child.
        positions : array-like (N, 3), optional
            Reference positions used to skip near-collinear reference frames.
        root : int, optional
            First atom; chosen automatically by default.

        >>> ZMatrix.from_bonds(4, [(0, 1), (1, 2), (2, 3)]).rows.tolist()
        [[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 0]]
        >>> ZMatrix.from_bonds(4, [(0, 1), (2, 3)])
        Traceback (most recent call last):
        ...
        openmm_trade.errors.InputError: the bond graph has 2 disconnected molecules \
(atoms per molecule: 2, 2); an automatic Z-matrix needs one connected molecule: pass an \
explicit zmatrix (rows may place atoms of different molecules relative to each other) or \
model one molecule per system
        """
        builder = _Builder(n_atoms, bonds, heavy, backbone, positions)
        return cls(builder.rows(root), n_atoms)

    # ------------------------------------------------------------------ facts
    @property
    def rows(self) -> np.ndarray:
        """``(N, 4)`` int64 table in placement order (a copy)."""
        return self._rows.copy()

    @property
    def n_atoms(self) -> int:
        """Number of atoms placed."""
        return len(self._rows)

    @property
    def placement_order(self) -> np.ndarray:
        """Atom indices in the order they are placed (the first column)."""
        return self._rows[:, 0].copy()

    def row_of(self, atom: int) -> np.ndarray:
        """The row that places ``atom``."""
        return self._rows[int(np.flatnonzero(self._rows[:, 0] == atom)[0])].copy()

    @property
    def depths(self) -> np.ndarray:
        """Dependency depth of each row: 0 for rows 0-2, else 1 + max depth of its refs."""
        depth_of_atom = np.zeros(self.n_atoms, dtype=np.int64)
        depths = np.zeros(self.n_atoms, dtype=np.int64)
        for k, (atom, *refs) in enumerate(self._rows):
            if k >= 3:
                depths[k] = 1 + max(depth_of_atom[r] for r in refs)
            depth_of_atom[atom] = depths[k]
        return depths

    @property
    def layers(self) -> list[np.ndarray]:
        """Row indices (``>= 3``) grouped by :attr:`depths`, in increasing depth.

        Rows in one layer depend only on rows of earlier layers (or rows 0-2), so they
        can be placed together.
        """
        depths = self.depths
        return [np.flatnonzero(depths == d) for d in range(1, int(depths.max(initial=0)) + 1)]

    def to_list(self) -> list[list[int]]:
        """The rows as nested Python lists (e.g. for saving in a checkpoint)."""
        return self._rows.tolist()

    def __len__(self) -> int:
        return self.n_atoms

    def __eq__(self, other) -> bool:
        return isinstance(other, ZMatrix) and np.array_equal(self._rows, other._rows)

    def __hash__(self) -> int:
        return hash(self._rows.tobytes())

    def __repr__(self) -> str:
        return f"ZMatrix(n_atoms={self.n_atoms}, layers={len(self.layers)})"


# ---------------------------------------------------------------------- validation
def _validate(table: np.ndarray, n_atoms: int) -> None:
    if n_atoms < 3:
        raise InputError(f"a Z-matrix needs at least 3 atoms, got n_atoms={n_atoms}")
    if len(table) != n_atoms:
        raise InputError(f"zmatrix must have one row per atom ({n_atoms}), got {len(table)} rows")
    if table.min() < -1 or table.max() >= n_atoms:
        raise InputError(
            f"zmatrix indices must lie in [0, {n_atoms - 1}] (or -1 for absent references), "
            f"got values from {table.min()} to {table.max()}"
        )
    placed: set[int] = set()
    for k, row in enumerate(table.tolist()):
        atom, refs = row[0], row[1:]
        n_refs = min(k, 3)
        if atom < 0:
            raise InputError(f"zmatrix row {k} {tuple(row)} has no atom (-1 in column 0)")
        if atom in placed:
            raise InputError(f"zmatrix row {k} {tuple(row)} places atom {atom} a second time")
        if any(r < 0 for r in refs[:n_refs]) or any(r >= 0 for r in refs[n_refs:]):
            expected = ", ".join(["placed atom"] * n_refs + ["-1"] * (3 - n_refs))
            raise InputError(
                f"zmatrix row {k} {tuple(row)} must have references ({expected})"
            )
        used = [atom, *refs[:n_refs]]
        if len(set(used)) != len(used):
            raise InputError(f"zmatrix row {k} {tuple(row)} repeats an atom")
        late = [r for r in refs[:n_refs] if r not in placed]
        if late:
            raise InputError(
                f"zmatrix row {k} {tuple(row)} references atom(s) {late} before they are placed"
            )
        placed.add(atom)


# ---------------------------------------------------------------------- construction
def _is_hydrogen(atom) -> bool:
    element = getattr(atom, "element", None)
    symbol = getattr(element, "symbol", None)
    if symbol is not None:
        return symbol in ("H", "D")
    return atom.name.upper().lstrip("0123456789").startswith("H")


def _backbone_atoms(topology) -> list[int]:
    chosen = []
    for residue in topology.residues():
        by_name = {atom.name: atom.index for atom in residue.atoms()}
        if all(name in by_name for name in BACKBONE_NAMES):
            chosen.extend(by_name[name] for name in BACKBONE_NAMES)
    return chosen


class _Builder:
    """Breadth-first placement over the bond graph (see the module docstring)."""

    def __init__(self, n_atoms, bonds, heavy, backbone, positions):
        self.n = int(n_atoms)
        if self.n < 3:
            raise InputError(f"a Z-matrix needs at least 3 atoms, got n_atoms={self.n}")
        self.neighbours: list[set[int]] = [set() for _ in range(self.n)]
        for i, j in bonds:
            i, j = int(i), int(j)
            if not (0 <= i < self.n and 0 <= j < self.n) or i == j:
                raise InputError(f"bond ({i}, {j}) is not a pair of atoms in [0, {self.n - 1}]")
            self.neighbours[i].add(j)
            self.neighbours[j].add(i)
        self.heavy = [True] * self.n if heavy is None else [bool(h) for h in heavy]
        if len(self.heavy) != self.n:
            raise InputError(f"heavy must have {self.n} entries, got {len(self.heavy)}")
        self.backbone = set(int(b) for b in backbone)
        self.positions = None if positions is None else np.asarray(positions, dtype=float)
        self._check_connected()

    def _check_connected(self) -> None:
        seen = np.full(self.n, -1)
        sizes = []
        for start in range(self.n):
            if seen[start] >= 0:
                continue
            seen[start] = len(sizes)
            stack, size = [start], 0
            while stack:
                atom = stack.pop()
                size += 1
                for other in self.neighbours[atom]:
                    if seen[other] < 0:
                        seen[other] = len(sizes)
                        stack.append(other)
            sizes.append(size)
        if len(sizes) > 1:
            raise InputError(
                f"the bond graph has {len(sizes)} disconnected molecules (atoms per molecule: "
                f"{', '.join(map(str, sizes))}); an automatic Z-matrix needs one connected "
                "molecule: pass an explicit zmatrix (rows may place atoms of different "
                "molecules relative to each other) or model one molecule per system"
            )

    def _root(self) -> int:
        heavy = [i for i in range(self.n) if self.heavy[i]] or list(range(self.n))
        ends = [i for i in heavy if sum(self.heavy[j] for j in self.neighbours[i]) <= 1]
        return (ends or heavy)[0]

    def _rank(self, atom: int) -> tuple:
        return (not self.heavy[atom], atom not in self.backbone, -len(self.neighbours[atom]),
                atom)

    def _order(self, root: int) -> None:
        """Breadth-first placement order, heavy atoms before hydrogens."""
        self.parent = {root: -1}
        self.children: dict[int, list[int]] = {}
        self.order: list[int] = []
        heavy_queue, light_queue = deque([root]), deque()
        while heavy_queue or light_queue:
            atom = heavy_queue.popleft() if heavy_queue else light_queue.popleft()
            self.order.append(atom)
            new = sorted((j for j in self.neighbours[atom] if j not in self.parent),
                         key=self._rank)
            self.children[atom] = new
            for child in new:
                self.parent[child] = atom
                (heavy_queue if self.heavy[child] else light_queue).append(child)
        self.rank_in_order = {atom: k for k, atom in enumerate(self.order)}

    def _frame_ok(self, t: int, g: int, p: int) -> bool:
        """True unless reference positions show t, g, p (nearly) collinear."""
        if self.positions is None:
            return True
        u, v = self.positions[t] - self.positions[g], self.positions[p] - self.positions[g]
        norm = np.linalg.norm(u) * np.linalg.norm(v)
        return norm > 0 and np.linalg.norm(np.cross(u, v)) / norm > COLLINEAR_SINE

    def _torsion_atom(self, atom: int, p: int, g: int) -> int:
        k = self.rank_in_order[atom]
        siblings = self.children[p]
        chain = []
        if siblings[0] == atom and self.parent[g] >= 0 and g == self.parent[p]:
            chain.append(self.parent[g])
        candidates = chain_iter(
            chain,
            siblings,
            sorted(self.neighbours[g], key=self.rank_in_order.get),
            sorted(self.neighbours[p], key=self.rank_in_order.get),
            islice(self.order, k),
        )
        first = None
        for c in candidates:
            if c in (atom, p, g) or self.rank_in_order[c] >= k:
                continue
            if self._frame_ok(c, g, p):
                return c
            first = c if first is None else first
        return first

    def rows(self, root: int | None) -> list[list[int]]:
        if root is None:
            root = self._root()
        elif not 0 <= int(root) < self.n:
            raise InputError(f"root must be an atom index in [0, {self.n - 1}], got {root}")
        self._order(int(root))
        table = []
        for k, atom in enumerate(self.order):
            if k == 0:
                table.append([atom, -1, -1, -1])
                continue
            p = self.parent[atom]
            if self.parent[p] >= 0:
                g = self.parent[p]
            else:  # p is the root: use its first placed child as angle atom
                g = self.children[p][0]
            if k == 1:
                table.append([atom, p, -1, -1])
            elif k == 2:
                table.append([atom, p, g, -1])
            else:
                table.append([atom, p, g, self._torsion_atom(atom, p, g)])
        return table
