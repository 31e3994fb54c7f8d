"""Every runnable example works end to end with --quick (seconds-scale settings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def test_all_four_workflows_are_present():
    assert {p.stem for p in EXAMPLES} >= {
        "attach_to_openmm_system", "conformations_at_new_temperature",
        "free_energies_across_temperature", "boundary_from_simulation_reporter"}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_quick(script, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ESS" in result.stdout or "ESS" in result.stderr
    assert any(tmp_path.iterdir())
