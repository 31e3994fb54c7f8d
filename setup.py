"""Build hook: the built-in systems ship inside the package.

The top-level ``systems/`` folder is the one source of the built-in system definitions.
A checkout (or an editable install) reads it in place; a wheel, an sdist or a plain
``pip install .`` gets a copy in ``openmm_trade/_systems/``, made here at build time.
All other metadata lives in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent / "systems"
PACKAGED = "_systems"  # openmm_trade/_systems/ in the built package (see systems.py)


class BuildPyWithSystems(build_py):
    """``build_py`` that also copies ``systems/*.toml`` and ``*.pdb`` into the package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads systems/ in the checkout
        target = Path(self.build_lib) / "openmm_trade" / PACKAGED
        target.mkdir(parents=True, exist_ok=True)
        files = sorted(p for p in SOURCE.iterdir() if p.suffix in (".toml", ".pdb"))
        if not files:
            raise RuntimeError(f"no built-in systems found in {SOURCE}")
        for source in files:
            self.copy_file(str(source), str(target / source.name))


setup(cmdclass={"build_py": BuildPyWithSystems})
