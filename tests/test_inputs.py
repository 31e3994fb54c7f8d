"""Bad files and arguments: one clear line, through the command line and the Python API.

Every case of the table is run twice:

* through the command line: exit code 2, exactly one line on stderr that names the file
  or argument (and says what was expected and what was found), no traceback, and the
  output folder untouched (not created, or byte for byte as it was);
* through the Python API: an :class:`~openmm_trade.errors.InputError` (or a subclass) whose
  message is one line naming the same file or argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openmm
import pytest
import torch
from click.testing import CliRunner
from openmm import app

import openmm_trade as ot
from openmm_trade import config as run_config
from openmm_trade import md
from openmm_trade.cli import main
from openmm_trade.errors import InputError
from openmm_trade.flow import TemperatureFlow
from openmm_trade.system import MolecularSystem
from openmm_trade.training import Trainer

torch.set_num_threads(1)

RANGE = (300.0, 600.0)
#: tiny settings shared by the command line and the API, so that checkpoints match
TRAIN = ["--temperature", "300", "--range", "300", "600", "--steps", "1", "--quiet"]


@dataclass
class Inputs:
    """Good files to start from (built once), and the folder that holds them."""

    folder: Path
    msys: MolecularSystem
    other: MolecularSystem  # another molecule (ACE-NME, 12 atoms)
    pdb: Path
    other_pdb: Path
    boundary: Path
    other_boundary: Path
    model: Path
    other_model: Path
    checkpoint: Path
    other_checkpoint: Path


def _invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Inputs:
    folder = tmp_path_factory.mktemp("good")
    msys = ot.systems.load("alanine-dipeptide-vacuum")
    pdb = Path(ot.systems.path("alanine-dipeptide.pdb"))
    lines = pdb.read_text().splitlines()
    other_pdb = folder / "ace-nme.pdb"  # the dipeptide without its alanine: another molecule
    other_pdb.write_text("\n".join(line for line in lines if not (
        line.startswith(("ATOM", "HETATM")) and line[17:20] == "ALA")) + "\n")
    other = MolecularSystem.from_pdb(other_pdb)
    paths = {}
    for name, system, source in (("", msys, None), ("other_", other, other_pdb)):
        boundary = folder / f"{name}boundary.h5"
        md.simulate(system, 300.0, n_frames=8, interval_ps=0.05, seed=0, equilibration_ps=0.1,
                    output=boundary, quiet=True)
        traj = md.load_trajectory(boundary)
        model = folder / f"{name}model.pt"
        TemperatureFlow.for_system(system, traj, RANGE, hidden=8, n_blocks=1).save(model)
        run = folder / f"{name}run"
        pdb_option = [] if source is None else ["--pdb", source]
        result = _invoke(["train", *pdb_option, "--boundary", boundary, *TRAIN, "--out", run])
        assert result.exit_code == 0, result.output + repr(result.exception)
        paths |= {f"{name}boundary": boundary, f"{name}model": model,
                  f"{name}checkpoint": run / "checkpoints" / "checkpoint.pt"}
    return Inputs(folder, msys, other, pdb, other_pdb, **paths)


# ---------------------------------------------------------------------------- bad files
def _write(path: Path, content: bytes | str) -> Path:
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def _truncated(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    return _write(target, data[: len(data) // 2])


def _random_bytes(target: Path) -> Path:
    return _write(target, np.random.default_rng(0).bytes(4096))


def _resaved(source: Path, target: Path, change: Callable[[dict], None]) -> Path:
    payload = torch.load(source, weights_only=False)
    change(payload)
    torch.save(payload, target)
    return target


def _pdb_text(good: Inputs) -> str:
    return good.pdb.read_text()


def _trajectory(good: Inputs, target: Path, frames: slice | None = None, nan: bool = False
                ) -> Path:
    traj = md.load_trajectory(good.boundary)
    traj = traj[frames] if frames is not None else traj
    xyz = traj.xyz.copy()
    if nan:
        xyz[1] = np.nan
    traj.xyz = xyz
    traj.save_hdf5(str(target))
    return target


def _periodic_xml(good: Inputs, target: Path) -> Path:
    pdb = app.PDBFile(str(good.pdb))
    pdb.topology.setUnitCellDimensions(openmm.Vec3(3, 3, 3) * openmm.unit.nanometer)
    system = app.ForceField("amber99sbildn.xml").createSystem(pdb.topology,
                                                             nonbondedMethod=app.PME)
    target.write_text(openmm.XmlSerializer.serialize(system))
    return target


def _config(folder: Path, system: str) -> Path:
    path = folder / "run.toml"
    path.write_text(f"{system}\n[boundary]\ntemperature = 300.0\nn_frames = 4\n")
    return path


# ---------------------------------------------------------------------------- the table
@dataclass
class Case:
    """One bad input: how to make it, the command line, the API call, what to name."""

    name: str
    cli: Callable[[Inputs, Path], list]          # arguments; the test appends --out
    api: Callable[[Inputs, Path], object] | None  # must raise InputError
    names: Callable[[Inputs, Path], str]         # the file or argument the message names
    out_exists: bool = False                     # the output folder holds a run already


def _md_cli(pdb: Callable, forcefield: str = "amber99sbildn.xml"):
    return lambda g, d: ["md", "--pdb", pdb(g, d), "--forcefield", forcefield,
                         "--n-frames", "2", "--interval-ps", "0.05"]


def _sample_cli(model: Callable, temperature: str = "400"):
    return lambda g, d: ["sample", "--model", model(g, d), "--temperature", temperature,
                         "-n", "4"]


def _train_cli(boundary: Callable, temperature: str = "300", resume: bool = False):
    return lambda g, d: ["train", "--boundary", boundary(g, d), "--temperature", temperature,
                         "--range", "300", "600", "--steps", "1", "--quiet",
                         *(["--resume"] if resume else [])]


def _resume_api(g: Inputs, checkpoint: Path):
    """Trainer.load_checkpoint on a model/settings like those the CLI trains."""
    boundary = md.load_trajectory(g.boundary)
    model = TemperatureFlow.for_system(g.msys, boundary, RANGE, reference_temperature=300.0)
    with ot.OpenMMEnergy(g.msys) as energy:
        trainer = Trainer(model, energy, boundary=boundary, boundary_temperature=300.0,
                          temperature_range=RANGE, steps=1, seed=1, quiet=True)
        trainer.load_checkpoint(checkpoint)


def _train_api(g: Inputs, boundary_temperature: float):
    boundary = md.load_trajectory(g.boundary)
    model = TemperatureFlow.for_system(g.msys, boundary, RANGE, hidden=8, n_blocks=1)
    with ot.OpenMMEnergy(g.msys) as energy:
        ot.train(model, energy, boundary=boundary, boundary_temperature=boundary_temperature,
                 temperature_range=RANGE, steps=1, quiet=True)


def _checkpoint_case(name: str, make: Callable[[Inputs, Path], Path]) -> Case:
    def cli(g, d):
        target = d / "out" / "checkpoints" / "checkpoint.pt"
        target.parent.mkdir(parents=True)
        make(g, target)
        return _train_cli(lambda g, d: g.boundary, resume=True)(g, d)

    def api(g, d):
        return _resume_api(g, make(g, d / "checkpoint.pt"))

    return Case(name, cli, api, lambda g, d: "checkpoint.pt", out_exists=True)


def _model_case(name: str, make: Callable[[Inputs, Path], Path]) -> Case:
    return Case(name, _sample_cli(lambda g, d: make(g, d / "model.pt")),
                lambda g, d: TemperatureFlow.load(make(g, d / "model.pt"), g.msys),
                lambda g, d: "model.pt")


def _pdb_case(name: str, make: Callable[[Inputs, Path], Path]) -> Case:
    return Case(name, _md_cli(lambda g, d: make(g, d / "bad.pdb")),
                lambda g, d: MolecularSystem.from_pdb(make(g, d / "bad.pdb")),
                lambda g, d: "bad.pdb")


def _boundary_case(name: str, make: Callable[[Inputs, Path], Path]) -> Case:
    return Case(name, _train_cli(lambda g, d: make(g, d / "bad.h5")),
                lambda g, d: md.load_boundary(make(g, d / "bad.h5"), g.msys),
                lambda g, d: "bad.h5")


def _temperature_case(name: str, value: float, word: str) -> Case:
    def api(g, d):
        with ot.OpenMMEnergy(g.msys) as energy:
            ot.sample(TemperatureFlow.load(g.model, g.msys), energy, temperature=value, n=4)

    return Case(name, _sample_cli(lambda g, d: g.model, str(value)), api, lambda g, d: word)


CASES = [
    _pdb_case("pdb-empty", lambda g, p: _write(p, "")),
    _pdb_case("pdb-garbage", lambda g, p: _write(p, "hello\n")),
    _pdb_case("pdb-truncated-mid-line", lambda g, p: _write(p, _pdb_text(g)[:700])),
    _pdb_case("pdb-truncated-at-a-line", lambda g, p: _write(
        p, "".join(_pdb_text(g).splitlines(keepends=True)[:12]))),
    _pdb_case("pdb-unknown-residue", lambda g, p: _write(p, _pdb_text(g).replace("ALA", "XYZ"))),
    Case("forcefield-missing", _md_cli(lambda g, d: g.pdb, "no-such-forcefield.xml"),
         lambda g, d: MolecularSystem.from_pdb(g.pdb, forcefield=("no-such-forcefield.xml",)),
         lambda g, d: "no-such-forcefield.xml"),
    Case("forcefield-foreign",
         lambda g, d: _md_cli(lambda g, d: g.pdb, str(_write(d / "page.xml", "<html/>")))(g, d),
         lambda g, d: MolecularSystem.from_pdb(
             g.pdb, forcefield=(str(_write(d / "page.xml", "<html/>")),)),
         lambda g, d: "page.xml"),
    Case("forcefield-not-xml",
         lambda g, d: _md_cli(lambda g, d: g.pdb, str(_write(d / "ff.xml", "hello")))(g, d),
         lambda g, d: MolecularSystem.from_pdb(g.pdb, forcefield=(str(_write(d / "ff.xml",
                                                                            "hello")),)),
         lambda g, d: "ff.xml"),
    _model_case("model-truncated", lambda g, p: _truncated(g.model, p)),
    _model_case("model-random-bytes", lambda g, p: _random_bytes(p)),
    _model_case("model-of-another-molecule", lambda g, p: _write(p, g.other_model.read_bytes())),
    _model_case("model-other-format-version", lambda g, p: _resaved(
        g.model, p, lambda payload: payload.update(version=99))),
    _model_case("model-is-a-checkpoint", lambda g, p: _write(p, g.checkpoint.read_bytes())),
    _checkpoint_case("checkpoint-truncated", lambda g, p: _truncated(g.checkpoint, p)),
    _checkpoint_case("checkpoint-random-bytes", lambda g, p: _random_bytes(p)),
    _checkpoint_case("checkpoint-of-another-molecule",
                     lambda g, p: _write(p, g.other_checkpoint.read_bytes())),
    _checkpoint_case("checkpoint-other-format-version", lambda g, p: _resaved(
        g.checkpoint, p, lambda state: state.update(format="openmm_trade.training/99"))),
    _boundary_case("boundary-of-another-molecule",
                   lambda g, p: _write(p, g.other_boundary.read_bytes())),
    _boundary_case("boundary-nan-frame", lambda g, p: _trajectory(g, p, nan=True)),
    _boundary_case("boundary-zero-frames", lambda g, p: _trajectory(g, p, frames=slice(0, 0))),
    _boundary_case("boundary-not-a-trajectory", lambda g, p: _random_bytes(p)),
    _temperature_case("temperature-zero", 0.0, "temperature"),
    _temperature_case("temperature-negative", -5.0, "temperature"),
    _temperature_case("temperature-nan", math.nan, "temperature"),
    Case("temperature-outside-range", _train_cli(lambda g, d: g.boundary, temperature="700"),
         lambda g, d: _train_api(g, boundary_temperature=700.0),
         lambda g, d: "temperature"),
    Case("sample-temperature-outside-model-range", _sample_cli(lambda g, d: g.model, "900"),
         None, lambda g, d: "temperature"),
    Case("periodic-system",
         lambda g, d: ["run", _config(d, f'[system]\npdb = "{g.pdb}"\n'
                                         f'xml = "{_periodic_xml(g, d / "box.xml")}"')],
         lambda g, d: MolecularSystem.from_xml(_periodic_xml(g, d / "box.xml"), g.pdb),
         lambda g, d: "periodic"),
    Case("config-names-a-missing-file",
         lambda g, d: ["run", _config(d, '[system]\npdb = "missing.pdb"')],
         lambda g, d: run_config.load(_config(d, '[system]\npdb = "missing.pdb"')),
         lambda g, d: "missing.pdb"),
]


def _snapshot(folder: Path) -> dict | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_command_line_prints_one_line_and_writes_nothing(case, good, tmp_path):
    args = case.cli(good, tmp_path)
    out = tmp_path / "out"
    assert out.exists() == case.out_exists
    before = _snapshot(out)
    result = CliRunner().invoke(main, [str(a) for a in args] + ["--out", str(out)])
    lines = result.stderr.splitlines()
    print(f"{case.name}: {result.stderr.strip()}")
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert case.names(good, tmp_path) in lines[0]
    assert "expected" in lines[0] or "must" in lines[0], lines[0]
    assert _snapshot(out) == before


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_api_raises_an_input_error_naming_the_input(case, good, tmp_path, monkeypatch):
    if case.api is None:
        pytest.skip("a command-line check only (the API warns outside the model's range)")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        case.api(good, tmp_path)
    message = str(info.value)
    print(f"{case.name}: {type(info.value).__name__}: {message}")
    assert "\n" not in message
    assert case.names(good, tmp_path) in message
