"""Topology facts: peptide backbone torsions (φ, ψ), stereocentres and ring bonds.

The one place where φ/ψ atoms are found: :func:`backbone_dihedrals` (mdtraj's atom-name
rules, φ = ``C(i-1)-N-CA-C`` and ψ = ``N-CA-C-N(i+1)`` between consecutive residues of a
chain). The collective variables (:mod:`openmm_trade.cv`), the named torsions of the
internal coordinates (:mod:`openmm_trade.coordinates`), the MD summary
(:func:`openmm_trade.md.simulation_summary`) and the coverage check
(:mod:`openmm_trade.coverage`) all use it. Both mdtraj and OpenMM topologies are accepted.

Example
-------
>>> import openmm_trade as ot
>>> from openmm_trade.topology import backbone_dihedrals, stereocentres
>>> msys = ot.systems.load("alanine-dipeptide-vacuum")
>>> backbone_dihedrals(msys.topology)
{'phi': {1: (4, 6, 8, 14)}, 'psi': {1: (6, 8, 14, 16)}}
>>> stereocentres(msys.topology)
[8]
"""

from __future__ import annotations

import mdtraj
import numpy as np
from openmm import app

from .errors import InputError

__all__ = ["backbone_dihedrals", "backbone_torsions", "phi_psi_pairs", "ring_bonds",
           "stereocentres"]


def _as_mdtraj(topology) -> mdtraj.Topology:
    if isinstance(topology, mdtraj.Topology):
        return topology
    if isinstance(topology, app.Topology):
        return mdtraj.Topology.from_openmm(topology)
    raise InputError("topology must be an mdtraj.Topology or an openmm.app.Topology, got "
                     f"{type(topology).__name__}")


def backbone_dihedrals(topology) -> dict[str, dict[int, tuple[int, int, int, int]]]:
    """φ and ψ atoms of each residue that has them, by residue index.

    Returns ``{"phi": {residue: (C(i-1), N, CA, C)}, "psi": {residue: (N, CA, C,
    N(i+1))}}``, where ``residue`` is the index of the residue that holds ``CA``, in
    residue order. Atoms are found by name, as ``mdtraj.compute_phi`` and
    ``compute_psi`` find them.

    Parameters
    ----------
    topology : mdtraj.Topology or openmm.app.Topology

    Examples
    --------
    >>> import openmm_trade as ot
    >>> backbone_dihedrals(ot.systems.load("alanine-dipeptide-vacuum").mdtraj_topology)["psi"]
    {1: (6, 8, 14, 16)}
    """
    top = _as_mdtraj(topology)
    frame = mdtraj.Trajectory(np.zeros((1, top.n_atoms, 3), np.float32), top)
    found = {}
    for name, compute, ca in (("phi", mdtraj.compute_phi, 2), ("psi", mdtraj.compute_psi, 1)):
        atoms = compute(frame)[0]
        found[name] = {top.atom(int(a[ca])).residue.index: tuple(int(i) for i in a)
                       for a in atoms}
    return found


def phi_psi_pairs(topology) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Residues that have both a φ and a ψ dihedral: ``(residue index, φ atoms, ψ atoms)``.

    >>> import openmm_trade as ot
    >>> [r for r, _, _ in phi_psi_pairs(ot.systems.load("alanine-dipeptide-vacuum")
    ...                                 .mdtraj_topology)]
    [1]
    """
    found = backbone_dihedrals(topology)
    return [(residue, np.array(phi), np.array(found["psi"][residue]))
            for residue, phi in found["phi"].items() if residue in found["psi"]]


def backbone_torsions(topology) -> dict[str, tuple[int, int, int, int]]:
    """Peptide backbone torsions by name (from :func:`backbone_dihedrals`).

    ``"phi:<RES><id>"`` = ``C(i-1)-N-CA-C`` and ``"psi:<RES><id>"`` = ``N-CA-C-N(i+1)``,
    residue by residue (φ before ψ); plain ``"phi"``/``"psi"`` are added when there is
    exactly one of each.

    >>> import openmm_trade as ot
    >>> backbone_torsions(ot.systems.load("alanine-dipeptide-vacuum").topology)["phi"]
    (4, 6, 8, 14)
    """
    found = backbone_dihedrals(topology)
    if isinstance(topology, app.Topology):
        labels = [f"{r.name}{r.id}" for r in topology.residues()]
    else:
        labels = [f"{r.name}{r.resSeq}" for r in topology.residues]
    named: dict[str, tuple[int, int, int, int]] = {}
    for residue, label in enumerate(labels):
        for kind in ("phi", "psi"):
            if residue in found[kind]:
                named[f"{kind}:{label}"] = found[kind][residue]
    for kind in ("phi", "psi"):
        if len(found[kind]) == 1:
            named[kind] = next(iter(found[kind].values()))
    return named


def _atom_graph(topology):
    neighbours: dict[int, set[int]] = {a.index: set() for a in topology.atoms()}
    for a, b in topology.bonds():
        neighbours[a.index].add(b.index)
        neighbours[b.index].add(a.index)
    return neighbours


def ring_bonds(topology) -> list[tuple[int, int]]:
    """Bonds ``(i, j)``, ``i < j``, that lie on a ring: their atoms stay connected without
    them. A torsion about such a bond cannot turn freely.

    >>> import openmm_trade as ot
    >>> ring_bonds(ot.systems.load("alanine-dipeptide-vacuum").topology)
    []
    >>> len(ring_bonds(ot.systems.load("ace-pro-nme-implicit").topology))  # the pyrrolidine
    5
    """
    neighbours = _atom_graph(topology.to_openmm() if isinstance(topology, mdtraj.Topology)
                             else topology)

    def connected_without(a: int, b: int) -> bool:
        seen, stack = {a}, [a]
        while stack:
            atom = stack.pop()
            for other in neighbours[atom] - seen:
                if atom == a and other == b:
                    continue
                if other == b:
                    return True
                seen.add(other)
                stack.append(other)
        return False

    pairs = {(min(a, b), max(a, b)) for a in neighbours for b in neighbours[a]}
    return sorted(pair for pair in pairs if connected_without(*pair))


def stereocentres(topology) -> list[int]:
    """Atoms with four bonded neighbours that are pairwise distinct.

    Distinctness is judged by colour refinement of the bond graph (elements, then
    repeated hashing of neighbour colours), which separates the substituents of
    ordinary stereocentres (e.g. alanine CA) and merges equivalent ones (the hydrogens
    of a methyl group).

    >>> import openmm_trade as ot
    >>> stereocentres(ot.systems.load("alanine-dipeptide-vacuum").topology)
    [8]
    """
    neighbours = _atom_graph(topology)
    colour = {a.index: (a.element.symbol if a.element is not None else a.name)
              for a in topology.atoms()}
    for _ in range(len(colour)):
        new = {i: hash((colour[i], tuple(sorted(hash(colour[j]) for j in neighbours[i]))))
               for i in colour}
        if len(set(new.values())) == len(set(colour.values())):
            break
        colour = new
    return sorted(i for i, nb in neighbours.items()
                  if len(nb) == 4 and len({colour[j] for j in nb}) == 4)
