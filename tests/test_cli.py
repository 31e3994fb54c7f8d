"""The command line: help texts, a tiny end-to-end run, invalid configs, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import openmm_trade as ot
from openmm_trade.cli import main

COMMANDS = ["demo", "run", "md", "train", "sample", "free-energy", "report", "systems"]

TINY_RUN = """
[system]
name = "alanine-dipeptide-vacuum"
[boundary]
temperature = 300.0
n_frames = 60
interval_ps = 0.1
equilibration_ps = 0.2
[temperatures]
range = [300.0, 450.0]
targets = [300.0, 450.0]
[model]
hidden = 16
n_blocks = 1
[training]
steps = 6
[sampling]
n = 64
[free_energy]
n = 64
n_bootstrap = 10
"""

OUTPUTS = ["config.toml", "run.log", "stages.json", "boundary.h5", "model.pt",
           "training_history.csv", "samples/300K.h5", "samples/450K.h5", "free_energy.csv",
           "populations.csv", "figures/ess.png", "figures/ramachandran.png", "report.md",
           "coverage.json"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_command_defaults_are_the_configuration_defaults():
    """`md`, `sample`, `free-energy` and --seed default to what `run` uses, and say so."""
    from openmm_trade import cli, config

    cfg = config.validate({"system": {"name": "alanine-dipeptide-vacuum"}})

    def defaults(command):
        return {p.name: p.default for p in main.commands[command].params}

    md = defaults("md")
    help_text = " ".join(CliRunner().invoke(main, ["md", "--help"]).output.split())
    for key in ("temperature", "n_frames", "interval_ps", "equilibration_ps"):
        assert md[key] == cfg.boundary[key], key
        assert f"[default: {cfg.boundary[key]}]" in help_text, key
    assert md["n_chains"] == cfg.boundary.get("n_chains")  # None: one chain per core
    assert list(md["forcefield"]) == cfg.system["forcefield"]
    assert defaults("sample")["n_samples"] == cfg.sampling["n"]
    assert defaults("free-energy")["n_samples"] == cfg.free_energy["n"]
    assert md["seed"] is None and cli._seed(None) == cfg.compute["seed"]
    assert f"Random seed [default: {cfg.compute['seed']};" in help_text


def test_systems_lists_builtins_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "openmm_trade.cli", "systems"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "alanine-dipeptide-implicit" in result.stdout


def test_invalid_config_exits_2_and_writes_nothing(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[system]\nname = 'alanine-dipeptide-vacuum'\n"
                      "[boundary]\ntemperature = 0\n[training]\nstepz = 3\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 2
    assert "[boundary] temperature: expected a number > 0" in result.output
    assert "[training] stepz: unknown key" in result.output
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A complete tiny run through the real command line (seconds-scale settings)."""
    folder = tmp_path_factory.mktemp("cli")
    config = folder / "tiny.toml"
    config.write_text(TINY_RUN)
    out = folder / "run"
    result = CliRunner().invoke(main, ["run", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return config, out, result.output


def test_run_writes_every_documented_output(tiny_run):
    _, out, output = tiny_run
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert "ESS" in output and "450.0" in output
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == ["boundary", "training", "sampling", "free_energy", "figures",
                            "report"]
    assert stages["training"]["energy_evaluations"] > 0
    assert "## Free energies" in (out / "report.md").read_text()
    # the overlap σ on held-out boundary frames: in the summary, the report and the model
    assert "Overlap at T0: σ = " in output and "on 6 held-out boundary frames" in output
    assert "## Overlap of the trained model" in (out / "report.md").read_text()
    import torch

    metadata = torch.load(out / "model.pt", weights_only=True)["metadata"]
    assert metadata["holdout_frames"] == 6 and metadata["overlap_sigma"] > 0
    # boundary coverage: 60 frames cannot cross 10 times, so the flag is raised everywhere
    coverage = json.loads((out / "coverage.json").read_text())
    assert [t["name"] for t in coverage["torsions"]] == ["phi", "psi"] and not coverage["ok"]
    assert stages["boundary"]["coverage_ok"] is False
    assert "coverage of 60 boundary frames" in output and "WARNING" in output
    report = (out / "report.md").read_text()
    assert "## Boundary coverage" in report and "**Warning:** phi, psi" in report
    assert "## Ring closure" not in report and "ring_closure" not in stages["sampling"]["300K"]


def test_run_reports_broken_rings_of_a_ring_molecule(tmp_path):
    config = tmp_path / "proline.toml"
    config.write_text(TINY_RUN.replace("alanine-dipeptide-vacuum", "ace-pro-nme-implicit")
                      + "[output]\nfigures = false\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    record = json.loads((out / "stages.json").read_text())["sampling"]["300K"]
    # the oracle: recomputed from the files the run wrote
    msys = ot.systems.load("ace-pro-nme-implicit")
    wt = ot.WeightedTrajectory.load(out / "samples" / "300K.h5")
    expected = ot.metrics.ring_closure_cost(wt.samples, wt.log_weights, msys,
                                            ot.md.load_trajectory(out / "boundary.h5"))
    assert record["ring_closure"] == pytest.approx(expected)
    assert 0 < expected["broken_fraction"] <= 1  # six training steps cannot close a ring
    report = (out / "report.md").read_text()
    row = next(line for line in report.split("## Ring closure")[1].splitlines()
               if line.startswith("| 300K |"))
    assert f"| {expected['broken_fraction']:.1%} | {expected['broken_weight']:.2%} |" in row


def test_sampling_goes_on_when_ring_closure_cannot_be_measured(tmp_path, caplog):
    """Boundary frames that hold the ring-closing bond at one length (σ = 0) give no
    yardstick: the samples are still drawn and saved, with a warning instead of the record."""
    import mdtraj
    from conftest import short_md_frames

    from openmm_trade.run_directory import RunDirectory
    from openmm_trade.workflow import draw_samples

    msys = ot.systems.load("ace-pro-nme-implicit")
    frames = short_md_frames(msys, n_frames=20, seed=5)
    model = ot.TemperatureFlow.for_system(msys, frames, temperature_range=(300.0, 450.0),
                                          hidden=8, n_blocks=1, seed=0)
    run = RunDirectory(tmp_path)
    frozen = mdtraj.Trajectory(np.repeat(frames[:1], 4, axis=0), msys.mdtraj_topology)
    ot.md.save_trajectory(ot.md.attach_energies(frozen, np.zeros(4)), run.boundary)
    with ot.OpenMMEnergy(msys) as energy:
        summary = draw_samples(model, energy, run, [300.0], n=8, seed=0, quiet=True)
    assert "ring_closure" not in summary["300K"] and run.sample_path(300.0).exists()
    assert "ring closure not measured" in caplog.text and "fixed length" in caplog.text


def test_rerun_without_resume_refuses_a_used_directory(tiny_run):
    config, out, _ = tiny_run
    result = CliRunner().invoke(main, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 2 and "--resume" in result.output


def test_resume_accepts_the_same_configuration_in_another_key_order(tiny_run):
    config_file, out, _ = tiny_run
    written = (out / "config.toml").read_text()
    sections = written.strip().split("\n\n")
    try:
        (out / "config.toml").write_text("\n\n".join(reversed(sections)) + "\n")
        result = CliRunner().invoke(main, ["run", str(config_file), "--out", str(out),
                                           "--resume", "--quiet"])
        assert result.exit_code == 0, result.output
        changed = TINY_RUN.replace("n = 64\n[free_energy]", "n = 65\n[free_energy]")
        other = config_file.with_name("other.toml")
        other.write_text(changed)
        result = CliRunner().invoke(main, ["run", str(other), "--out", str(out), "--resume"])
        assert result.exit_code == 2 and "configuration differs" in result.output
    finally:
        (out / "config.toml").write_text(written)


def test_resume_skips_finished_stages(tiny_run):
    config, out, _ = tiny_run
    stages = json.loads((out / "stages.json").read_text())
    del stages["free_energy"], stages["figures"], stages["report"]
    (out / "stages.json").write_text(json.dumps(stages))
    before = {p: (out / p).stat().st_mtime_ns for p in ["boundary.h5", "model.pt"]}
    result = CliRunner().invoke(main, ["run", str(config), "--out", str(out), "--resume",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert {p: (out / p).stat().st_mtime_ns for p in before} == before
    assert set(json.loads((out / "stages.json").read_text())) >= {"free_energy", "report"}


def test_resume_after_a_killed_run(tmp_path):
    """Kill the run during training; --resume finishes without redoing the boundary MD."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_RUN.replace("steps = 6", "steps = 150\ncheckpoint_every = 5"))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "openmm_trade.cli", "run", str(config), "--out",
               str(out), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = tmp_path / "first-run.log"
    # Wait for the first training checkpoint however long a loaded machine takes (the suite's
    # --timeout bounds it); a fixed count of short sleeps failed by chance under load.
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            while not list((out / "checkpoints").glob("*")) and process.poll() is None:
                time.sleep(0.1)
        finally:
            process.kill()
            process.wait()
    assert list((out / "checkpoints").glob("*")), log.read_text()[-3000:]
    stages = json.loads((out / "stages.json").read_text())
    assert "boundary" in stages and "training" not in stages
    boundary_mtime = (out / "boundary.h5").stat().st_mtime_ns
    result = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "boundary.h5").stat().st_mtime_ns == boundary_mtime
    assert Path(out / "report.md").is_file()
    history = (out / "training_history.csv").read_text().splitlines()
    assert len(history) == 1 + 150  # header + one row per step, none lost or repeated


def test_step_by_step_commands(tmp_path):
    """md -> train -> sample -> free-energy, each a separate command on the same folder."""
    runner = CliRunner()
    out = str(tmp_path)

    def invoke(*args):
        result = runner.invoke(main, [*args, "--out", out, "--quiet"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.output

    text = invoke("md", "--n-frames", "40", "--interval-ps", "0.1", "--chains", "2")
    assert "coverage of 40 boundary frames (2 chains)" in text
    assert list(ot.md.frame_chains(tmp_path / "boundary.h5")) == [0] * 20 + [1] * 20
    invoke("train", "--boundary", str(tmp_path / "boundary.h5"), "--temperature", "300",
           "--range", "300", "400", "--steps", "3")
    text = invoke("sample", "--model", str(tmp_path / "model.pt"), "--temperature", "350",
                  "-n", "32")
    assert "350 K: ESS" in text and (tmp_path / "samples" / "350K.h5").is_file()
    text = invoke("free-energy", "--model", str(tmp_path / "model.pt"), "--temperature", "300",
                  "--temperature", "400", "-n", "32")
    assert "400.0" in text and (tmp_path / "free_energy.csv").is_file()
    # each command ran its stage of the workflow, recorded as `run` records it
    stages = json.loads((tmp_path / "stages.json").read_text())
    assert list(stages) == ["boundary", "training", "sampling", "free_energy"]
    assert stages["boundary"]["frames"] == 40 and "coverage_ok" in stages["boundary"]
    assert stages["training"]["steps"] == 3 and stages["training"]["energy_evaluations"] > 0
    assert stages["sampling"]["350K"]["ess"] > 0
    assert stages["free_energy"]["energy_evaluations"] >= 2 * 32
    assert (tmp_path / "coverage.json").is_file()
    result = runner.invoke(main, ["sample", "--model", str(tmp_path / "model.pt"),
                                  "--temperature", "-5", "--out", out])
    assert result.exit_code == 2 and "temperature" in result.output
