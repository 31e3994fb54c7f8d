"""Domain: the support of one coordinate of a :class:`~.ConditionalFlow`.

Four kinds:

* ``"circular"``: an angle on ``[-π, π)`` (torsions); inputs are wrapped, the density is
  periodic.
* ``"arc"``: an angle restricted to the arc from ``low`` to ``high`` counter-clockwise
  (``-π ≤ low < π``, ``low < high < low + 2π``; ``high`` may pass ``π``: the arc then
  wraps through ``±π``, as a trans peptide bond at 180° does). Modelled like an interval
  on the unwrapped angle; samples are wrapped back to ``[-π, π)``.
* ``"interval"``: a coordinate bounded by nature (a bond angle in ``[0, π]``, a toy on
  ``[-2, 2]``); the flow's support is ``[low, high]``.
* ``"real"``: an unbounded coordinate; the flow models it on a window ``[low, high]``
  that should come from data with a margin (:meth:`Domain.from_data`). Outside the
  window (and outside an interval) the model density is zero: ``log_prob`` is ``-inf``.

``loc`` and ``scale`` (optional, in the coordinate's units) centre the truncated-normal
prior of bounded coordinates; by default it sits in the middle with a quarter of the width.

Example
-------
>>> import numpy as np
>>> Domain.circular()
Domain(kind='circular', low=-3.141592653589793, high=3.141592653589793, loc=None, scale=None)
>>> d = Domain.from_data(np.array([1.0, 2.0, 3.0]), margin=0.5)
>>> d.kind, d.low, d.high
('real', 0.0, 4.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError

KINDS = ("real", "interval", "circular", "arc")


def _checked_samples(values, margin: float, name: str) -> np.ndarray:
    """``values`` as a flat float64 array of at least 2 finite samples; ``margin >= 0``."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < 2 or not np.all(np.isfinite(values)):
        raise InputError(
            f"{name} must hold at least 2 finite samples, got {values.size} samples"
            f" ({int(np.sum(~np.isfinite(values)))} non-finite)"
        )
    if margin < 0:
        raise InputError(f"margin must be >= 0, got {margin}")
    return values


@dataclass(frozen=True)
class Domain:
    """Support of one coordinate: ``kind`` in ``("real", "interval", "circular", "arc")``.

    Parameters
    ----------
    kind : str
        ``"real"``, ``"interval"``, ``"circular"`` or ``"arc"``.
    low, high : float, optional
        Bounds (required for ``"real"`` and ``"interval"``; ``[-π, π]`` for circular).
    loc, scale : float, optional
        Centre and width of the truncated-normal prior (bounded kinds only).

    Examples
    --------
    >>> Domain.interval(-2.0, 2.0).width
    4.0
    >>> Domain("interval", 1.0, 0.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    openmm_trade.errors.InputError: Domain bounds must satisfy low < high ... high=0.0
    """

    kind: str
    low: float | None = None
    high: float | None = None
    loc: float | None = None
    scale: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"Domain kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "circular":
            object.__setattr__(self, "low", -math.pi)
            object.__setattr__(self, "high", math.pi)
            return
        if self.low is None or self.high is None:
            raise InputError(
                f"a {self.kind!r} Domain needs bounds low and high, got low={self.low}, "
                f"high={self.high} (use Domain.from_data for data-derived bounds)"
            )
        low, high = float(self.low), float(self.high)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise InputError(
                f"Domain bounds must satisfy low < high (finite), got low={low}, high={high}"
            )
        if self.kind == "arc" and not (-math.pi <= low < math.pi and high - low < 2 * math.pi):
            raise InputError(f"an arc Domain needs -π <= low < π and high - low < 2π, got "
                             f"low={low}, high={high}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        if self.scale is not None and not float(self.scale) > 0:
            raise InputError(f"Domain scale must be > 0, got {self.scale}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def circular(cls) -> Domain:
        """An angle on ``[-π, π)``."""
        return cls("circular")

    @classmethod
    def interval(cls, low: float, high: float, loc=None, scale=None) -> Domain:
        """A coordinate bounded by nature to ``[low, high]``."""
        return cls("interval", low, high, loc, scale)

    @classmethod
    def arc(cls, low: float, high: float, loc=None, scale=None) -> Domain:
        """An angle restricted to the arc ``[low, high]`` (``high`` may pass ``π``).

        >>> Domain.arc(3.0, 3.5).width
        0.5
        """
        return cls("arc", low, high, loc, scale)

    @classmethod
    def arc_from_data(cls, angles, margin: float = 0.5) -> Domain:
        """The smallest arc holding ``angles`` (rad), widened by ``margin`` × its width per
        side; ``loc``/``scale`` are the mean and standard deviation on the arc.

        >>> import numpy as np
        >>> d = Domain.arc_from_data(np.array([3.0, -3.0]), margin=0.0)  # through ±π
        >>> round(d.low, 4), round(d.high, 4), round(d.loc, 4)
        (3.0, 3.2832, 3.1416)
        """
        angles = _checked_samples(angles, margin, "angles")
        wrapped = np.remainder(angles + math.pi, 2 * math.pi) - math.pi
        ordered = np.sort(wrapped)
        gaps = np.diff(np.append(ordered, ordered[0] + 2 * math.pi))
        start = float(ordered[(int(np.argmax(gaps)) + 1) % ordered.size])  # after the gap
        unwrapped = np.remainder(wrapped - start, 2 * math.pi)  # on [0, occupied arc]
        spread = max(float(unwrapped.max()), 1e-6, float(unwrapped.std()))
        low = start - margin * spread
        width = min(spread * (1.0 + 2.0 * margin), 2 * math.pi - 1e-6)
        shift = float(np.remainder(low + math.pi, 2 * math.pi) - math.pi) - low
        return cls("arc", low + shift, low + shift + width,
                   start + shift + float(unwrapped.mean()),
                   max(float(unwrapped.std()), 1e-3 * width))

    @classmethod
    def real(cls, low: float, high: float, loc=None, scale=None) -> Domain:
        """An unbounded coordinate modelled on the window ``[low, high]``."""
        return cls("real", low, high, loc, scale)

    @classmethod
    def from_data(
        cls,
        values,
        margin: float = 0.5,
        bounds: tuple[float | None, float | None] = (None, None),
        kind: str | None = None,
    ) -> Domain:
        """A bounded domain from samples: ``[min - m·range, max + m·range]`` ∩ ``bounds``.

        Parameters
        ----------
        values : array-like
            1-D samples of the coordinate.
        margin : float
            Widening on each side as a fraction of the data range.
        bounds : tuple
            Valid domain ``(low, high)`` to clamp to (``None``: unbounded on that side).
        kind : str, optional
            ``"interval"`` when any bound is given, else ``"real"``, unless set.

        Returns
        -------
        Domain
            With ``loc``/``scale`` set to the data mean and standard deviation.

        Examples
        --------
        >>> import numpy as np
        >>> Domain.from_data(np.array([0.1, 0.2]), margin=1.0, bounds=(0.0, None)).low
        0.0
        """
        values = _checked_samples(values, margin, "values")
        vmin, vmax = float(values.min()), float(values.max())
        spread = max(vmax - vmin, 1e-6 * max(1.0, abs(vmin)), float(values.std()))
        low, high = vmin - margin * spread, vmax + margin * spread
        lower, upper = bounds
        if lower is not None:
            low = max(low, float(lower))
        if upper is not None:
            high = min(high, float(upper))
        if kind is None:
            kind = "real" if lower is None and upper is None else "interval"
        scale = max(float(values.std()), 1e-3 * (high - low))
        return cls(kind, low, high, float(values.mean()), scale)

    # ------------------------------------------------------------------ facts
    @property
    def is_circular(self) -> bool:
        """Whether the coordinate is periodic."""
        return self.kind == "circular"

    @property
    def width(self) -> float:
        """``high - low``."""
        return self.high - self.low

    def to_dict(self) -> dict:
        """Plain dictionary (for checkpoints); :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Domain:
        """Rebuild from :meth:`to_dict` output."""
        return cls(**data)
