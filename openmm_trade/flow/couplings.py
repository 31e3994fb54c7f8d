"""SplineCoupling: one conditional coupling layer on normalised coordinates.

Normalised coordinates (see :class:`~.BoxPrior`): bounded ones on ``[0, 1]``, circular
ones on ``[-π, π)``. A layer transforms the coordinates ``transformed`` with splines
whose parameters a :class:`~.Conditioner` computes from the coordinates ``conditioning``
(untransformed; circular ones embedded as ``(cos, sin)``, bounded ones as ``2u - 1``) and
the temperature features.

* bounded coordinates: :func:`~.splines.bounded_spline` on ``[0, 1]``;
* circular coordinates: a fixed rotation by ``offset`` (so that the seam at ±π is not at
  the same place in every layer), :func:`~.splines.circular_spline`, then a rotation by a
  learned, conditioned shift. Rotations have unit Jacobian.

``forward`` is the normalising direction (data → latent) and returns
``log |det ∂y/∂x|``; ``inverse`` returns ``log |det ∂x/∂y|``.

Example
-------
>>> import torch
>>> layer = SplineCoupling([0], [1], torch.tensor([True, False]), n_bins=4, hidden=8)
>>> x = torch.tensor([[0.3, 0.6]])
>>> y, ladj = layer(x, torch.zeros(1, 2))
>>> x2, ladj_inv = layer.inverse(y, torch.zeros(1, 2))
>>> torch.allclose(x, x2, atol=1e-6), abs((ladj + ladj_inv).item()) < 1e-6
(True, True)
"""

from __future__ import annotations

import torch
from torch import nn

from .conditioner import Conditioner
from .splines import (
    bounded_spline,
    circular_spline,
    n_spline_parameters,
    split_parameters,
    wrap_angle,
)


class SplineCoupling(nn.Module):
    """Coupling layer: splines on ``transformed`` conditioned on ``conditioning``.

    Parameters
    ----------
    transformed, conditioning : sequence of int
        Disjoint coordinate indices; ``conditioning`` may be empty.
    circular : torch.Tensor
        ``(D,)`` bool mask of circular coordinates (all coordinates of the flow).
    n_bins : int
        Spline bins.
    hidden, depth : int
        Conditioner width and number of hidden layers.
    offset : float
        Fixed rotation (radians) applied to transformed circular coordinates.
    generator : torch.Generator, optional
        Source of initial weights.

    Examples
    --------
    >>> import torch
    >>> layer = SplineCoupling([1], [0], torch.tensor([False, False]), n_bins=4, hidden=8)
    >>> layer(torch.tensor([[0.2, 0.7]]), torch.zeros(1, 2))[0]  # identity at initialisation
    tensor([[0.2000, 0.7000]], grad_fn=<IndexPutBackward0>)
    """

    def __init__(self, transformed, conditioning, circular: torch.Tensor, n_bins: int = 8,
                 hidden: int = 128, depth: int = 2, offset: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        transformed = torch.as_tensor(list(transformed), dtype=torch.long)
        conditioning = torch.as_tensor(list(conditioning), dtype=torch.long)
        circular = torch.as_tensor(circular, dtype=torch.bool)
        if transformed.numel() == 0:
            raise ValueError("a coupling layer needs at least one transformed coordinate")
        if set(transformed.tolist()) & set(conditioning.tolist()):
            raise ValueError("transformed and conditioning coordinates must be disjoint")
        self.n_bins, self.offset = n_bins, float(offset)
        t_circ = circular[transformed]
        c_circ = circular[conditioning]
        self.register_buffer("circular_out", transformed[t_circ])
        self.register_buffer("bounded_out", transformed[~t_circ])
        self.register_buffer("circular_in", conditioning[c_circ])
        self.register_buffer("bounded_in", conditioning[~c_circ])
        n_in = 2 * int(c_circ.sum()) + int((~c_circ).sum())
        self.n_params = n_spline_parameters(n_bins)
        n_out = (self.n_params + 1) * len(self.circular_out) + self.n_params * len(
            self.bounded_out
        )
        self.conditioner = Conditioner(n_in, n_out, hidden, depth, generator=generator)

    def _spline_parameters(self, x: torch.Tensor, features: torch.Tensor):
        """Spline parameters of the circular and bounded outputs, and circular shifts."""
        angles = x[:, self.circular_in]
        inputs = torch.cat(
            [torch.cos(angles), torch.sin(angles), 2 * x[:, self.bounded_in] - 1], dim=-1
        )
        out = self.conditioner(inputs, features)
        n_circ, n_bound = len(self.circular_out), len(self.bounded_out)
        batch, split = out.shape[0], n_circ * (self.n_params + 1)
        circ = out[:, :split].reshape(batch, n_circ, self.n_params + 1)
        bound = out[:, split:].reshape(batch, n_bound, self.n_params)
        return circ[..., :-1], circ[..., -1], bound

    def _transform(self, x: torch.Tensor, features: torch.Tensor, inverse: bool):
        circ_params, shifts, bound_params = self._spline_parameters(x, features)
        y = x.clone()
        ladj = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        if len(self.bounded_out):
            values, l_b = bounded_spline(
                x[:, self.bounded_out], *split_parameters(bound_params, self.n_bins),
                inverse=inverse,
            )
            y[:, self.bounded_out] = values
            ladj = ladj + l_b.sum(-1)
        if len(self.circular_out):
            angles = x[:, self.circular_out]
            if inverse:
                angles = wrap_angle(angles - shifts)
            else:
                angles = wrap_angle(angles + self.offset)
            angles, l_c = circular_spline(
                angles, *split_parameters(circ_params, self.n_bins), inverse=inverse
            )
            if inverse:
                angles = wrap_angle(angles - self.offset)
            else:
                angles = wrap_angle(angles + shifts)
            y[:, self.circular_out] = angles
            ladj = ladj + l_c.sum(-1)
        return y, ladj

    def forward(self, x: torch.Tensor, features: torch.Tensor):
        """Normalising direction: ``(y, log|det ∂y/∂x|)`` for ``x`` ``(B, D)``."""
        return self._transform(x, features, inverse=False)

    def inverse(self, y: torch.Tensor, features: torch.Tensor):
        """Generative direction: ``(x, log|det ∂x/∂y|)`` for ``y`` ``(B, D)``."""
        return self._transform(y, features, inverse=True)
