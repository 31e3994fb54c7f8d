"""TemperatureFlow: a temperature-conditioned Boltzmann generator for an OpenMM system.

``p_θ(x | T)`` on Cartesian conformations ``x`` ``(B, N, 3)`` in nm, composed of

    Cartesian x ──InternalCoordinates──► z = (bonds | angles | torsions)
                ──Whitening────────────► y (stiff coordinates decorrelated)
                ──ConditionalFlow(T)───► prior (truncated normal × torus)

``log_prob(x, T) = flow.log_prob(z, T) + log|det ∂z/∂x|`` with the internal-coordinate
log-determinant convention of :mod:`openmm_trade.coordinates`: the density lives on the
space of conformations modulo rigid-body motion (orientations uniform), constrained bonds
held at their lengths. It differs from a density on R^{3N} by a constant that cancels in
importance weights, in ``∂ log p / ∂β`` and in free-energy differences. ``sample``
returns conformations in the canonical pose of :meth:`InternalCoordinates.inverse`.

Coordinates and their domains (built by :meth:`TemperatureFlow.for_system` from boundary
data): bonds and angles are bounded coordinates on the data's ``[min, max]`` widened by
``margin`` times the data range on each side (clamped to bonds > 0, angles in (0, π));
torsions are circular, except the chirality torsions (improper-like torsions at
stereocentres), which are bounded coordinates on the sign half of the data, so samples
keep the boundary data's handedness. With ``whiten=True`` (the default) every coordinate
that is not a circular torsion (bonds, angles, stiff and chirality torsions) passes
through a :class:`~.Whitening` estimated on the boundary data, so the flow starts from
their joint Gaussian, ring-closure correlations included, and its domains are those of
the whitened data (``docs/TUNING.md`` has the measurements).

Coupling pattern (per block, repeated ``n_blocks`` times, the torsion split alternating
between even/odd and first/second half): torsions_a | torsions_b, torsions_b | torsions_a,
angles | torsions, bonds | angles + torsions.

Precision: the model runs in ``dtype`` (float32 by default), including the internal
coordinates; samples and log-densities are returned in that dtype. Energies should be
evaluated in float64 by the energy module (it casts).

Example
-------
>>> import openmm_trade as ot
>>> from openmm_trade.flow import TemperatureFlow
>>> msys = ot.systems.load("alanine-dipeptide-vacuum")
>>> traj = ot.md.simulate(msys, 300, n_frames=20, interval_ps=0.1, seed=1,
...                       equilibration_ps=0.2, quiet=True)
>>> model = TemperatureFlow.for_system(msys, traj, temperature_range=(300, 600),
...                                    hidden=32, n_blocks=1)
>>> x, log_p = model.sample(4, 450.0)
>>> x.shape, model.log_prob(x, 450.0).shape
(torch.Size([4, 22, 3]), torch.Size([4]))
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..coordinates import ANGLE_EPS, InternalCoordinates
from ..errors import CheckpointError, InputError, one_line
from ..files import atomic_write_path, unreadable_torch_file
from ..system import MolecularSystem
from .architecture import FlowArchitecture
from .conditional import ConditionalFlow, alternating_layers
from .domain import Domain
from .whitening import Whitening

_FORMAT = "openmm_trade.TemperatureFlow"
_VERSION = 1
#: shortest bond length a flow may produce, nm
MIN_BOND = 1e-3
#: torsions whose data spread less than this (standard deviation, rad) are stiff
STIFF_TORSION_STD = math.radians(20.0)


def _as_xyz(boundary, n_atoms: int) -> np.ndarray:
    """``(M, N, 3)`` float64 nm array from an mdtraj.Trajectory, tensor or array."""
    xyz = getattr(boundary, "xyz", boundary)
    if isinstance(xyz, torch.Tensor):
        xyz = xyz.detach().cpu().numpy()
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 3 or xyz.shape[1:] != (n_atoms, 3) or xyz.shape[0] < 2:
        raise InputError(
            f"boundary must be an mdtraj.Trajectory or array of shape (M >= 2, {n_atoms}, 3) "
            f"in nm, got shape {xyz.shape}")
    if not np.all(np.isfinite(xyz)):
        raise InputError("boundary contains NaN or infinite coordinates")
    return xyz


def coupling_pattern(coordinates: InternalCoordinates) -> list[list[tuple[list, list]]]:
    """The two alternating blocks of coupling layers over ``z`` (see module docs).

    >>> import openmm_trade as ot
    >>> ic = InternalCoordinates.from_system(ot.systems.load("alanine-dipeptide-vacuum"))
    >>> [len(block) for block in coupling_pattern(ic)]
    [4, 4]
    """
    index = torch.arange(coordinates.n_dof)
    torsion = index[coordinates.torsion_mask.cpu()].tolist()
    angle = index[coordinates.angle_mask.cpu()].tolist()
    bond = index[coordinates.bond_mask.cpu()].tolist()
    blocks = []
    for torsion_block in alternating_layers(len(torsion)):
        block = [([torsion[i] for i in t], [torsion[i] for i in c]) for t, c in torsion_block]
        if angle:
            block.append((angle, torsion))
        if bond:
            block.append((bond, angle + torsion))
        blocks.append(block)
    return blocks


def data_domains(coordinates: InternalCoordinates, boundary, margin: float = 0.5,
                 restrict_torsions: bool = True) -> list[Domain]:
    """Per-coordinate :class:`Domain` of ``z`` from boundary conformations.

    Bonds: ``interval`` within ``[MIN_BOND, ∞)``; angles: within ``[ANGLE_EPS, π -
    ANGLE_EPS]``; chirality torsions: ``interval`` on the sign half (``[0, π]`` or
    ``[-π, 0]``) that holds the data, narrowed to the data with ``margin``; other torsions:
    ``circular``, except (``restrict_torsions``) stiff ones, whose data spread less than
    :data:`STIFF_TORSION_STD` (20°; on alanine dipeptide at 300 and 600 K: peptide bonds
    ω, amide hydrogens, carbonyl oxygens and the hydrogens of a methyl group relative to
    each other spread 6-16°, φ and ψ 32-59°, methyl rotations ~100°), and torsions about a
    ring bond (:attr:`~.InternalCoordinates.ring_torsions`: a ring cannot turn; a
    proline's pucker spreads them 25-30°). They become ``arc`` domains around the data
    (widened by ``margin``), so the model keeps the isomer the MD was in (trans peptide
    bonds stay trans) as the MD itself does: without this the flow leaks a little density
    into the cis isomer, which the force field scores as low-energy, and a handful of such
    samples take all the importance weight (``docs/TUNING.md``).

    Raises
    ------
    InputError
        If a chirality torsion takes both signs in the data (a handedness flip).

    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> ic = InternalCoordinates.from_system(msys)
    >>> domains = data_domains(ic, msys.positions[None].repeat(2, 0))
    >>> sorted({d.kind for d in domains})
    ['arc', 'interval']
    """
    xyz = _as_xyz(boundary, coordinates.n_atoms)
    device = coordinates.bond_mask.device
    with torch.no_grad():
        z = coordinates.forward(torch.as_tensor(xyz, device=device))[0].cpu().numpy()
    chiral = set(coordinates.chirality_torsions.tolist())
    ring = set(coordinates.ring_torsions.tolist())
    bond_mask, angle_mask = coordinates.bond_mask.cpu(), coordinates.angle_mask.cpu()
    domains = []
    for k in range(coordinates.n_dof):
        values = z[:, k]
        if bond_mask[k]:
            domains.append(Domain.from_data(values, margin, (MIN_BOND, None), "interval"))
        elif angle_mask[k]:
            domains.append(Domain.from_data(values, margin, (ANGLE_EPS, math.pi - ANGLE_EPS),
                                            "interval"))
        elif k in chiral:
            positive = values > 0
            if not (positive.all() or (~positive).all()):
                raise InputError(
                    f"boundary data change the handedness of chirality torsion "
                    f"{coordinates.dof_names[k]!r} ({int(positive.sum())} of {len(values)} "
                    "frames > 0): check the trajectory for a chirality flip")
            bounds = (0.0, math.pi) if positive.all() else (-math.pi, 0.0)
            domains.append(Domain.from_data(values, margin, bounds, "interval"))
        else:
            arc = Domain.arc_from_data(values, margin) if restrict_torsions else None
            stiff = (arc is not None and (arc.scale < STIFF_TORSION_STD or k in ring)
                     and arc.width < 1.8 * math.pi)
            domains.append(arc if stiff else Domain.circular())
    return domains


def whitening_for(coordinates: InternalCoordinates, boundary, domains: list[Domain],
                  margin: float = 0.5) -> tuple[Whitening | None, list[Domain]]:
    """The :class:`~.Whitening` of every non-circular coordinate of ``z`` estimated on
    ``boundary``, and ``domains`` with those coordinates' domains replaced by windows on the
    whitened data (``margin`` as in :func:`data_domains`). ``(None, domains)`` when the
    boundary has too few frames (see :data:`~.whitening.MIN_FRAMES_PER_COORDINATE`).

    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> ic = InternalCoordinates.from_system(msys)
    >>> frames = msys.positions[None].repeat(2, 0)
    >>> whitening_for(ic, frames, data_domains(ic, frames))[0] is None  # 2 frames: too few
    True
    """
    index = [k for k, d in enumerate(domains) if not d.is_circular]
    xyz = torch.as_tensor(_as_xyz(boundary, coordinates.n_atoms),
                          device=coordinates.bond_mask.device)
    with torch.no_grad():
        z = coordinates.forward(xyz)[0]
        whitening = Whitening.from_data(
            z, index, periodic=[domains[k].kind == "arc" for k in index],
            centres=[0.5 * (domains[k].low + domains[k].high) for k in index])
        if whitening is None:
            return None, domains
        y = whitening.forward(z)[0].cpu().numpy()
    whitened = list(domains)
    for k in index:
        whitened[k] = Domain.from_data(y[:, k], margin, kind="real")
    return whitening, whitened


class FlowCoordinates(nn.Module):
    """The map from Cartesian conformations to the flow's coordinates ``y``: internal
    coordinates, then the optional :class:`~.Whitening`.

    ``forward(x) -> (y, log|det ∂y/∂x|)`` and ``inverse(y) -> (x, log|det ∂x/∂y|)``, with
    the internal-coordinate convention of :mod:`openmm_trade.coordinates`.
    """

    def __init__(self, internal: InternalCoordinates, whitening: Whitening | None = None):
        super().__init__()
        self.internal = internal
        self.whitening = whitening

    @property
    def device(self) -> torch.device:
        """Device of the coordinate buffers."""
        return self.internal.bond_mask.device

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, log_det = self.internal.forward(x)
        if self.whitening is None:
            return z, log_det
        y, whitening_log_det = self.whitening.forward(z)
        return y, log_det + whitening_log_det

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = torch.zeros_like(y[:, 0])
        if self.whitening is not None:
            y, log_det = self.whitening.inverse(y)
        x, internal_log_det = self.internal.inverse(y)
        return x, log_det + internal_log_det


class TemperatureFlow(nn.Module):
    """Conditional Boltzmann generator ``p_θ(x | T)`` for a :class:`MolecularSystem`.

    Build one with :meth:`for_system`; the constructor composes given parts.

    Parameters
    ----------
    system : MolecularSystem
        The molecule (``model.system``).
    flow : ConditionalFlow
        Flow over the internal coordinates ``z`` (``event_shape == (n_dof,)``).
    coordinates : InternalCoordinates, optional
        Default ``InternalCoordinates.from_system(system)``.
    whitening : Whitening, optional
        Decorrelation of internal coordinates before the flow (see :func:`whitening_for`).

    Attributes
    ----------
    temperature_range, reference_temperature, event_shape, device, dtype
        The model protocol (``event_shape == (N, 3)``).

    Examples
    --------
    >>> import openmm_trade as ot
    >>> from openmm_trade.flow import ConditionalFlow, TemperatureFlow, data_domains
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> ic = InternalCoordinates.from_system(msys)
    >>> domains = data_domains(ic, msys.positions[None].repeat(2, 0))
    >>> model = TemperatureFlow(msys, ConditionalFlow(domains, 300.0, (300.0, 500.0),
    ...                                               hidden=16, n_blocks=1), ic)
    >>> model.event_shape
    (22, 3)
    """

    def __init__(self, system: MolecularSystem, flow: ConditionalFlow,
                 coordinates: InternalCoordinates | None = None,
                 whitening: Whitening | None = None):
        super().__init__()
        if not isinstance(system, MolecularSystem):
            raise InputError(f"system must be a MolecularSystem, got {type(system).__name__}")
        if not isinstance(flow, ConditionalFlow):
            raise InputError(f"flow must be a flow.ConditionalFlow, got {type(flow).__name__}")
        coordinates = coordinates or InternalCoordinates.from_system(system)
        if flow.event_shape != (coordinates.n_dof,):
            raise InputError(f"flow must have event_shape ({coordinates.n_dof},) (the internal "
                             f"coordinates), got {flow.event_shape}")
        self.system = system
        self.flow = flow
        #: facts about the trained model kept by :meth:`save` (training records the overlap
        #: σ on held-out boundary frames here, see :func:`openmm_trade.training.train`)
        self.metadata: dict = {}
        self.coordinates = coordinates.to(device=flow.device)
        #: Cartesian conformations <-> the flow's coordinates (internal, then whitened)
        self.flow_coordinates = FlowCoordinates(
            self.coordinates,
            None if whitening is None else whitening.to(device=flow.device, dtype=flow.dtype))
        self.event_shape = (system.n_atoms, 3)

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_system(
        cls,
        msys: MolecularSystem,
        boundary,
        temperature_range: tuple[float, float],
        reference_temperature: float | None = None,
        boundary_temperature: float | None = None,
        margin: float = 0.5,
        restrict_torsions: bool = True,
        whiten: bool = True,
        architecture: FlowArchitecture | dict | None = None,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **overrides,
    ) -> TemperatureFlow:
        """A model with data-informed coordinate intervals and priors.

        Parameters
        ----------
        msys : MolecularSystem
            The molecule.
        boundary : mdtraj.Trajectory or array (M, N, 3)
            Boundary conformations (nm), e.g. MD at ``T0``; sets the intervals of bonds and
            angles (and their truncated-normal priors) and the chirality of the model.
        temperature_range : (float, float)
            Temperatures in K the model is for.
        reference_temperature : float, optional
            ``T0`` of the condition ``log(T / T0)``; default ``boundary_temperature`` if
            given, else ``temperature_range[0]``.
        boundary_temperature : float, optional
            Temperature of the boundary data (only used for the default above).
        margin : float
            Widening of each data interval, as a fraction of the data range per side.
        restrict_torsions : bool
            Keep stiff torsions (peptide bonds, ...) on an arc around the data, i.e. in the
            boundary's isomer (see :func:`data_domains`); ``False``: every non-chiral
            torsion is circular.
        whiten : bool
            Decorrelate the non-circular coordinates on the boundary data before the flow
            (:func:`whitening_for`); skipped with fewer than 5 frames per coordinate.
        architecture : FlowArchitecture or dict, optional
            Width, depth, spline bins and latent prior; default :class:`~.FlowArchitecture`
            (its docstring gives the measurements behind the defaults).
        seed, device, dtype
            See :class:`ConditionalFlow`.
        **overrides
            Fields of :class:`~.FlowArchitecture` (``hidden=``, ``n_blocks=``,
            ``prior=``, ...) that replace those of ``architecture``.

        Returns
        -------
        TemperatureFlow

        Examples
        --------
        >>> import openmm_trade as ot
        >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
        >>> frames = msys.positions[None].repeat(3, 0)
        >>> model = TemperatureFlow.for_system(msys, frames, (300, 600), hidden=16, n_blocks=1)
        >>> model.reference_temperature, model.temperature_range
        (300.0, (300.0, 600.0))
        """
        if not isinstance(msys, MolecularSystem):
            raise InputError(f"msys must be a MolecularSystem, got {type(msys).__name__}")
        architecture = FlowArchitecture.resolve(architecture, overrides)
        coordinates = InternalCoordinates.from_system(msys)
        domains = data_domains(coordinates, boundary, margin, restrict_torsions)
        whitening = None
        if whiten:
            whitening, domains = whitening_for(coordinates, boundary, domains, margin)
        if reference_temperature is None:
            reference_temperature = (boundary_temperature if boundary_temperature is not None
                                     else temperature_range[0])
        flow = ConditionalFlow(
            domains, float(reference_temperature), tuple(float(t) for t in temperature_range),
            architecture, layers=coupling_pattern(coordinates), seed=seed, device=device,
            dtype=dtype,
        )
        return cls(msys, flow, coordinates, whitening)

    # ------------------------------------------------------------------ protocol facts
    @property
    def temperature_range(self) -> tuple[float, float]:
        """Training temperature range in K."""
        return self.flow.temperature_range

    @property
    def reference_temperature(self) -> float:
        """``T0`` in K."""
        return self.flow.reference_temperature

    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return self.flow.device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the model, its samples and log-densities."""
        return self.flow.dtype

    # ------------------------------------------------------------------ the protocol
    def _check_x(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch.Tensor of shape (B, {self.system.n_atoms}, 3) "
                             f"in nm, got {type(x).__name__}")
        if x.dim() != 3 or tuple(x.shape[1:]) != self.event_shape:
            raise InputError(f"x must have shape (B, {self.system.n_atoms}, 3), "
                             f"got {tuple(x.shape)}")
        return x.to(device=self.device, dtype=self.dtype)

    def log_prob(self, x: torch.Tensor, temperature) -> torch.Tensor:
        """Log-density ``(B,)`` of conformations ``x`` ``(B, N, 3)`` nm at ``temperature``.

        Includes the internal-coordinate log-determinant; ``-inf`` outside the model's
        support (a bond or angle beyond its interval, a flipped chirality).
        """
        y, log_det = self.flow_coordinates.forward(self._check_x(x))
        return self.flow.log_prob(y, temperature) + log_det

    def sample(self, n: int, temperature, generator: torch.Generator | None = None):
        """``n`` conformations ``(n, N, 3)`` nm at ``temperature`` and their log-densities.

        Differentiable with respect to parameters and to ``temperature`` (a tensor).
        """
        y, log_p = self.flow.sample(n, temperature, generator)
        x, log_det = self.flow_coordinates.inverse(y)
        return x, log_p - log_det

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write architecture, weights, intervals and the system fingerprint atomically.

        >>> import tempfile, os, openmm_trade as ot
        >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
        >>> model = TemperatureFlow.for_system(msys, msys.positions[None].repeat(2, 0),
        ...                                    (300, 400), hidden=8, n_blocks=1)
        >>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
        >>> model.save(path)
        >>> TemperatureFlow.load(path, msys).temperature_range
        (300.0, 400.0)
        """
        path = Path(path)
        payload = {
            "format": _FORMAT,
            "version": _VERSION,
            "fingerprint": self.system.fingerprint,
            "n_atoms": self.system.n_atoms,
            "zmatrix": self.coordinates.zmatrix.rows.tolist(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "config": self.flow.config,
            "state_dict": {k: v.detach().cpu() for k, v in self.flow.state_dict().items()},
            "metadata": dict(self.metadata),
        }
        whitening = self.flow_coordinates.whitening
        if whitening is not None:
            payload["whitening"] = whitening.to_dict()
        with atomic_write_path(path) as tmp:
            torch.save(payload, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, msys: MolecularSystem,
             device: str | torch.device = "cpu", dtype: torch.dtype | None = None
             ) -> TemperatureFlow:
        """Load a model saved with :meth:`save` for the same system.

        Raises
        ------
        CheckpointError
            Unreadable or foreign file, or a system whose fingerprint differs.
        """
        path = Path(path)
        expected = f"model file {path}: expected a model saved by TemperatureFlow.save"
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - torch raises many types for bad files
            raise CheckpointError(f"{expected}, found {unreadable_torch_file(path, error)}"
                                  ) from None
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else None
            raise CheckpointError(f"{expected}, found "
                                  + (f"a file of format {found!r}" if found else
                                     f"a saved {type(payload).__name__}"))
        if payload.get("version") != _VERSION:
            raise CheckpointError(f"model file {path}: expected format version {_VERSION}, "
                                  f"found version {payload.get('version')} (saved by another "
                                  "openmm_trade version)")
        if payload.get("fingerprint") != msys.fingerprint:
            raise CheckpointError(
                f"model file {path}: expected a model of {msys.name!r} ({msys.n_atoms} atoms, "
                f"fingerprint {msys.fingerprint[:12]}…), found one trained for another system "
                f"({payload.get('n_atoms')} atoms, fingerprint "
                f"{str(payload.get('fingerprint'))[:12]}…): load it with the MolecularSystem it "
                "was built for")
        coordinates = InternalCoordinates.from_system(msys, zmatrix=payload["zmatrix"])
        dtype = dtype or getattr(torch, payload["dtype"])
        # files written before prior_floor was stored were built without a floor
        config = {"prior_floor": 0.0, **payload["config"]}
        flow = ConditionalFlow(**config, device=device, dtype=dtype)
        try:
            flow.load_state_dict(payload["state_dict"])
        except RuntimeError as error:
            raise CheckpointError(f"model file {path}: expected weights that fit its "
                                  f"architecture, found: {one_line(error)}") from None
        whitening = payload.get("whitening")
        model = cls(msys, flow, coordinates,
                    None if whitening is None else Whitening.from_dict(whitening))
        model.metadata = dict(payload.get("metadata", {}))
        return model
