"""Run configuration: defaults, round trip through TOML, and all-at-once error reports."""

from __future__ import annotations

import pytest

from openmm_trade import config
from openmm_trade.errors import ConfigError


def test_defaults_and_round_trip(tmp_path):
    cfg = config.validate({"system": {"name": "alanine-dipeptide-vacuum"}})
    # T0 defaults to the top of the range; a given one (bottom, middle) is kept
    assert cfg.boundary["temperature"] == 600.0 and cfg.simulate_boundary
    for t0 in (300.0, 450.0):
        given = config.validate({"system": {"name": "alanine-dipeptide-vacuum"},
                                 "boundary": {"temperature": t0}})
        assert given.boundary["temperature"] == t0
    narrow = config.validate({"system": {"name": "alanine-dipeptide-vacuum"},
                              "temperatures": {"range": [280.0, 400.0], "targets": [300.0]}})
    assert narrow.boundary["temperature"] == 400.0
    with pytest.raises(ConfigError, match="temperature: required with 'files'"):
        config.validate({"system": {"name": "alanine-dipeptide-vacuum"},
                         "boundary": {"files": ["md.dcd"]}})
    assert cfg.compute == {"platform": "CPU", "n_workers": 1, "torch_threads": 1,
                           "device": "cpu", "seed": 1}
    path = tmp_path / "run.toml"
    path.write_text(cfg.to_toml())
    again = config.load(path)
    assert again.as_dict() == cfg.as_dict()


def test_every_problem_reported_at_once(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        "[system]\nname = 'alanine-dipeptide-vacuum'\npdb = 'x.pdb'\n"
        "[boundary]\ntemperature = -5.0\nn_frames = 1.5\ncolour = 'red'\n"
        "[temperatures]\nrange = [600.0, 300.0]\n"
        "[compute]\nplatform = 'TPU'\n"
        "[sampling]\nn = true\n"
        "[extras]\nx = 1\n"
    )
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(str(path))
    for expected in [
        "[extras]: unknown section",
        "[boundary] temperature: expected a number > 0, got -5.0",
        "[boundary] n_frames: expected an integer > 0, got 1.5",
        "[boundary] colour: unknown key",
        "[temperatures] range: expected [low, high] with low < high",
        "[compute] platform: expected one of 'Reference', 'CPU', 'CUDA', 'OpenCL', got 'TPU'",
        "[sampling] n: expected an integer > 0, got True",
        "[system]: give exactly one of 'name'",
    ]:
        assert expected in message, expected
    assert "8 problems" in message


def test_targets_and_boundary_must_lie_in_range():
    with pytest.raises(ConfigError) as info:
        config.validate({"system": {"name": "alanine-dipeptide-vacuum"},
                         "boundary": {"temperature": 250.0},
                         "temperatures": {"range": [300.0, 600.0], "targets": [300.0, 700.0]}})
    assert "targets: expected values within range" in str(info.value)
    assert "[boundary] temperature: expected a value within" in str(info.value)


def test_model_and_training_keys_checked_against_the_api():
    with pytest.raises(ConfigError) as info:
        config.validate({"system": {"name": "alanine-dipeptide-vacuum"},
                         "training": {"stepz": 10}, "model": {"not_a_knob": 1}})
    assert "[training] stepz: unknown key" in str(info.value)
    assert "[model] not_a_knob: unknown key" in str(info.value)


def test_relative_paths_resolve_to_the_config_folder(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[system]\npdb = 'mol.pdb'\n[boundary]\nfiles = ['md.dcd']\n"
                    "temperature = 300.0\n")
    with pytest.raises(ConfigError, match=r"\[system\] pdb: expected an existing file"):
        config.load(path)  # the files a configuration names must exist
    (tmp_path / "mol.pdb").touch()
    (tmp_path / "md.dcd").touch()
    cfg = config.load(path)
    assert cfg.system["pdb"] == str(tmp_path / "mol.pdb")
    assert cfg.boundary["files"] == [str(tmp_path / "md.dcd")] and not cfg.simulate_boundary


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "absent.toml")
    bad = tmp_path / "broken.toml"
    bad.write_text("[system\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)
