"""Registry of built-in systems, defined by the TOML files in the top-level ``systems/``.

An installed package (wheel, sdist, ``pip install .``) carries a copy of that folder in
``openmm_trade/_systems/`` (made by setup.py at build time); a checkout or an editable
install reads ``systems/`` next to the package.

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


def _systems_dir() -> Path:
    """The installed copy of the built-in systems if there is one, else the checkout's."""
    package = Path(__file__).resolve().parent
    installed = package / "_systems"
    return installed if installed.is_dir() else package.parent / "systems"


#: Folder holding the built-in definitions (PDB + TOML).
SYSTEMS_DIR = _systems_dir()

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


def system_from_spec(spec: dict) -> MolecularSystem:
    """Build the MolecularSystem described by a validated ``[system]`` section of a run
    configuration (:func:`openmm_trade.config.validate`): a built-in ``name``, an ``xml``
    System with its ``pdb``, or a ``pdb`` with a ``forcefield``.

    >>> system_from_spec({"name": "alanine-dipeptide-vacuum", "constraints": "none"}).name
    'alanine-dipeptide-vacuum'
    """
    constraints = None if spec["constraints"] == "none" else spec["constraints"]
    if "name" in spec:
        return load(spec["name"], constraints=constraints)
    if "xml" in spec:
        return MolecularSystem.from_xml(spec["xml"], spec["pdb"])
    return MolecularSystem.from_pdb(spec["pdb"], forcefield=tuple(spec["forcefield"]),
                                    constraints=constraints)
