"""openmm_trade: temperature transfer of Boltzmann generators (TRADE) for OpenMM systems.

The public names are loaded lazily, so ``import openmm_trade`` is quick and the command
line starts fast; each name lives in the module given in ``_PUBLIC``.

Example
-------
>>> import openmm_trade as ot
>>> ot.systems.available()[:2]
['ace-ala3-nme-implicit', 'ace-leu-nme-implicit']
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> (module, attribute or None for the module itself)
_PUBLIC = {
    "MolecularSystem": ("system", "MolecularSystem"),
    "OpenMMEnergy": ("energy", "OpenMMEnergy"),
    "ZMatrix": ("zmatrix", "ZMatrix"),
    "InternalCoordinates": ("coordinates", "InternalCoordinates"),
    "TemperatureFlow": ("flow", "TemperatureFlow"),
    "Trainer": ("training", "Trainer"),
    "TrainingConfig": ("training", "TrainingConfig"),
    "train": ("training", "train"),
    "WeightedTrajectory": ("sampling", "WeightedTrajectory"),
    "sample": ("sampling", "sample"),
    "SMC": ("refine", "SMC"),
    "refine": ("refine", None),
    "KB": ("units", "KB"),
    "systems": ("systems", None),
    "md": ("md", None),
    "flow": ("flow", None),
    "trade": ("trade", None),
    "free_energy": ("free_energy", None),
    "cv": ("cv", None),
    "coverage": ("coverage", None),
    "metrics": ("metrics", None),
    "plots": ("plots", None),
    "config": ("config", None),
    "errors": ("errors", None),
    "units": ("units", None),
    "toys": ("toys", None),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    try:
        module_name, attribute = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'openmm_trade' has no attribute {name!r}") from None
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
