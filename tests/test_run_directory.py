"""The run directory: one layout, and temperatures read from the files themselves."""

import doctest

import numpy as np
import pytest

from openmm_trade import run_directory, workflow
from openmm_trade.errors import InputError
from openmm_trade.run_directory import RunDirectory
from openmm_trade.sampling import WeightedTrajectory


def test_docstring_examples():
    assert doctest.testmod(run_directory).failed == 0
    assert doctest.testmod(workflow).failed == 0


def test_samples_are_found_by_the_temperature_they_hold(tmp_path):
    run = RunDirectory(tmp_path)
    with pytest.raises(InputError, match="not a run directory"):
        run.require()
    rng = np.random.default_rng(0)
    for t in (450.0, 312.5, 300.0):
        wt = WeightedTrajectory(rng.normal(size=(5, 2)), rng.normal(size=5), np.zeros(5), t)
        wt.save(run.sample_path(t))
    WeightedTrajectory(np.zeros((2, 2)), np.zeros(2), np.zeros(2), 500.0).save(
        run.samples / "renamed-by-hand.h5")
    found = run.sample_paths()
    assert list(found) == [300.0, 312.5, 450.0, 500.0]
    assert found[312.5].name == "312.5K.h5" and found[500.0].name == "renamed-by-hand.h5"
    run.config.write_text('[boundary]\ntemperature = 600.0\n')
    assert run.require().read_config()["boundary"]["temperature"] == 600.0
