"""Exact models and energies for tests of sampling and free energies (independent oracles).

* :class:`HarmonicEnergy`: ``U(x) = k/2 |x|^2`` in ``d`` dimensions, with the exact
  ``log Z(T) = d/2 ln(2π k_B T / k)``, mean energy ``d/2 k_B T`` and ``C_v = d/2 k_B``.
* :class:`GaussianModel`: ``x ~ N(0, width² k_B T / k)``, a model whose density is exact at
  every T; ``width != 1`` makes it a slightly wrong model that importance sampling corrects.
* :class:`FailingEnergy`: wraps an energy and makes selected samples non-finite.
* :class:`ContextEnergy`: OpenMM energies through a plain ``openmm.Context`` (serial).
* :class:`PerturbedFramesModel`: a molecular "model": a random MD frame plus isotropic
  Gaussian noise, whose log-density (a Gaussian mixture) is exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from openmm_trade.energy import Energy
from openmm_trade.units import KB


class HarmonicEnergy(Energy):
    """``U(x) = k/2 |x|^2`` (kJ/mol) on ``R^d``."""

    def __init__(self, dim: int = 2, spring_constant: float = 100.0):
        super().__init__()
        self.event_shape = (dim,)
        self.dim = dim
        self.k = spring_constant

    def _energy(self, x):
        return 0.5 * self.k * (x.to(torch.float64) ** 2).sum(-1)

    def log_partition_function(self, temperature: float) -> float:
        return 0.5 * self.dim * math.log(2 * math.pi * KB * temperature / self.k)

    def mean_energy(self, temperature: float) -> float:
        return 0.5 * self.dim * KB * temperature

    def heat_capacity(self) -> float:
        return 0.5 * self.dim * KB


class GaussianModel:
    """Isotropic Gaussian ``N(0, width² k_B T / k)``: exact Boltzmann density when width=1."""

    def __init__(self, dim: int = 2, spring_constant: float = 100.0, width: float = 1.0,
                 reference_temperature: float = 300.0, temperature_range=(300.0, 600.0)):
        self.event_shape = (dim,)
        self.k = spring_constant
        self.width = width
        self.reference_temperature = reference_temperature
        self.temperature_range = temperature_range
        self.device = torch.device("cpu")
        self.dtype = torch.float64

    def _sigma(self, temperature):
        return self.width * math.sqrt(KB * float(temperature) / self.k)

    def log_prob(self, x, temperature):
        sigma = self._sigma(temperature)
        d = x.shape[-1]
        return (-0.5 * (x / sigma).pow(2).sum(-1)
                - d * math.log(sigma) - 0.5 * d * math.log(2 * math.pi))

    def sample(self, n, temperature, generator=None):
        x = torch.randn(n, *self.event_shape, dtype=torch.float64,
                        generator=generator) * self._sigma(temperature)
        return x, self.log_prob(x, temperature)


class FailingEnergy(Energy):
    """Wrap ``base``; samples whose first coordinate exceeds ``threshold`` give NaN."""

    def __init__(self, base: Energy, threshold: float):
        super().__init__()
        self.base = base
        self.event_shape = base.event_shape
        self.threshold = threshold

    def _energy(self, x):
        energies = self.base(x)
        return torch.where(x.reshape(x.shape[0], -1)[:, 0] > self.threshold,
                           torch.full_like(energies, float("nan")), energies)


class ContextEnergy(Energy):
    """Potential energies (kJ/mol) of ``(B, N, 3)`` nm conformations with one OpenMM Context."""

    def __init__(self, msys):
        import openmm

        super().__init__()
        self.event_shape = (msys.n_atoms, 3)
        integrator = openmm.VerletIntegrator(0.001)
        self.context = openmm.Context(msys.system, integrator,
                                      openmm.Platform.getPlatformByName("Reference"))
        self._integrator = integrator

    def _energy(self, x):
        from openmm import unit

        values = []
        for frame in x.detach().cpu().numpy().astype(np.float64):
            self.context.setPositions(frame)
            state = self.context.getState(getEnergy=True)
            values.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        return torch.tensor(values, dtype=torch.float64)


class PerturbedFramesModel:
    """Molecular test model: uniform choice of a frame + N(0, sigma²) noise on every atom.

    ``log p(x) = logmeanexp_k log N(x; frame_k, sigma² I)``, exact; independent of T.
    """

    def __init__(self, msys, frames, sigma: float = 0.002):
        self.system = msys
        self.frames = torch.as_tensor(np.asarray(frames), dtype=torch.float64)
        self.sigma = sigma
        self.event_shape = tuple(self.frames.shape[1:])
        self.reference_temperature = 300.0
        self.temperature_range = (300.0, 600.0)

    def log_prob(self, x, temperature=None):
        x = x.to(torch.float64)
        diff = x[:, None] - self.frames[None]
        dof = diff[0, 0].numel()
        log_gauss = (-0.5 * diff.pow(2).sum((-1, -2)) / self.sigma ** 2
                     - dof * math.log(self.sigma) - 0.5 * dof * math.log(2 * math.pi))
        return torch.logsumexp(log_gauss, dim=1) - math.log(self.frames.shape[0])

    def sample(self, n, temperature, generator=None):
        index = torch.randint(self.frames.shape[0], (n,), generator=generator)
        x = self.frames[index] + self.sigma * torch.randn(n, *self.event_shape,
                                                          dtype=torch.float64,
                                                          generator=generator)
        return x.to(torch.float32), self.log_prob(x)
