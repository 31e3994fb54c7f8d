"""The ``openmm-trade`` command line: a thin layer over the Python API.

Exit codes: 0 success, 1 a run failed, 2 bad usage or an invalid configuration,
130 interrupted (Ctrl-C; resume with ``--resume``).

Example
-------
>>> from click.testing import CliRunner
>>> result = CliRunner().invoke(main, ["systems"])
>>> "alanine-dipeptide-vacuum" in result.output
True
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from . import __version__
from .config import (
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE_RANGE,
    BoundaryMD,
    boundary_temperature,
    default,
)
from .errors import OpenMMTradeError
from .progress import shown
from .run_directory import RunDirectory
from .units import temperature_label

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

#: The demo: alanine dipeptide in vacuum with the configuration's defaults (see
#: :mod:`openmm_trade.config`: 300-600 K, MD at the top of the range, where it crosses the
#: barriers that MD at 300 K does not, TRADE down to 300 K), but fewer MD frames.
DEMO_CONFIG = {
    "system": {"name": "alanine-dipeptide-vacuum"},
    "boundary": {"n_frames": 6_000},
}

#: A seconds-scale version of the demo for smoke tests (`--quick`); numbers are rough.
QUICK_OVERRIDES = {
    "boundary": {"n_frames": 300, "interval_ps": 0.2, "equilibration_ps": 1.0},
    "temperatures": {"targets": [300.0, 600.0]},
    "training": {"steps": 30},
    "sampling": {"n": 200},
    "free_energy": {"n": 200, "n_bootstrap": 20},
}


def _quiet(quiet: bool) -> bool:
    """Progress bars only on a terminal and without --quiet."""
    return not shown(quiet)


def _handle_errors(function):
    """Turn library errors into messages and exit codes instead of tracebacks."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (OpenMMTradeError, ValueError) as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(EXIT_USAGE if isinstance(err, ValueError) else EXIT_FAILED)
        except KeyboardInterrupt:
            click.echo("interrupted; continue with --resume", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def _common(function):
    """Options shared by the commands that run work."""
    for decorator in reversed([
        click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
                     default=None, help="Output directory."),
        click.option("--seed", type=int, default=None,
                     help=f"Random seed [default: {DEFAULT_SEED}; `run`: the configuration's "
                          "[compute] seed]."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
        click.option("--resume", is_flag=True,
                     help="Continue an interrupted run in --out, skipping finished stages."),
    ]):
        function = decorator(function)
    return function


def _seed(seed: int | None) -> int:
    """The ``--seed`` given, else the run's default (:data:`~openmm_trade.config.DEFAULT_SEED`)."""
    return DEFAULT_SEED if seed is None else seed


def _merge(base: dict, overrides: dict) -> dict:
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in overrides.items():
        merged.setdefault(section, {}).update(values)
    return merged


def _echo_coverage(out: Path) -> None:
    """Print the boundary coverage summary written by the run (``coverage.json``)."""
    import json

    path = RunDirectory(out).coverage
    if path.exists():
        click.echo(json.loads(path.read_text())["summary"] + "\n")


def _run_config(config, out: Path, seed, quiet: bool, resume: bool) -> Path:
    from .workflow import RunWorkflow, summary_table

    if seed is not None:
        config.compute["seed"] = seed
    workflow = RunWorkflow(config, out, resume=resume, quiet=_quiet(quiet))
    workflow.execute()
    _echo_coverage(out)
    click.echo(summary_table(out))
    click.echo(f"\nwrote {out}/ (report: {RunDirectory(out).report})")
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="openmm-trade")
@click.option("-v", "--verbose", is_flag=True, help="Log progress messages to stderr.")
def main(verbose: bool) -> None:
    """openmm-trade: one normalizing flow for a whole temperature range (TRADE).

    \b
    Start here:
      openmm-trade demo                 # alanine dipeptide, 300 -> 600 K, ~10 min
      openmm-trade run my_run.toml      # your own system / settings
    """
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


@main.command()
@_common
@click.option("--quick", is_flag=True, help="Seconds-scale settings (smoke test; rough numbers).")
@_handle_errors
def demo(out, seed, quiet, resume, quick) -> None:
    """Run the main job on alanine dipeptide (vacuum): MD at 600 K, TRADE to 300-600 K.

    Writes weighted trajectories, free energies, figures and report.md to --out
    (default ./openmm-trade-demo) and prints a summary table.

    \b
    Examples:
      openmm-trade demo
      openmm-trade demo --out demo_run --seed 2
      openmm-trade demo --out demo_run --resume   # after an interruption
    """
    from .config import validate

    data = _merge(DEMO_CONFIG, QUICK_OVERRIDES) if quick else DEMO_CONFIG
    config = validate(data, source="<demo>")
    _run_config(config, out or Path("openmm-trade-demo"), seed, quiet, resume)


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@_common
@click.option("--check", is_flag=True, help="Only validate the configuration.")
@_handle_errors
def run(config_file, out, seed, quiet, resume, check) -> None:
    """Run the whole pipeline described by a TOML CONFIG_FILE.

    See the README ("Run configuration") for the keys. Invalid files are reported
    with every problem at once and nothing is written.

    \b
    Examples:
      openmm-trade run my_run.toml --out runs/my_run
      openmm-trade run my_run.toml --check
    """
    from .config import load

    config = load(config_file)
    if check:
        click.echo(f"{config_file}: valid")
        return
    _run_config(config, out or Path(config_file.stem), seed, quiet, resume)


def _system_options(function):
    for decorator in reversed([
        click.option("--system", "system_name", default="alanine-dipeptide-vacuum",
                     show_default=True, help="Built-in system (see `openmm-trade systems`)."),
        click.option("--pdb", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Your own PDB instead of a built-in."),
        click.option("--forcefield", multiple=True,
                     default=tuple(default("system", "forcefield")),
                     show_default=True, help="Force-field XML for --pdb (repeatable)."),
    ]):
        function = decorator(function)
    return function


def _load_system(system_name: str, pdb, forcefield):
    """The system of the options, built as ``run`` builds its ``[system]`` section."""
    from .config import validate
    from .systems import system_from_spec

    spec = {"pdb": str(pdb), "forcefield": list(forcefield)} if pdb else {"name": system_name}
    return system_from_spec(validate({"system": spec}, source="options",
                                     check_api=False).system)


def _stage(run: RunDirectory, stage: str, work, energy=None) -> dict:
    """``work`` run as ``stage`` of the run folder (the workflow's bookkeeping: timed and
    recorded in ``stages.json``)."""
    from .workflow import run_stage

    return run_stage(run, stage, work,
                     evaluations=(lambda: energy.n_evaluations) if energy else lambda: 0)


@main.command()
@_system_options
@click.option("--temperature", type=float,
              default=boundary_temperature(DEFAULT_TEMPERATURE_RANGE), show_default=True,
              help="K (the default is T0 of `run`: the top of its default range).")
@click.option("--n-frames", type=int, default=BoundaryMD.n_frames, show_default=True,
              help="Frames in total, over all chains.")
@click.option("--interval-ps", type=float, default=BoundaryMD.interval_ps, show_default=True,
              help="ps between saved frames.")
@click.option("--equilibration-ps", type=float, default=BoundaryMD.equilibration_ps,
              show_default=True, help="ps of equilibration of each chain.")
@click.option("--chains", "n_chains", type=int, default=BoundaryMD.n_chains,
              help="Independent MD chains run in parallel (n-frames in total) "
                   "[default: one per core].")
@_common
@_handle_errors
def md(system_name, pdb, forcefield, temperature, n_frames, interval_ps, equilibration_ps,
       n_chains, out, seed, quiet, resume) -> None:
    """Run boundary MD and write OUT/boundary.h5 (frames with potential energies).

    The defaults are those of `run` (the [boundary] section of a configuration).
    Prints the coverage of the slow torsions (basin transitions; flagged under 10).

    \b
    Examples:
      openmm-trade md --out run1
      openmm-trade md --temperature 450 --n-frames 6000 --out run1
    """
    from .units import check_temperature
    from .workflow import check_coverage, simulate_boundary

    run = RunDirectory(out or Path("openmm-trade-md"))
    check_temperature(temperature, "--temperature")
    msys = _load_system(system_name, pdb, forcefield)

    def boundary_stage() -> dict:
        traj, record = simulate_boundary(
            msys, run, temperature=temperature, n_frames=n_frames, interval_ps=interval_ps,
            equilibration_ps=equilibration_ps, n_chains=n_chains, seed=_seed(seed),
            resume=resume, quiet=_quiet(quiet))
        return {**record, "coverage_ok": check_coverage(run, traj, msys.n_dof).ok}

    run.root.mkdir(parents=True, exist_ok=True)
    record = _stage(run, "boundary", boundary_stage)
    click.echo(f"wrote {record['frames']} frames to {run.boundary}")
    _echo_coverage(run.root)


@main.command()
@_system_options
@click.option("--boundary", "boundary_file", required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="boundary.h5 from `md`, or MD frames in any format mdtraj reads.")
@click.option("--temperature", type=float, required=True, help="Boundary temperature T0 (K).")
@click.option("--range", "t_range", type=float, nargs=2, required=True,
              help="Temperature range LOW HIGH (K).")
@click.option("--steps", type=int, default=None,
              help="Training steps [default: TrainingConfig.steps, as in `run`].")
@_common
@_handle_errors
def train(system_name, pdb, forcefield, boundary_file, temperature, t_range, steps,
          out, seed, quiet, resume) -> None:
    """Train a TemperatureFlow with TRADE; writes OUT/model.pt and OUT/checkpoints/.

    \b
    Example:
      openmm-trade train --boundary run1/boundary.h5 --temperature 600 --range 300 600 \\
          --out run1
    """
    from . import md as md_module
    from .energy import OpenMMEnergy
    from .workflow import train_model

    run = RunDirectory(out or Path("openmm-trade-train"))
    _check_temperatures(t_range, "--range")
    _check_temperatures([temperature], "--temperature", within=sorted(t_range),
                        range_name="--range")
    msys = _load_system(system_name, pdb, forcefield)
    boundary = md_module.load_boundary(boundary_file, msys)
    with OpenMMEnergy(msys) as energy:
        _stage(run, "training", lambda: {"steps": len(train_model(
            msys, energy, run, boundary, temperature=temperature,
            temperature_range=tuple(t_range), seed=_seed(seed),
            training_options={} if steps is None else {"steps": steps}, resume=resume,
            quiet=_quiet(quiet)))}, energy)
    click.echo(f"wrote {run.model}")


def _model_options(section: str):
    """Options of the commands that use a trained model at some temperatures; ``-n``
    defaults to ``[section] n`` of a configuration."""

    def decorate(function):
        for decorator in reversed([
            _system_options,
            click.option("--model", "model_file", required=True, type=click.Path(exists=True),
                         help="model.pt from `train` or `run`."),
            click.option("--temperature", type=float, multiple=True, required=True,
                         help="Temperature in K (repeatable)."),
            click.option("-n", "--n-samples", type=int, default=default(section, "n"),
                         show_default=True),
            click.option("--refine", is_flag=True,
                         help="Refine the samples with the force field (SMC: annealing from "
                              "the model to exp(-U/kT) with MALA moves)."),
        ]):
            function = decorator(function)
        return function

    return decorate


def _check_temperatures(temperatures, option: str, within=None,
                        range_name: str = "the model's range") -> None:
    """Each value a temperature > 0 K (and inside ``within``, a model's range)."""
    from . import checks
    from .units import check_temperature

    for t in temperatures:
        check_temperature(t, option)
    if within is not None:
        checks.within(temperatures, option, within, what=range_name)


def _load_model(system_name: str, pdb, forcefield, model_file, temperatures):
    """The system and the trained TemperatureFlow saved for it; ``temperatures`` checked."""
    from .flow import TemperatureFlow

    _check_temperatures(temperatures, "--temperature")
    msys = _load_system(system_name, pdb, forcefield)
    model = TemperatureFlow.load(model_file, msys)
    _check_temperatures(temperatures, "--temperature", within=model.temperature_range)
    return msys, model


@main.command()
@_model_options("sampling")
@_common
@_handle_errors
def sample(system_name, pdb, forcefield, model_file, temperature, n_samples, refine,
           out, seed, quiet, resume) -> None:
    """Draw weighted trajectories at new temperatures: OUT/samples/<T>K.h5.

    \b
    Example:
      openmm-trade sample --model run1/model.pt --temperature 450 --temperature 600 --out run1
    """
    from .energy import OpenMMEnergy
    from .workflow import draw_samples

    run = RunDirectory(out or Path("openmm-trade-samples"))
    msys, model = _load_model(system_name, pdb, forcefield, model_file, temperature)
    with OpenMMEnergy(msys) as energy:
        drawn = _stage(run, "sampling", lambda: draw_samples(
            model, energy, run, temperature, n=n_samples, seed=_seed(seed), refine=refine,
            resume=resume, quiet=_quiet(quiet)), energy)
    for t in temperature:
        row = drawn.get(temperature_label(t))
        if row is None:
            click.echo(f"{t:g} K: kept {run.sample_path(t)} (--resume)")
            continue
        extra = "" if "levels" not in row else (
            f", SMC: {row['levels']} levels, "
            f"{row['force_evaluations_per_sample']:.0f} force evaluations/sample")
        if "overlap_sigma" in row:
            extra += f", model overlap σ at T0 {row['overlap_sigma']:.2f}"
        click.echo(f"{t:g} K: ESS {row['ess']:.1%} of {n_samples}{extra} -> "
                   f"{run.sample_path(t)}")


@main.command("free-energy")
@_model_options("free_energy")
@_common
@_handle_errors
def free_energy_command(system_name, pdb, forcefield, model_file, temperature, n_samples,
                        refine, out, seed, quiet, resume) -> None:
    """Δf(T), ⟨U⟩, C_v and ESS across temperature; writes OUT/free_energy.csv.

    Δf is relative to the model's reference temperature T0.

    \b
    Example:
      openmm-trade free-energy --model run1/model.pt --temperature 300 --temperature 450 \\
          --temperature 600 --out run1
    """
    from .energy import OpenMMEnergy
    from .workflow import summary_table, temperature_profile

    run = RunDirectory(out or Path("openmm-trade-free-energy"))
    msys, model = _load_model(system_name, pdb, forcefield, model_file, temperature)
    with OpenMMEnergy(msys) as energy:
        _stage(run, "free_energy", lambda: {"ess": [float(e) for e in temperature_profile(
            model, energy, run, temperature, n=n_samples, seed=_seed(seed), refine=refine,
            quiet=_quiet(quiet)).ess]}, energy)
    click.echo(summary_table(run.root))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_handle_errors
def report(run_dir) -> None:
    """Rewrite RUN_DIR/report.md and its figures from a finished run directory.

    \b
    Example:
      openmm-trade report openmm-trade-demo
    """
    from .report import write_report

    path = write_report(run_dir, figures=True)
    click.echo(f"wrote {path}")


@main.command()
def systems() -> None:
    """List the built-in systems.

    \b
    Example:
      openmm-trade systems
    """
    from . import systems as registry

    for name in registry.available():
        click.echo(f"{name:32s} {registry.definition(name).get('description', '')}")


if __name__ == "__main__":  # pragma: no cover
    main()
