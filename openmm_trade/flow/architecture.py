"""FlowArchitecture: the shape of a conditional flow, defined once with its defaults.

Both :class:`~.ConditionalFlow` and :meth:`~.TemperatureFlow.for_system` take an
``architecture`` (or its fields as keyword overrides); a saved model stores the fields
among its constructor arguments, so :meth:`~.TemperatureFlow.load` rebuilds the same
network.

Example
-------
>>> from openmm_trade.flow import FlowArchitecture
>>> FlowArchitecture().hidden, FlowArchitecture().n_blocks
(64, 3)
>>> FlowArchitecture.resolve(None, {"hidden": 16}).hidden
16
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import InputError
from .priors import check_prior


@dataclass(frozen=True)
class FlowArchitecture:
    """Width, depth and prior of a temperature-conditioned spline flow.

    The defaults are the product's, chosen by measurement on alanine dipeptide (the figures
    are in ``docs/TUNING.md``). ``widen_prior`` scales the latent prior's widths by
    ``sqrt(T / T0)``, the temperature dependence of harmonic coordinates, so bonds, angles
    and stiff torsions start out right at every temperature and TRADE only corrects the
    rest. ``prior_floor = 0.01`` mixes 1 % of the uniform density into each bounded
    coordinate's prior (:class:`~.BoxPrior`), so no coordinate's tail is lighter than that.

    Examples
    --------
    >>> arch = FlowArchitecture(hidden=32, n_blocks=1)
    >>> arch.replace(prior="uniform", widen_prior=False, prior_floor=0.0).prior
    'uniform'
    """

    #: conditioner width (units per hidden layer)
    hidden: int = 64
    #: conditioner hidden layers
    depth: int = 2
    #: repetitions of the coupling pattern
    n_blocks: int = 3
    #: spline bins per coordinate
    n_bins: int = 8
    #: latent prior of bounded coordinates: ``"truncated_normal"`` or ``"uniform"``
    prior: str = "truncated_normal"
    #: widen the truncated-normal prior as ``sqrt(T / T0)``
    widen_prior: bool = True
    #: weight of the uniform density mixed into each truncated normal, in [0, 1)
    prior_floor: float = 0.01

    def __post_init__(self) -> None:
        for name in ("hidden", "depth", "n_blocks", "n_bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive int, got {value!r}")
        check_prior(self.prior, self.widen_prior, self.prior_floor)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the fields, in order.

        >>> FlowArchitecture.field_names()[:2]
        ('hidden', 'depth')
        """
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **overrides) -> FlowArchitecture:
        """A copy with some fields changed; unknown names raise :class:`InputError`."""
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            raise InputError(f"unknown flow architecture keyword(s) {unknown}; expected some "
                             f"of {list(self.field_names())}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def resolve(cls, architecture, overrides: Mapping | None = None) -> FlowArchitecture:
        """``architecture`` (a FlowArchitecture, a mapping of its fields or ``None`` for the
        defaults) with keyword ``overrides`` applied.

        >>> FlowArchitecture.resolve({"hidden": 8}, {"n_blocks": 1})
        FlowArchitecture(hidden=8, depth=2, n_blocks=1, n_bins=8, prior='truncated_normal', \
widen_prior=True, prior_floor=0.01)
        """
        if architecture is None:
            architecture = cls()
        elif isinstance(architecture, Mapping):
            architecture = cls().replace(**architecture)
        elif not isinstance(architecture, cls):
            raise InputError("architecture must be a flow.FlowArchitecture, a dict of its "
                             f"fields or None, got {type(architecture).__name__}")
        return architecture.replace(**overrides) if overrides else architecture

    def to_dict(self) -> dict:
        """The fields as a JSON-friendly dict (what a saved model stores).

        >>> FlowArchitecture().to_dict()["prior"]
        'truncated_normal'
        """
        return dataclasses.asdict(self)


__all__ = ["FlowArchitecture"]
