"""Whitening: a fixed linear map that decorrelates the stiff internal coordinates.

Bonds, bond angles and stiff torsions of a molecule are strongly correlated: the angles
around one atom share its geometry, and the torsions of a ring must close it, so a small
independent error in each ring torsion opens the ring (issue 17). A flow whose latent
prior is a product of independent one-dimensional densities has to learn each such
correlation through its coupling layers. :class:`Whitening` removes the linear part
before the flow sees the coordinates:

    u = (z[index] - mean) / std          standardize (arcs unwrapped around their centre)
    y = L⁻¹ u                            L Lᵀ = shrunk correlation of u

so that the flow starts from the boundary data's Gaussian (correlations included) and
its splines only model what is not Gaussian. The map is affine with a constant
log-determinant ``-Σ log std - log|det L|``; it is estimated once from boundary data
and saved with the model. The correlation is shrunk towards the identity with the
Ledoit-Wolf estimate (Ledoit & Wolf 2004, *J. Multivar. Anal.* 88, 365), which keeps it
well conditioned when there are few frames per coordinate.

Example
-------
>>> import torch
>>> from openmm_trade.flow.whitening import Whitening
>>> g = torch.Generator().manual_seed(0)
>>> a = torch.randn(500, 1, generator=g, dtype=torch.float64)
>>> z = torch.cat([a, a + 0.1 * torch.randn(500, 1, generator=g, dtype=torch.float64)], 1)
>>> w = Whitening.from_data(z, index=[0, 1])
>>> y, log_det = w.forward(z)
>>> round(float(torch.corrcoef(z.T)[0, 1]), 3), abs(float(torch.corrcoef(y.T)[0, 1])) < 0.1
(0.995, True)
>>> torch.allclose(w.inverse(y)[0], z)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InputError

#: fewest boundary frames per whitened coordinate for which a covariance is estimated;
#: with fewer, :meth:`Whitening.from_data` returns ``None`` (no whitening)
MIN_FRAMES_PER_COORDINATE = 5
#: standard deviations below this fraction of the largest one are floored to it
STD_FLOOR = 1e-6


def _wrap(angle: torch.Tensor) -> torch.Tensor:
    """Angles to ``[-π, π)``."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def ledoit_wolf_correlation(u: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Correlation of standardized samples ``u`` ``(M, K)`` shrunk towards the identity.

    Returns the matrix and the shrinkage weight ``λ`` in ``[0, 1]`` (``λ = 1``: identity).

    >>> import torch
    >>> u = torch.randn(2000, 3, generator=torch.Generator().manual_seed(1),
    ...                 dtype=torch.float64)
    >>> c, shrinkage = ledoit_wolf_correlation(u)
    >>> bool(torch.allclose(c, torch.eye(3, dtype=c.dtype), atol=0.05)), shrinkage > 0.5
    (True, True)
    """
    m, k = u.shape
    sample = u.T @ u / m
    identity = torch.eye(k, dtype=u.dtype, device=u.device)
    distance = float(((sample - identity) ** 2).sum()) / k
    if distance == 0.0:
        return identity, 1.0
    # mean squared distance of the one-frame outer products from the sample matrix
    outer = torch.einsum("mi,mj->mij", u, u)
    spread = float(((outer - sample) ** 2).sum()) / (m * m * k)
    shrinkage = min(spread, distance) / distance
    return shrinkage * identity + (1.0 - shrinkage) * sample, shrinkage


class Whitening(nn.Module):
    """Affine decorrelation of the coordinates ``index`` of ``z``; the others pass through.

    Build it with :meth:`from_data`. ``forward`` maps internal coordinates to the flow's
    coordinates, ``inverse`` back; both return the log-determinant of their direction,
    a constant, as a ``(B,)`` tensor.

    Parameters
    ----------
    index : sequence of int
        Positions in ``z`` that are whitened.
    mean, std : tensor (K,)
        Centre and scale of each whitened coordinate.
    cholesky : tensor (K, K)
        Lower-triangular ``L`` of the correlation ``L Lᵀ``.
    periodic : tensor (K,) of bool
        Whitened coordinates that are angles (arcs): unwrapped around ``mean`` on the way
        in, wrapped to ``[-π, π)`` on the way out.
    """

    def __init__(self, index: Sequence[int], mean: torch.Tensor, std: torch.Tensor,
                 cholesky: torch.Tensor, periodic: torch.Tensor):
        super().__init__()
        k = len(index)
        if not (mean.shape == std.shape == periodic.shape == (k,)
                and cholesky.shape == (k, k)):
            raise InputError(f"Whitening needs mean, std, periodic of shape ({k},) and a "
                             f"({k}, {k}) cholesky factor, got {tuple(mean.shape)}, "
                             f"{tuple(std.shape)}, {tuple(periodic.shape)}, "
                             f"{tuple(cholesky.shape)}")
        self.register_buffer("index", torch.as_tensor(list(index), dtype=torch.long))
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        self.register_buffer("cholesky", cholesky.clone())
        self.register_buffer("periodic", periodic.clone().bool())

    @classmethod
    def from_data(cls, z: torch.Tensor, index: Sequence[int],
                  periodic: Sequence[bool] | None = None,
                  centres: Sequence[float | None] | None = None) -> Whitening | None:
        """Estimate the map from boundary coordinates ``z`` ``(M, D)``.

        Parameters
        ----------
        z : tensor (M, D)
            Internal coordinates of the boundary frames.
        index : sequence of int
            The coordinates to whiten.
        periodic : sequence of bool, optional
            Per entry of ``index``: an angle to unwrap (an arc), default none.
        centres : sequence of float or None, optional
            Per periodic entry, the angle to unwrap around (the arc's middle).

        Returns
        -------
        Whitening or None
            ``None`` when there are fewer than :data:`MIN_FRAMES_PER_COORDINATE` frames
            per whitened coordinate (or none to whiten).
        """
        index = [int(i) for i in index]
        if not index or z.shape[0] < MIN_FRAMES_PER_COORDINATE * len(index):
            return None
        periodic = torch.as_tensor(list(periodic) if periodic is not None
                                   else [False] * len(index), dtype=torch.bool)
        values = z[:, index].detach().to(torch.float64)
        for j in torch.nonzero(periodic).flatten().tolist():
            centre = float(centres[j]) if centres is not None and centres[j] is not None \
                else float(values[0, j])
            values[:, j] = centre + _wrap(values[:, j] - centre)
        mean = values.mean(0)
        std = values.std(0)
        std = torch.clamp(std, min=STD_FLOOR * max(float(std.max()), 1e-12))
        correlation, _ = ledoit_wolf_correlation((values - mean) / std)
        cholesky = torch.linalg.cholesky(correlation)
        return cls(index, mean, std, cholesky, periodic).to(dtype=z.dtype)

    @property
    def log_det(self) -> float:
        """``log|det|`` of :meth:`forward`: ``-Σ log std - log|det L|``."""
        return float(-torch.log(self.std).sum() - torch.log(torch.diagonal(self.cholesky)).sum())

    def _constant(self, z: torch.Tensor, sign: float) -> torch.Tensor:
        return torch.full(z.shape[:1], sign * self.log_det, dtype=z.dtype, device=z.device)

    def _affine(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(mean, std, cholesky)`` in the dtype of ``like`` (the SMC moves work in float64
        on a float32 model)."""
        return tuple(t.to(like.dtype) for t in (self.mean, self.std, self.cholesky))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Internal coordinates ``(B, D)`` -> flow coordinates and ``log|det|`` ``(B,)``."""
        mean, std, cholesky = self._affine(z)
        values = z[:, self.index]
        unwrapped = mean + _wrap(values - mean)
        values = torch.where(self.periodic, unwrapped, values)
        u = (values - mean) / std
        y = torch.linalg.solve_triangular(cholesky, u.T, upper=False).T
        out = z.clone()
        out[:, self.index] = y
        return out, self._constant(z, 1.0)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow coordinates ``(B, D)`` -> internal coordinates and ``log|det|`` ``(B,)``."""
        mean, std, cholesky = self._affine(y)
        values = (y[:, self.index] @ cholesky.T) * std + mean
        values = torch.where(self.periodic, _wrap(values), values)
        out = y.clone()
        out[:, self.index] = values
        return out, self._constant(y, -1.0)

    def to_dict(self) -> dict:
        """Tensors for a model file; :meth:`from_dict` inverts it."""
        return {name: buffer.detach().cpu() for name, buffer in self.named_buffers()}

    @classmethod
    def from_dict(cls, data: dict) -> Whitening:
        """Rebuild from :meth:`to_dict` output."""
        return cls(data["index"].tolist(), data["mean"], data["std"], data["cholesky"],
                   data["periodic"])
