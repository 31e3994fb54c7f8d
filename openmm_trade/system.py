"""MolecularSystem: an OpenMM System with its Topology, reference positions and the
facts the flow needs (masses, constraints, bonds, an mdtraj topology).

Example
-------
>>> import openmm_trade as ot
>>> msys = ot.systems.load("alanine-dipeptide-vacuum")
>>> msys.n_atoms, len(msys.constraint_lengths)
(22, 12)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import mdtraj
import numpy as np
import openmm
from openmm import app, unit

from .errors import InputError, UnsupportedSystemError, one_line

PathLike = str | os.PathLike

_CONSTRAINT_OPTIONS = {
    None: None,
    "none": None,
    "hbonds": app.HBonds,
    "allbonds": app.AllBonds,
    "hangles": app.HAngles,
}


def _constraint_option(constraints):
    """Map ``None``/``"HBonds"``/``app.HBonds`` style input to an OpenMM constraint object."""
    if constraints in (app.HBonds, app.AllBonds, app.HAngles):
        return constraints
    if constraints is None or isinstance(constraints, str):
        key = None if constraints is None else constraints.lower()
        if key in _CONSTRAINT_OPTIONS:
            return _CONSTRAINT_OPTIONS[key]
    raise InputError(
        "constraints must be None, 'HBonds', 'AllBonds', 'HAngles' or the openmm.app "
        f"constant, got {constraints!r}"
    )


def _positions_nm(positions, n_atoms: int) -> np.ndarray:
    """Convert positions (Quantity or array in nm) to a float64 (N, 3) array, validated."""
    if positions is None:
        raise InputError("positions are missing: pass reference positions (N, 3) in nm")
    if unit.is_quantity(positions):
        positions = positions.value_in_unit(unit.nanometer)
    array = np.asarray(
        [[float(c) for c in p] for p in positions] if isinstance(positions, list) else positions,
        dtype=np.float64,
    )
    if array.shape != (n_atoms, 3):
        raise InputError(f"positions must have shape ({n_atoms}, 3), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InputError("positions contain NaN or infinite values")
    return array


def _read_pdb(path: Path) -> app.PDBFile:
    """``app.PDBFile(path)``, with an :class:`InputError` naming the file if it is unusable."""
    if not path.is_file():
        raise InputError(f"PDB file {path} not found: expected an existing file")
    text = path.read_text(errors="replace")
    if not any(line.startswith(("ATOM", "HETATM")) for line in text.splitlines()):
        found = "an empty file" if not text.strip() else "no ATOM or HETATM records"
        raise InputError(f"PDB file {path}: expected ATOM/HETATM records, found {found}")
    try:
        return app.PDBFile(str(path))
    except Exception as error:  # noqa: BLE001 - PDBFile raises IndexError, ValueError, ...
        raise InputError(f"PDB file {path}: expected well-formed ATOM/HETATM records, found a "
                         f"malformed or truncated record ({type(error).__name__}: "
                         f"{one_line(error)})") from None


def _read_forcefield(files: tuple[str, ...]) -> app.ForceField:
    """``app.ForceField(*files)``, with an :class:`InputError` naming the unusable file."""
    from xml.etree import ElementTree

    for name in files:
        if Path(name).is_file():  # a file of the user's (OpenMM's own are trusted)
            try:
                root = ElementTree.parse(name).getroot().tag
            except ElementTree.ParseError as error:
                raise InputError(f"force-field file {name}: expected OpenMM force-field XML, "
                                 f"found text that is not XML ({error})") from None
            if root != "ForceField":
                raise InputError(f"force-field file {name}: expected an OpenMM <ForceField> "
                                 f"XML file, found <{root}>")
    try:
        return app.ForceField(*files)
    except Exception as error:  # noqa: BLE001 - ForceField raises ValueError, KeyError, ...
        missing = [n for n in files if f'"{n}"' in str(error)]
        if missing and "could not locate" in str(error).lower():
            raise InputError(f"force-field file {missing[0]}: expected a path or a force field "
                             "that OpenMM ships (e.g. amber14-all.xml), found no such file"
                             ) from None
        raise InputError(f"force-field files {', '.join(files)}: expected OpenMM force-field "
                         f"XML, found: {one_line(error)}") from None


def _named_after(path: Path, build):
    """``build()``, with the file named in the :class:`InputError` it may raise."""
    try:
        return build()
    except InputError as error:
        raise type(error)(f"{path}: {error}") from None


class MolecularSystem:
    """An OpenMM ``System`` + ``Topology`` + reference positions, validated.

    Parameters
    ----------
    system : openmm.System
        Non-periodic system without virtual sites (implicit solvent or vacuum).
    topology : openmm.app.Topology
        Topology with the same number of atoms as ``system`` has particles.
    positions : array-like or Quantity, shape (N, 3)
        Reference positions in nm (a ``Quantity`` is converted).
    name : str, optional
        A label used in reports.

    Attributes
    ----------
    positions : numpy.ndarray
        ``(N, 3)`` float64 reference positions in nm.
    masses : numpy.ndarray
        ``(N,)`` masses in amu.
    constrained_pairs : numpy.ndarray
        ``(C, 2)`` atom index pairs held at fixed distance by the System's constraints.
    constraint_lengths : numpy.ndarray
        ``(C,)`` constraint distances in nm.

    Examples
    --------
    >>> from openmmtools import testsystems
    >>> t = testsystems.AlanineDipeptideVacuum()
    >>> msys = MolecularSystem.from_openmm(t.system, t.topology, t.positions)
    >>> msys.n_atoms
    22
    """

    def __init__(self, system: openmm.System, topology: app.Topology, positions, name=None):
        if not isinstance(system, openmm.System):
            raise InputError(f"system must be an openmm.System, got {type(system).__name__}")
        if not isinstance(topology, app.Topology):
            raise InputError(
                f"topology must be an openmm.app.Topology, got {type(topology).__name__}"
            )
        n_particles, n_atoms = system.getNumParticles(), topology.getNumAtoms()
        if n_particles != n_atoms:
            raise InputError(
                f"system has {n_particles} particles but topology has {n_atoms} atoms"
            )
        virtual = [i for i in range(n_particles) if system.isVirtualSite(i)]
        if virtual:
            raise UnsupportedSystemError(
                f"system has {len(virtual)} virtual sites (first: particle {virtual[0]}); "
                "an internal-coordinate flow needs every particle to be a real atom"
            )
        if system.usesPeriodicBoundaryConditions():
            raise UnsupportedSystemError(
                "system: expected a non-periodic system (vacuum or implicit solvent), found "
                "periodic boundary conditions (explicit solvent?), which an internal-coordinate "
                "flow cannot model. Use implicit solvent, e.g. forcefield=('amber99sbildn.xml', "
                "'amber96_obc.xml') with nonbondedMethod=NoCutoff"
            )
        self.system = system
        self.topology = topology
        self.positions = _positions_nm(positions, n_atoms)
        self.name = name or "system"
        self.masses = np.array(
            [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n_atoms)]
        )
        pairs, lengths = [], []
        for k in range(system.getNumConstraints()):
            i, j, d = system.getConstraintParameters(k)
            pairs.append((min(i, j), max(i, j)))
            lengths.append(d.value_in_unit(unit.nanometer))
        self.constrained_pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        self.constraint_lengths = np.array(lengths, dtype=np.float64)
        self.mdtraj_topology = mdtraj.Topology.from_openmm(topology)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_openmm(cls, system, topology, positions, name=None) -> MolecularSystem:
        """Wrap an existing OpenMM ``System``, ``Topology`` and positions."""
        return cls(system, topology, positions, name=name)

    @classmethod
    def from_pdb(
        cls,
        path: PathLike,
        forcefield=("amber99sbildn.xml",),
        constraints="HBonds",
        nonbonded_method=app.NoCutoff,
        name=None,
        **system_options,
    ) -> MolecularSystem:
        """Build a system from a PDB file and OpenMM force-field XML files.

        Implicit solvent is chosen through the force-field files, e.g.
        ``forcefield=("amber99sbildn.xml", "amber96_obc.xml")``.

        >>> import openmm_trade as ot
        >>> pdb = ot.systems.path("alanine-dipeptide.pdb")
        >>> MolecularSystem.from_pdb(pdb, constraints=None).constraint_lengths.size
        0
        """
        path = Path(path)
        if isinstance(forcefield, str):
            forcefield = (forcefield,)
        forcefield = tuple(str(f) for f in forcefield)
        pdb = _read_pdb(path)
        ff = _read_forcefield(forcefield)
        try:
            system = ff.createSystem(
                pdb.topology,
                nonbondedMethod=nonbonded_method,
                constraints=_constraint_option(constraints),
                **system_options,
            )
        except ValueError as error:
            if isinstance(error, InputError):
                raise
            raise InputError(f"PDB file {path}: expected residues and options that the force "
                             f"field {', '.join(forcefield)} can build a system from, found: "
                             f"{one_line(error)}") from None
        return _named_after(path, lambda: cls(system, pdb.topology, pdb.getPositions(),
                                              name=name or path.stem))

    @classmethod
    def from_prmtop(
        cls, prmtop: PathLike, inpcrd: PathLike, constraints="HBonds",
        implicit_solvent=None, name=None, **system_options,
    ) -> MolecularSystem:
        """Build a system from AMBER ``prmtop``/``inpcrd`` files (NoCutoff).

        ``implicit_solvent`` is an ``openmm.app`` model such as ``app.OBC2`` or ``None``.
        """
        top = app.AmberPrmtopFile(str(prmtop))
        crd = app.AmberInpcrdFile(str(inpcrd))
        system = top.createSystem(
            nonbondedMethod=app.NoCutoff,
            constraints=_constraint_option(constraints),
            implicitSolvent=implicit_solvent,
            **system_options,
        )
        return cls(system, top.topology, crd.getPositions(), name=name or Path(prmtop).stem)

    @classmethod
    def from_xml(cls, system_xml: PathLike, pdb: PathLike, name=None) -> MolecularSystem:
        """Load a serialized ``System`` (XML file) with the topology/positions of a PDB."""
        system_xml = Path(system_xml)
        if not system_xml.is_file():
            raise InputError(f"system XML file {system_xml} not found: expected an existing "
                             "file")
        try:
            system = openmm.XmlSerializer.deserialize(system_xml.read_text(errors="replace"))
        except Exception as error:  # noqa: BLE001 - OpenMM raises plain Exception here
            raise InputError(f"system XML file {system_xml}: expected a System written by "
                             f"openmm.XmlSerializer, found: {one_line(error)}") from None
        if not isinstance(system, openmm.System):
            raise InputError(f"system XML file {system_xml}: expected a serialized System, "
                             f"found a serialized {type(system).__name__}")
        structure = _read_pdb(Path(pdb))
        return _named_after(system_xml, lambda: cls(system, structure.topology,
                                                    structure.getPositions(),
                                                    name=name or Path(pdb).stem))

    @classmethod
    def from_testsystem(cls, testsystem, name=None) -> MolecularSystem:
        """Wrap any ``openmmtools.testsystems.TestSystem`` instance."""
        return cls(testsystem.system, testsystem.topology, testsystem.positions,
                   name=name or type(testsystem).__name__)

    # ------------------------------------------------------------------ facts
    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return self.system.getNumParticles()

    @property
    def n_dof(self) -> int:
        """Degrees of freedom of the internal coordinates: ``3N - 6`` minus the constraints.

        >>> import openmm_trade as ot
        >>> ot.systems.load("alanine-dipeptide-vacuum").n_dof  # 22 atoms, 12 X-H constraints
        48
        """
        return 3 * self.n_atoms - 6 - int(self.constraint_lengths.size)

    @property
    def bonds(self) -> list[tuple[int, int]]:
        """Bonded atom pairs ``(i, j)``, ``i < j``, from the topology."""
        return sorted(
            (min(a.index, b.index), max(a.index, b.index)) for a, b in self.topology.bonds()
        )

    @property
    def system_xml(self) -> str:
        """The System serialized with ``openmm.XmlSerializer`` (what workers rebuild from)."""
        return openmm.XmlSerializer.serialize(self.system)

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the serialized System and the atom names; identifies the physics."""
        digest = hashlib.sha256(self.system_xml.encode())
        for atom in self.topology.atoms():
            digest.update(f"{atom.residue.name}:{atom.name};".encode())
        return digest.hexdigest()

    def __repr__(self) -> str:
        return (f"MolecularSystem(name={self.name!r}, n_atoms={self.n_atoms}, "
                f"n_constraints={len(self.constraint_lengths)})")
