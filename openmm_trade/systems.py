"""Registry of built-in systems, defined by the TOML files in the top-level ``systems/``.

Example
-------
>>> import openmm_trade as ot
>>> ot.systems.available()[:2]
['ace-ala3-nme-implicit', 'ace-leu-nme-implicit']
>>> ot.systems.load("alanine-dipeptide-vacuum", constraints=None).constraint_lengths.size
0
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from .errors import InputError
from .system import MolecularSystem

#: Folder holding the built-in definitions (PDB + TOML).
SYSTEMS_DIR = Path(__file__).resolve().parent.parent / "systems"

_UNSET = object()


def path(filename: str) -> Path:
    """Absolute path of a file shipped in the built-in systems folder."""
    return SYSTEMS_DIR / filename


def available() -> list[str]:
    """Names of the built-in systems, sorted."""
    return sorted(p.stem for p in SYSTEMS_DIR.glob("*.toml"))


def definition(name: str) -> dict:
    """The parsed TOML definition of a built-in system."""
    names = available()
    if name not in names:
        raise InputError(f"unknown system {name!r}; available systems: {', '.join(names)}")
    with open(SYSTEMS_DIR / f"{name}.toml", "rb") as handle:
        return tomllib.load(handle)


def load(name: str, constraints=_UNSET) -> MolecularSystem:
    """Build a built-in system.

    Parameters
    ----------
    name : str
        One of :func:`available`.
    constraints : None or str, optional
        Override the definition's constraints; ``None`` gives the unconstrained variant.
    """
    spec = definition(name)
    chosen = spec.get("constraints", "HBonds") if constraints is _UNSET else constraints
    return MolecularSystem.from_pdb(
        path(spec["pdb"]), forcefield=tuple(spec["forcefield"]), constraints=chosen, name=name
    )
