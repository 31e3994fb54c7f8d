"""The conditional flow: splines, couplings, priors, ConditionalFlow and TemperatureFlow.

* :class:`FlowArchitecture` holds the width, depth and prior that both flows take.
* :class:`Domain` describes the support of one coordinate (real, interval, circular).
* :class:`ConditionalFlow` is a temperature-conditioned spline flow on flat vectors
  (toy systems, and the latent part of a molecular model).
* :class:`TemperatureFlow` composes :class:`ConditionalFlow` with
  :class:`~openmm_trade.coordinates.InternalCoordinates` into a density over Cartesian
  conformations ``(B, N, 3)`` in nm.

Example
-------
>>> from openmm_trade.flow import ConditionalFlow, Domain
>>> flow = ConditionalFlow([Domain.interval(-2.0, 2.0)], 300.0, (300.0, 600.0), hidden=8)
>>> flow.event_shape
(1,)
"""

from __future__ import annotations

from .architecture import FlowArchitecture
from .conditional import ConditionalFlow, alternating_layers
from .domain import Domain
from .priors import BoxPrior
from .temperature_flow import TemperatureFlow, coupling_pattern, data_domains

__all__ = [
    "BoxPrior",
    "ConditionalFlow",
    "Domain",
    "FlowArchitecture",
    "TemperatureFlow",
    "alternating_layers",
    "coupling_pattern",
    "data_domains",
]
