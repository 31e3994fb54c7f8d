"""The public names a newcomer reads in the README exist (a rename that forgets the README,
or the README naming something that was never exported, fails here)."""

import re
from pathlib import Path

import pytest

import openmm_trade as ot

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
NAMES = sorted(set(re.findall(r"\bot\.((?:[a-z_]+\.)*[A-Za-z_]\w*)", README)))


def test_the_readme_uses_the_api():
    assert len(NAMES) >= 15


@pytest.mark.parametrize("dotted", NAMES)
def test_readme_name_exists(dotted):
    target = ot
    for part in dotted.split("."):
        assert hasattr(target, part), f"ot.{dotted} (in the README) does not exist"
        target = getattr(target, part)


def test_all_lists_only_real_names():
    missing = [name for name in ot.__all__ if not hasattr(ot, name)]
    assert not missing
