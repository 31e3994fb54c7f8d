"""Packaging: an sdist and the wheel built from it carry the built-in systems.

The test builds an sdist of this checkout, builds a wheel from the unpacked sdist (so
both formats are checked), installs the wheel (not editable) into a fresh virtual
environment, and runs the command line from an unrelated folder. The heavy dependencies
(torch, OpenMM, ...) are not reinstalled: a ``.pth`` line appends the running
environment's site-packages to the fresh one's ``sys.path``. Lines of a ``.pth`` file are
plain path entries, so the running environment's own ``.pth`` hooks (an editable install
of openmm_trade) are not executed, and the fresh site-packages comes first; the test
checks that ``openmm_trade`` is imported from the wheel.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_INPUTS = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "openmm_trade",
                "systems"]


def _run(command: list[str], cwd: Path, env: dict, timeout: float = 600):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(map(str, command))} exited "
                                    f"{result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.mark.slow
def test_wheel_from_sdist_installs_and_runs_the_demo(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    systems = sorted(p.name for p in (ROOT / "systems").iterdir()
                     if p.suffix in (".toml", ".pdb"))

    # 1. sdist from a clean copy of the sources (no build/ or egg-info in the checkout)
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "_systems"))
        else:
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    _run([sys.executable, "-c",
          f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"],
         cwd=source, env=env)
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
        names = archive.getnames()
    for name in systems:
        assert any(n.endswith(f"/systems/{name}") for n in names), f"sdist lacks {name}"

    # 2. wheel from the unpacked sdist, without build isolation (no downloads)
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", str(dist), str(unpacked)], cwd=tmp_path, env=env)
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = {Path(n).name for n in archive.namelist() if "/_systems/" in n}
    assert packaged == set(systems)

    # 3. a fresh environment: the wheel installed normally, dependencies borrowed
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    python, script = venv / "bin" / "python", venv / "bin" / "openmm-trade"
    fresh_site = _run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                      cwd=tmp_path, env=env).stdout.strip()
    Path(fresh_site, "borrowed_dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
         cwd=tmp_path, env=env)

    # 4. run it from a folder that has nothing to do with the checkout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([str(python), "-c", "import openmm_trade; print(openmm_trade.__file__)"],
                 cwd=elsewhere, env=env).stdout.strip()
    assert Path(where).is_relative_to(fresh_site), where
    listed = _run([str(script), "systems"], cwd=elsewhere, env=env).stdout
    for name in (p.removesuffix(".toml") for p in systems if p.endswith(".toml")):
        assert name in listed
    env["OMP_NUM_THREADS"] = "1"
    demo = _run([str(script), "demo", "--quick", "--quiet", "--out", "demo"],
                cwd=elsewhere, env=env)
    assert "wrote demo/" in demo.stdout
    assert (elsewhere / "demo" / "report.md").is_file()
