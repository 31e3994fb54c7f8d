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


def test_training_keys_are_training_config_fields_and_run_options():
    system = {"name": "alanine-dipeptide-vacuum"}
    with pytest.raises(ConfigError) as info:
        config.validate({"system": system, "training": {
            "steps": "many", "learning_rate": True, "schedule": 3, "energy_cutoff": "off",
            "validate_every": 0, "monitor_temperatures": [300.0, -1.0], "kl_weight": 0.1}})
    message = str(info.value)
    for expected in [
        "[training] steps: expected an integer, got 'many' (str)",
        "[training] learning_rate: expected a finite number, got True (bool)",
        "[training] schedule: expected a string, got 3 (int)",
        "[training] energy_cutoff: expected a finite number, got 'off' (str)",
        "[training] validate_every: expected an integer > 0, got 0 (int)",
        "[training] monitor_temperatures: expected a non-empty list of a number > 0",
    ]:
        assert expected in message, expected
    assert "6 problems" in message  # kl_weight is a TrainingConfig field: accepted
    # well-typed values are checked as TrainingConfig checks them, naming the field
    with pytest.raises(ConfigError, match=r"\[training\] batch_size must be an integer >= 1, "
                                          r"got -3"):
        config.validate({"system": system, "training": {"batch_size": -3}})
    with pytest.raises(ConfigError, match=r"\[training\] trade_batch_size \(10\) must be a "
                                          r"multiple of n_conditions \(4\)"):
        config.validate({"system": system, "training": {"trade_batch_size": 10,
                                                        "n_conditions": 4}})
    given = {"kl_weight": 0.1, "seed": 5, "monitor_temperatures": [300.0, 600.0],
             "energy_budget": 1000, "warmup_steps": 0}
    assert config.validate({"system": system, "training": given}).training == given


def test_one_default_per_setting():
    """The run's defaults come from BoundaryMD and DEFAULT_SEED (the CLI reads them too)."""
    cfg = config.validate({"system": {"name": "alanine-dipeptide-vacuum"}})
    md = config.BoundaryMD()
    assert (cfg.boundary["n_frames"], cfg.boundary["interval_ps"],
            cfg.boundary["equilibration_ps"], cfg.boundary.get("n_chains")) == \
        (md.n_frames, md.interval_ps, md.equilibration_ps, md.n_chains)
    assert cfg.compute["seed"] == config.DEFAULT_SEED == config.default("compute", "seed")
    assert cfg.boundary["temperature"] == config.boundary_temperature(cfg.temperatures["range"])
    with pytest.raises(KeyError, match="no fixed default"):
        config.default("boundary", "temperature")


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
