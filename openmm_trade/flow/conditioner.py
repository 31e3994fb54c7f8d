"""Conditioner: the MLP that outputs spline parameters from coordinates and temperature.

The temperature enters as ``c = log(T / T0)``, rescaled by the training range to
``ĉ = c / c_max`` (``c_max = max |log(T_range / T0)|``) and fed as the features
``[ĉ, ĉ²]`` (:func:`condition_features`). Activations are SiLU (smooth), so second
derivatives with respect to the temperature exist, as TRADE needs. The last layer starts
at zero, so every spline it parametrises starts as the identity.

Example
-------
>>> import torch
>>> net = Conditioner(n_inputs=3, n_outputs=5, hidden=16, depth=2)
>>> out = net(torch.randn(4, 3), torch.zeros(4, N_CONDITION_FEATURES))
>>> out.shape, out.abs().max().item()
(torch.Size([4, 5]), 0.0)
"""

from __future__ import annotations

import torch
from torch import nn

#: number of temperature features fed to every conditioner
N_CONDITION_FEATURES = 2


def condition_features(condition: torch.Tensor, condition_scale: float) -> torch.Tensor:
    """Features ``(B, 2)`` ``[ĉ, ĉ²]`` of conditions ``c = log(T/T0)`` ``(B,)``.

    >>> import torch
    >>> condition_features(torch.tensor([0.5]), 0.5).tolist()
    [[1.0, 1.0]]
    """
    scaled = condition / condition_scale
    return torch.stack([scaled, scaled.pow(2)], dim=-1)


class Conditioner(nn.Module):
    """MLP ``[inputs, condition features] -> outputs`` with SiLU and a zero last layer.

    Parameters
    ----------
    n_inputs : int
        Number of coordinate features (may be 0: then it sees only the temperature).
    n_outputs : int
        Number of outputs (spline parameters).
    hidden : int
        Width of the hidden layers.
    depth : int
        Number of hidden layers (>= 1).
    generator : torch.Generator, optional
        Source of the initial weights (for seeded models).

    Examples
    --------
    >>> import torch
    >>> Conditioner(0, 3, hidden=8, depth=1)(torch.zeros(2, 0), torch.ones(2, 2)).shape
    torch.Size([2, 3])
    """

    def __init__(self, n_inputs: int, n_outputs: int, hidden: int = 128, depth: int = 2,
                 generator: torch.Generator | None = None):
        super().__init__()
        sizes = [n_inputs + N_CONDITION_FEATURES] + [hidden] * depth
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            linear = nn.Linear(n_in, n_out)
            bound = (1.0 / n_in) ** 0.5
            with torch.no_grad():
                linear.weight.uniform_(-bound, bound, generator=generator)
                linear.bias.uniform_(-bound, bound, generator=generator)
            layers += [linear, nn.SiLU()]
        last = nn.Linear(sizes[-1], n_outputs)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.network = nn.Sequential(*layers, last)

    def forward(self, inputs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Outputs ``(B, n_outputs)`` for coordinate features and condition features."""
        return self.network(torch.cat([inputs, features], dim=-1))
