"""When progress bars are shown: on a terminal, unless ``quiet``. One rule for the library
(MD, training, sampling, refinement) and the command line.

>>> shown(quiet=True)
False
"""

from __future__ import annotations

import sys


def shown(quiet: bool) -> bool:
    """Whether to draw a progress bar: not ``quiet`` and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


__all__ = ["shown"]
