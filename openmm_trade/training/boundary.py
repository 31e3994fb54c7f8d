"""Boundary data for training: the held-out split in time and the data as a tensor."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError


def holdout_split(n_frames: int, fraction: float,
                  chains=None) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and held-out frames: the last ``fraction`` of each chain.

    Frames of one MD chain are consecutive in time (``chains`` gives the chain of each
    frame, as :func:`openmm_trade.md.simulate` records it; ``None``: one chain), so the
    held-out frames are the end of every chain, later in time than what is trained on and
    drawn from all chains. No frame is held out when that would leave fewer than 2 held
    out or none to train on.

    >>> holdout_split(10, 0.4, chains=[0] * 5 + [1] * 5)[1]
    array([3, 4, 8, 9])
    >>> holdout_split(10, 0.0)[1].size
    0
    """
    chains = np.zeros(n_frames, dtype=np.int64) if chains is None else np.asarray(chains)
    if chains.shape != (n_frames,):
        raise InputError(f"chains must give one chain per frame ({n_frames}), got shape "
                         f"{chains.shape}")
    held = []
    for chain in np.unique(chains):
        frames = np.flatnonzero(chains == chain)
        held.append(frames[frames.size - round(fraction * frames.size):])
    held = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    if held.size < 2 or held.size >= n_frames:
        held = np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(n_frames), held), held


def _boundary_tensor(boundary, event_shape: tuple[int, ...], name: str = "boundary"):
    """``(M, *event_shape)`` tensor from an mdtraj trajectory (nm), an array or a tensor."""
    if boundary is None:
        return None
    if hasattr(boundary, "xyz") and hasattr(boundary, "topology"):
        values = torch.from_numpy(np.asarray(boundary.xyz))
    elif isinstance(boundary, np.ndarray):
        values = torch.from_numpy(boundary)
    elif isinstance(boundary, torch.Tensor):
        values = boundary.detach()
    else:
        raise InputError(f"{name} must be an mdtraj.Trajectory, a numpy array or a torch "
                         f"tensor of shape (M, {', '.join(map(str, event_shape))}), got "
                         f"{type(boundary).__name__}")
    if values.dim() != 1 + len(event_shape) or tuple(values.shape[1:]) != tuple(event_shape):
        raise InputError(f"{name} must have shape (M, {', '.join(map(str, event_shape))}), "
                         f"got {tuple(values.shape)}")
    if values.shape[0] < 1:
        raise InputError(f"{name} must hold at least one sample, got 0")
    if not bool(torch.isfinite(values).all()):
        raise InputError(f"{name} holds non-finite coordinates")
    return values
