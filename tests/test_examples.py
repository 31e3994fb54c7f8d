"""Every runnable example works end to end with --quick (seconds-scale settings), and what it
prints agrees with what it wrote and with the settings it was run with."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import mdtraj
import numpy as np
import pytest

import openmm_trade as ot

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SUMMARY = re.compile(r"T = (\S+) K, n = (\d+), ESS = ([\d.]+)%, failed = (\d+)")


def _run(name: str, out: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", "--out",
                             str(out)], cwd=out, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _check_summary(stdout: str, temperature: float, n: int) -> float:
    """The weighted trajectory's one-line summary: the asked-for T and n, a possible ESS."""
    match = SUMMARY.search(stdout)
    assert match, stdout[-2000:]
    t, count, ess, failed = match.groups()
    assert float(t) == temperature and int(count) == n
    assert 100.0 / n <= float(ess) <= 100.0  # at least one sample's worth, at most all
    assert int(failed) < n // 2
    return float(ess)


def test_every_example_is_tested():
    assert {p.stem for p in EXAMPLES.glob("*.py")} == {
        "attach_to_openmm_system", "conformations_at_new_temperature",
        "free_energies_across_temperature", "boundary_from_simulation_reporter"}


def test_attach_to_openmm_system(tmp_path):
    stdout = _run("attach_to_openmm_system", tmp_path)
    ess = _check_summary(stdout, 450.0, 200)
    wt = ot.WeightedTrajectory.load(tmp_path / "serine-450K.h5")
    assert len(wt) == 200 and wt.temperature == 450.0
    assert round(100 * wt.ess, 1) == pytest.approx(ess, abs=0.051)
    assert (tmp_path / "serine-model.pt").stat().st_size > 0


def test_conformations_at_new_temperature(tmp_path):
    stdout = _run("conformations_at_new_temperature", tmp_path)
    _check_summary(stdout, 450.0, 300)
    resampled = mdtraj.load(str(tmp_path / "ala2-450K-resampled.dcd"),
                            top=str(tmp_path / "ala2-topology.pdb"))
    assert resampled.n_frames == 300
    populations = [tuple(map(float, m)) for m in
                   re.findall(r"^\s+\S+\s+([\d.]+) ± ([\d.]+)$", stdout, flags=re.M)]
    assert len(populations) == len(ot.cv.RAMACHANDRAN_STATES)
    assert all(0.0 <= p <= 1.0 and e >= 0.0 for p, e in populations)
    assert sum(p for p, _ in populations) <= 1.0 + 0.003  # printed to three decimals each


def test_free_energies_across_temperature(tmp_path):
    stdout = _run("free_energies_across_temperature", tmp_path)
    printed = [row.split() for row in stdout.splitlines() if re.match(r"^\s+\d+\.\d ", row)]
    with open(tmp_path / "free_energy.csv") as handle:
        written = list(csv.DictReader(handle))
    assert [float(r[0]) for r in printed] == [300.0, 400.0, 500.0, 600.0]
    assert len(written) == len(printed)
    for row, saved in zip(printed, written, strict=True):
        assert float(row[1]) == pytest.approx(float(saved["delta_f_kT"]), abs=5e-4)
        assert float(row[-1]) == pytest.approx(float(saved["delta_f_ti_kT"]), abs=5e-4)
    assert float(written[0]["delta_f_kT"]) == 0.0  # T0 = 300 K is the reference
    worst = max(abs(float(r["delta_f_kT"]) - float(r["delta_f_ti_kT"])) for r in written)
    reported = float(re.search(r"max \|Δf - Δf_TI\| = ([\d.]+) kT", stdout).group(1))
    assert reported == pytest.approx(worst, abs=5e-4)
    assert (tmp_path / "delta_f.png").read_bytes()[:4] == b"\x89PNG"


def test_boundary_from_simulation_reporter(tmp_path):
    stdout = _run("boundary_from_simulation_reporter", tmp_path)
    collected = int(re.search(r"collected (\d+) frames", stdout).group(1))
    on_disk = ot.md.load_trajectory(tmp_path / "boundary.h5")
    assert collected == on_disk.n_frames == 200
    energies = [float(v) for v in re.search(r"energies: \[([^\]]+)\]", stdout).group(1).split()]
    np.testing.assert_allclose(energies, ot.md.potential_energies(on_disk)[:3], rtol=1e-3)
    _check_summary(stdout, 500.0, 1000)
