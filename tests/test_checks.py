"""The shared argument checks: what they accept, what they refuse and how they say it."""

import doctest

import numpy as np
import pytest

from openmm_trade import checks
from openmm_trade.errors import InputError


def test_docstring_examples():
    assert doctest.testmod(checks).failed == 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: checks.integer(True, "n"), "n must be an integer >= 1, got True"),
        (lambda: checks.integer(2.0, "n"), "n must be an integer"),
        (lambda: checks.seed(-1), "seed must be an integer >= 0, got -1"),
        (lambda: checks.number("3", "dt"), "dt must be a number"),
        (lambda: checks.number(float("nan"), "dt"), r"dt must be a finite number > 0"),
        (lambda: checks.number(0.0, "dt"), r"> 0, got 0.0"),
        (lambda: checks.one_of("x", "kernel", ("mala", "hmc")), r"one of \('mala', 'hmc'\)"),
        (lambda: checks.interval((2, 1), "range"), "low < high"),
        (lambda: checks.temperatures([300], "t", minimum_count=2), ">= 2 temperatures"),
        (lambda: checks.temperatures([300, -1], "t"), "t must be finite temperatures > 0 K"),
        (lambda: checks.temperatures([400, 300], "t", increasing=True), "strictly increasing"),
        (lambda: checks.within([250.0], "--temperature", (300.0, 600.0)), "found 250 K"),
    ],
)
def test_refusals_name_the_argument(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_accepted_values_come_back_cleaned(tmp_path):
    assert checks.integer(np.int64(4), "n") == 4 and type(checks.integer(np.int64(4), "n")) is int
    assert checks.number(np.float32(0.5), "dt") == 0.5
    assert checks.interval([300, 600], "range") == (300.0, 600.0)
    assert checks.temperatures(350, "t").tolist() == [350.0]
    path = checks.writable_file(tmp_path / "new" / "out.h5", "output")
    assert path.parent.is_dir() and not path.exists()
    with pytest.raises(InputError, match="must be a file path"):
        checks.writable_file(tmp_path, "output")
