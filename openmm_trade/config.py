"""Run configuration: a TOML file, validated up front, every problem reported at once.

A configuration has these sections (all optional except ``[system]``)::

    [system]        name = "alanine-dipeptide-vacuum"      # a built-in, or
                    pdb = "mol.pdb"; forcefield = ["amber99sbildn.xml"]; constraints = "HBonds"
                    xml = "system.xml"                     # serialized System + pdb
    [boundary]      temperature = 600.0                    # T0 in K; default: top of range
                    n_frames = 20000; interval_ps = 0.5; equilibration_ps = 20.0   # simulate
                    n_chains = 2                           # default: one chain per core, or
                    files = ["md.dcd"]; stride = 1         # your own MD (temperature needed)
    [temperatures]  range = [300.0, 600.0]; targets = [300.0, 400.0, 500.0, 600.0]
    [model]         keyword arguments of TemperatureFlow.for_system (architecture)
    [training]      fields of ot.TrainingConfig (steps, batch_size, ...; its seed defaults
                    to [compute] seed)
                    and validate_every, validation_samples, monitor_temperatures,
                    checkpoint_every, energy_budget (TRAINING_RUN_OPTIONS of ot.train)
    [sampling]      n = 10000                              # samples per target temperature
                    refine = false; refine_kernel = "mala"; refine_steps = 2   # SMC refinement
                    refine_flips = 1                       # torsion flips per SMC level
    [free_energy]   n = 10000; n_bootstrap = 200; refine = false
    [compute]       platform = "CPU"; n_workers = 1; torch_threads = 1; device = "cpu"; seed = 1
    [output]        figures = true

Example
-------
>>> cfg = validate({"system": {"name": "alanine-dipeptide-vacuum"}})
>>> cfg.boundary["temperature"], cfg.temperatures["range"]
(600.0, [300.0, 600.0])

The boundary temperature T0 defaults to the top of the range: MD at the top crosses the
barriers that MD at the bottom does not, and TRADE carries the model down the range.
A T0 at the bottom or in the middle works too (see :mod:`openmm_trade.coverage` for a check
that the boundary MD crossed its slow torsions' barriers). The defaults of the boundary MD
are :class:`BoundaryMD`'s, those of ``[training]`` :class:`~openmm_trade.training.TrainingConfig`'s;
``openmm-trade md``, ``train``, ``sample`` and ``free-energy`` take theirs from here too.
>>> validate({"system": {"name": 3}, "boundary": {"n_frames": -1}})
Traceback (most recent call last):
...
openmm_trade.errors.ConfigError: <config>: 2 problems:
  - [system] name: expected a string, got 3 (int)
  - [boundary] n_frames: expected an integer > 0, got -1 (int)
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import ConfigError, InputError

PLATFORMS = ("Reference", "CPU", "CUDA", "OpenCL")

#: seed of an ``openmm-trade`` run (``[compute] seed``, the commands' ``--seed``); the
#: library's own default (``TrainingConfig.seed``) is 0, see its Notes
DEFAULT_SEED = 1
#: temperature range of a run in K (``[temperatures] range``)
DEFAULT_TEMPERATURE_RANGE = (300.0, 600.0)


@dataclass(frozen=True)
class BoundaryMD:
    """Defaults of the boundary MD that openmm-trade runs (``[boundary]``, ``openmm-trade md``).

    >>> BoundaryMD().n_frames * BoundaryMD().interval_ps / 1000  # ns in total
    10.0
    """

    #: frames in total, over all chains
    n_frames: int = 20_000
    #: ps between saved frames
    interval_ps: float = 0.5
    #: ps of equilibration of each chain before its first frame
    equilibration_ps: float = 20.0
    #: independent chains run in parallel; None: one per core (``ot.md.available_cores()``)
    n_chains: int | None = None


def boundary_temperature(temperature_range) -> float:
    """The default T0 of a range ``[low, high]``: its top, where MD crosses the barriers
    that MD at the bottom does not (TRADE then carries the model down the range).

    >>> boundary_temperature(DEFAULT_TEMPERATURE_RANGE)
    600.0
    """
    return float(temperature_range[1])


# ---------------------------------------------------------------------------- checks
# Each check returns None when the value is acceptable, else the expected form.
def _string(value) -> str | None:
    return None if isinstance(value, str) else "a string"


def _bool(value) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _number(minimum: float = -math.inf, strict: bool = True) -> Callable:
    op = ">" if strict else ">="

    def check(value) -> str | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (value > minimum if strict else value >= minimum)
        if ok:
            return None
        return "a finite number" if minimum == -math.inf else f"a number {op} {minimum:g}"

    return check


def _integer(minimum: int | None = 1) -> Callable:
    def check(value) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and (minimum is None or value >= minimum):
            return None
        if minimum is None:
            return "an integer"
        return "an integer > 0" if minimum == 1 else f"an integer >= {minimum}"

    return check


def _list_of(item: Callable, length: int | None = None) -> Callable:
    def check(value) -> str | None:
        what = f"a list of {length} " if length else "a non-empty list of "
        form = what + (item(None) or "values")
        if not isinstance(value, list) or not value or (length and len(value) != length):
            return form
        return form if any(item(v) for v in value) else None

    return check


def _choice(*options: str) -> Callable:
    def check(value) -> str | None:
        return None if value in options else "one of " + ", ".join(map(repr, options))

    return check


#: section -> key -> (check, default); ``...`` marks "no default" (optional key).
SCHEMA: dict[str, dict[str, tuple[Callable, object]]] = {
    "system": {
        "name": (_string, ...),
        "pdb": (_string, ...),
        "xml": (_string, ...),
        "forcefield": (_list_of(_string), ["amber99sbildn.xml"]),
        "constraints": (_choice("HBonds", "AllBonds", "HAngles", "none"), "HBonds"),
    },
    "boundary": {
        "temperature": (_number(0.0), ...),  # default: the top of [temperatures] range
        "n_frames": (_integer(1), BoundaryMD.n_frames),
        "n_chains": (_integer(1), ...),  # default (None): ot.md.available_cores()
        "interval_ps": (_number(0.0), BoundaryMD.interval_ps),
        "equilibration_ps": (_number(0.0, strict=False), BoundaryMD.equilibration_ps),
        "files": (_list_of(_string), ...),
        "stride": (_integer(1), 1),
    },
    "temperatures": {
        "range": (_list_of(_number(0.0), length=2), list(DEFAULT_TEMPERATURE_RANGE)),
        "targets": (_list_of(_number(0.0)), [300.0, 400.0, 500.0, 600.0]),
    },
    "model": {},      # validated against TemperatureFlow.for_system's keywords
    "training": {},   # validated against TrainingConfig and TRAINING_RUN_OPTIONS
    "sampling": {"n": (_integer(1), 10_000), "refine": (_bool, False),
                 "refine_kernel": (_choice("mala", "hmc"), "mala"),
                 "refine_steps": (_integer(1), 2), "refine_flips": (_integer(0), 1)},
    "free_energy": {"n": (_integer(1), 10_000), "n_bootstrap": (_integer(1), 200),
                    "refine": (_bool, False)},
    "compute": {
        "platform": (_choice(*PLATFORMS), "CPU"),
        "n_workers": (_integer(1), 1),
        "torch_threads": (_integer(1), 1),
        "device": (_string, "cpu"),
        "seed": (_integer(0), DEFAULT_SEED),
    },
    "output": {"figures": (_bool, True)},
}

#: run-control keywords of ``ot.train`` that ``[training]`` may set (the run sets the
#: others: checkpoint, resume, history_csv, quiet, and device from ``[compute]``)
TRAINING_RUN_OPTIONS: dict[str, Callable] = {
    "validate_every": _integer(1),
    "validation_samples": _integer(1),
    "monitor_temperatures": _list_of(_number(0.0)),
    "checkpoint_every": _integer(1),
    "energy_budget": _integer(1),
}

#: keywords of TemperatureFlow.for_system that the run fills in itself (not in TOML)
_MODEL_SET_BY_RUN = {"msys", "boundary", "temperature_range", "reference_temperature",
                     "boundary_temperature", "device", "dtype", "architecture"}


def default(section: str, key: str):
    """The default of ``[section] key`` (a copy), e.g. for a command-line option.

    >>> default("boundary", "n_frames") == BoundaryMD.n_frames
    True
    """
    value = SCHEMA[section][key][1]
    if value is ...:
        raise KeyError(f"[{section}] {key} has no fixed default")
    return copy.deepcopy(value)


@dataclass
class RunConfig:
    """A validated run configuration; one dict per TOML section, defaults filled in."""

    system: dict
    boundary: dict
    temperatures: dict
    model: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)
    free_energy: dict = field(default_factory=dict)
    compute: dict = field(default_factory=dict)
    output: dict = field(default_factory=dict)
    source: str = "<config>"

    @property
    def simulate_boundary(self) -> bool:
        """True when the boundary MD is run by openmm-trade (no ``files`` given)."""
        return "files" not in self.boundary

    def as_dict(self) -> dict:
        """The sections as a plain nested dict (what ``to_toml`` writes)."""
        return {name: copy.deepcopy(getattr(self, name)) for name in SCHEMA}

    def to_toml(self) -> str:
        """Serialise to TOML text that :func:`load` reads back to an equal config."""
        lines = []
        for section, values in self.as_dict().items():
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {_toml_value(val)}" for key, val in values.items())
            lines.append("")
        return "\n".join(lines)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _check_model_section(values: dict, problems: list[str]) -> None:
    """``[model]`` keys: the fields of :class:`~openmm_trade.flow.FlowArchitecture` and the
    other keywords of ``TemperatureFlow.for_system`` that a run does not set itself."""
    from .flow import FlowArchitecture, TemperatureFlow

    params = dict(inspect.signature(TemperatureFlow.for_system).parameters)
    params.update(inspect.signature(FlowArchitecture).parameters)
    keywords = {name: p for name, p in params.items()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                and name not in _MODEL_SET_BY_RUN}
    for key, value in values.items():
        if key not in keywords:
            problems.append("[model] " + _unknown(key, keywords))
            continue
        default = keywords[key].default
        if default is inspect.Parameter.empty or default is None:
            continue
        expected = (int, float) if isinstance(default, (int, float)) else type(default)
        if isinstance(default, bool):
            expected = bool
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            problems.append(f"[model] {key}: expected {type(default).__name__} like "
                            f"{default!r}, got {value!r} ({type(value).__name__})")


def _unknown(key: str, known) -> str:
    return f"{key}: unknown key; known keys: " + ", ".join(sorted(known))


def _type_check(hint) -> Callable:
    """The check of a dataclass field's type (``X | None`` as ``X``: TOML has no None)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [h for h in typing.get_args(hint) if h is not type(None)]
    if hint is bool:
        return _bool
    if hint is int:
        return _integer(None)
    if hint is float:
        return _number()
    if hint is str:
        return _string
    raise TypeError(f"no TOML check for fields of type {hint!r}")


def _check_training_section(values: dict, problems: list[str]) -> None:
    """``[training]`` keys: :class:`~openmm_trade.training.TrainingConfig` fields (their
    types, then their values as ``TrainingConfig`` checks them) and
    :data:`TRAINING_RUN_OPTIONS`."""
    from .training import TrainingConfig

    hints = typing.get_type_hints(TrainingConfig)
    checks = {f.name: _type_check(hints[f.name]) for f in fields(TrainingConfig)}
    checks.update(TRAINING_RUN_OPTIONS)
    well_typed = True
    for key, value in values.items():
        if key not in checks:
            problems.append("[training] " + _unknown(key, checks))
            continue
        expected = checks[key](value)
        if expected:
            well_typed = False
            problems.append(f"[training] {key}: expected {expected}, got {value!r} "
                            f"({type(value).__name__})")
    if well_typed:
        try:
            TrainingConfig(**{k: v for k, v in values.items() if k in hints})
        except InputError as error:
            problems.append(f"[training] {error}")


def validate(data: dict, source: str = "<config>", check_api: bool = True) -> RunConfig:
    """Validate a parsed TOML dict and fill in defaults.

    Parameters
    ----------
    data : dict
        Parsed TOML.
    source : str
        File name used in messages.
    check_api : bool
        Also check ``[model]`` keys against ``TemperatureFlow.for_system`` and
        ``[training]`` keys against ``TrainingConfig`` (this imports torch).

    Raises
    ------
    ConfigError
        Listing every problem: unknown sections or keys, wrong types, impossible values.
    """
    problems: list[str] = []
    sections: dict[str, dict] = {}
    for name in data:
        if name not in SCHEMA:
            problems.append(f"[{name}]: unknown section; known sections: " + ", ".join(SCHEMA))
    for section, schema in SCHEMA.items():
        given = data.get(section, {})
        if not isinstance(given, dict):
            problems.append(f"[{section}]: expected a table, got {given!r}")
            given = {}
        values = dict(given)
        if schema:
            for key, value in given.items():
                if key not in schema:
                    problems.append(f"[{section}] {key}: unknown key; known keys: "
                                    + ", ".join(schema))
                    continue
                expected = schema[key][0](value)
                if expected:
                    problems.append(f"[{section}] {key}: expected {expected}, got "
                                    f"{value!r} ({type(value).__name__})")
            for key, (_, default) in schema.items():
                if key not in values and default is not ...:
                    values[key] = copy.deepcopy(default)
        elif check_api and values:
            (_check_model_section if section == "model" else _check_training_section)(
                values, problems)
        sections[section] = values
    _check_relations(sections, problems)
    _raise_problems(source, problems)
    return RunConfig(**sections, source=source)


def _raise_problems(source: str, problems: list[str]) -> None:
    """A :class:`ConfigError` listing ``problems`` (one line for one problem), if any."""
    if len(problems) == 1:
        raise ConfigError(f"{source}: {problems[0]}")
    if problems:
        raise ConfigError(f"{source}: {len(problems)} problems:\n"
                          + "\n".join(f"  - {p}" for p in problems))


def _check_relations(sections: dict[str, dict], problems: list[str]) -> None:
    """Checks that involve several keys."""
    system = sections["system"]
    if ("name" in system) == ("pdb" in system):
        problems.append("[system]: give exactly one of 'name' (a built-in system) or 'pdb'")
    if "files" in sections["boundary"] and "temperature" not in sections["boundary"]:
        problems.append("[boundary] temperature: required with 'files' (the temperature of "
                        "your MD)")
    if "xml" in system and "pdb" not in system:
        problems.append("[system] xml: needs 'pdb' for the topology and positions")
    t_range = sections["temperatures"].get("range")
    targets = sections["temperatures"].get("targets")
    if _list_of(_number(0.0), 2)(t_range) is None:
        low, high = t_range
        if low >= high:
            problems.append(f"[temperatures] range: expected [low, high] with low < high, "
                            f"got {t_range}")
        elif _list_of(_number(0.0))(targets) is None:
            outside = [t for t in targets if not low <= t <= high]
            if outside:
                problems.append(f"[temperatures] targets: expected values within range "
                                f"{t_range}, got {outside}")
        t0 = sections["boundary"].get("temperature")
        if t0 is None and "files" not in sections["boundary"]:
            sections["boundary"]["temperature"] = t0 = boundary_temperature(t_range)
        if _number(0.0)(t0) is None and not low <= t0 <= high:
            problems.append(f"[boundary] temperature: expected a value within "
                            f"[temperatures] range {t_range}, got {t0}")


def load(path: str | os.PathLike, check_api: bool = True) -> RunConfig:
    """Read and validate a TOML run configuration; relative paths resolve to its folder.

    The files it names (``[system] pdb``/``xml``, ``[boundary] files``) must exist.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "run.toml"
    >>> _ = p.write_text('[system]\\nname = "alanine-dipeptide-vacuum"\\n')
    >>> load(p).system["name"]
    'alanine-dipeptide-vacuum'
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found (expected an existing TOML "
                          "file)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML: expected TOML text, found an error: "
                          f"{err}") from None
    config = validate(data, source=str(path), check_api=check_api)
    base = path.resolve().parent
    for key in ("pdb", "xml"):
        if key in config.system:
            config.system[key] = str(base / config.system[key])
    if "files" in config.boundary:
        config.boundary["files"] = [str(base / f) for f in config.boundary["files"]]
    named = [(f"[system] {key}", config.system[key]) for key in ("pdb", "xml")
             if key in config.system]
    named += [("[boundary] files", f) for f in config.boundary.get("files", [])]
    _raise_problems(str(path), [f"{where}: expected an existing file, found none at {file}"
                                for where, file in named if not Path(file).is_file()])
    return config
