"""Coverage of the boundary data: do the slow torsions cross between their basins?

A flow trained at T0 can only transfer what the boundary data contain. An ESS cannot see
a state the data never visited, so before training we count how often the slow torsions
of the boundary trajectory move between their basins:

* slow torsions: the backbone φ/ψ when the topology has them, otherwise the heavy-atom
  Z-matrix torsions with the largest circular spread;
* basins: the peaks of the torsion's smoothed circular histogram, separated at the
  histogram's minima; peaks not separated by a real barrier (the minimum between them
  above a quarter of the lower peak, i.e. a dip under 1.4 kT) are merged;
* transitions: core-set counting with hysteresis. The core of a basin is the basin less
  ``margin_deg`` on each side of its borders; a frame in no core keeps the basin of the
  last core visited, and a transition is counted when the trajectory enters the core of
  another basin. Recrossings of a border that do not reach the other core are not
  counted. Chains (:func:`openmm_trade.md.frame_chains`) are counted separately and their
  ends are never joined;
* statistical inefficiency ``g`` (frames): the larger of those of cos θ and sin θ
  (pymbar), the frame-weighted mean over chains.

A slow torsion is flagged when it crosses fewer than ``min_transitions`` times (default 10)
between two or more basins, or when it has one basin and the data leave an arc of at least
60° of the circle without a single frame (the data sit in one part of the circle; what lies
beyond was never visited). A torsion with one basin that covers the whole circle has no
barrier to cross and is not flagged (ψ of alanine dipeptide in vacuum at 600 K). A flagged
boundary will likely miss or misweight states, at T0 and after transfer. MD at
a higher T0 (the top of the temperature range) crosses barriers more often.

Example
-------
>>> import numpy as np
>>> angles = np.deg2rad(np.r_[np.full(50, -120.0), np.full(50, 60.0)])
>>> count_transitions(angles)[1]
1
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import mdtraj
import numpy as np

from .errors import InputError
from .timeseries import circular_statistical_inefficiency
from .topology import phi_psi_pairs

__all__ = ["Coverage", "TorsionCoverage", "count_transitions", "find_basins",
           "largest_gap_deg", "measure"]

#: Bins of the circular histogram (10° each).
_BINS = 36
#: Boundary frames per degree of freedom below which the fit at T0 is data-limited: the
#: held-out σ of the development set rose from 1.8 to 2.25 below it (docs/TUNING.md).
FRAMES_PER_DOF = 125
#: A peak must hold at least this fraction of the frames (per bin, after smoothing).
_MIN_PEAK = 0.002
#: ... and at least this many frames (smoothed: [1, 2, 1] / 4 over neighbouring bins).
_MIN_PEAK_FRAMES = 2.0
#: Peaks merge when the minimum between them is above this fraction of the lower peak: a
#: basin border is a dip of at least ln 4 = 1.4 kT in the data's own (smoothed) histogram.
#: Shallower dips (alanine's β / C7eq split of φ at 300 K, about 1.2 kT) are substates.
_MERGE_DEPTH = 0.25
#: A one-basin torsion whose data leave an empty arc at least this wide is flagged.
_MIN_GAP_DEG = 60.0


@dataclass(frozen=True)
class TorsionCoverage:
    """Coverage of one slow torsion.

    Attributes
    ----------
    name : str
        ``"phi"``/``"psi"`` (with the residue when there are several) or ``"torsion a-b-c-d"``.
    atoms : tuple of int
        The four atom indices.
    borders_deg : tuple of float
        Basin borders in degrees (empty: one basin).
    transitions : int
        Transitions between basins, summed over chains.
    statistical_inefficiency : float
        ``g`` in frames.
    largest_gap_deg : float
        The widest arc of the circle (in 10° bins) that holds no frame.
    """

    name: str
    atoms: tuple[int, int, int, int]
    borders_deg: tuple[float, ...]
    transitions: int
    statistical_inefficiency: float
    largest_gap_deg: float = 0.0

    def crossed_too_rarely(self, min_transitions: int) -> bool:
        """Fewer than ``min_transitions`` crossings between basins, or one basin that
        leaves part of the circle unvisited (see the module notes)."""
        if self.n_basins == 1 and self.largest_gap_deg < _MIN_GAP_DEG:
            return False
        return self.transitions < min_transitions

    @property
    def n_basins(self) -> int:
        """Number of basins found in the data (1 when no border)."""
        return max(1, len(self.borders_deg))

    def frames_needed(self, n_frames: int, min_transitions: int) -> int | None:
        """Frames of MD like these that would show ``min_transitions`` crossings, at the
        crossing rate seen in ``n_frames``; ``None`` when the torsion is not flagged.

        With no crossing seen the rate is taken at its 95 % Poisson upper bound, 3 per
        ``n_frames``, so the estimate is a lower bound: ``n_frames * min_transitions / 3``.
        Crossings are rare events, so with a few of them the estimate is rough (± its
        square root, relative).

        >>> TorsionCoverage("phi", (4, 6, 8, 14), (0.0, 120.0), 4, 50.0).frames_needed(6000, 10)
        15000
        >>> TorsionCoverage("psi", (6, 8, 14, 16), (), 0, 50.0, 90.0).frames_needed(6000, 10)
        20000
        """
        if not self.crossed_too_rarely(min_transitions):
            return None
        rate = (self.transitions or 3) / n_frames
        return int(math.ceil(min_transitions / rate))


@dataclass(frozen=True)
class Coverage:
    """Result of :func:`measure`.

    Attributes
    ----------
    torsions : tuple of TorsionCoverage
    n_frames, n_chains : int
    min_transitions : int
        Threshold of the flag.
    interval_ps : float or None
        Time between frames when the trajectory records it (to state the MD needed in ns).
    n_dof : int or None
        Degrees of freedom of the molecule, when known: fewer than :data:`FRAMES_PER_DOF`
        frames per degree of freedom add a note (:attr:`fit_frames_needed`).
    """

    torsions: tuple[TorsionCoverage, ...]
    n_frames: int
    n_chains: int
    min_transitions: int
    interval_ps: float | None = None
    n_dof: int | None = None

    @property
    def fit_frames_needed(self) -> int | None:
        """``FRAMES_PER_DOF × n_dof`` when these data have fewer frames than that (the fit at
        T0 is then likely limited by the data), else ``None``.

        >>> Coverage((), 6000, 2, 10, 0.5, n_dof=98).fit_frames_needed
        12250
        >>> Coverage((), 6000, 2, 10, 0.5, n_dof=48).fit_frames_needed is None
        True
        """
        if self.n_dof is None or self.n_frames >= FRAMES_PER_DOF * self.n_dof:
            return None
        return FRAMES_PER_DOF * self.n_dof

    def _ns(self, frames: int) -> str:
        return (f" ({frames * self.interval_ps / 1000:.3g} ns at {self.interval_ps:g} ps per "
                "frame)" if self.interval_ps else "")

    @property
    def frames_needed(self) -> int | None:
        """Boundary frames at which every flagged torsion would cross ``min_transitions``
        times at its rate in these data (the largest of
        :meth:`TorsionCoverage.frames_needed`); ``None`` when nothing is flagged."""
        needed = [t.frames_needed(self.n_frames, self.min_transitions) for t in self.torsions]
        needed = [n for n in needed if n is not None]
        return max(needed) if needed else None

    def needed_line(self) -> str:
        """The MD a flagged boundary would need, in words ("" when nothing is flagged)."""
        frames = self.frames_needed
        if frames is None:
            return ""
        bound = ("at least " if any(t.transitions == 0 and t.crossed_too_rarely(
            self.min_transitions) for t in self.torsions) else "about ")
        return (f"At the crossing rate of these data the slow torsions would cross "
                f"{self.min_transitions} times in {bound}{frames} frames{self._ns(frames)} of "
                "MD at this temperature.")

    def fit_line(self) -> str:
        """The frames a fit of this molecule needs, in words ("" when there are enough)."""
        frames = self.fit_frames_needed
        if frames is None:
            return ""
        return (f"NOTE: {self.n_frames} frames for {self.n_dof} degrees of freedom: the fit at "
                f"T0 is likely limited by the data; {FRAMES_PER_DOF} per degree of freedom, "
                f"{frames} frames{self._ns(frames)}, would suffice.")

    @property
    def flagged(self) -> list[str]:
        """Names of the slow torsions that cross too rarely (see the module notes)."""
        return [t.name for t in self.torsions if t.crossed_too_rarely(self.min_transitions)]

    @property
    def ok(self) -> bool:
        """True when no slow torsion is flagged."""
        return not self.flagged

    def to_dict(self) -> dict:
        """Plain data for JSON (``flagged`` and ``ok`` included)."""
        torsions = [{**asdict(t), "n_basins": t.n_basins} for t in self.torsions]
        return {"torsions": torsions, "n_frames": self.n_frames, "n_chains": self.n_chains,
                "min_transitions": self.min_transitions, "interval_ps": self.interval_ps,
                "flagged": self.flagged, "ok": self.ok, "frames_needed": self.frames_needed,
                "needed": self.needed_line(), "n_dof": self.n_dof,
                "fit_frames_needed": self.fit_frames_needed, "fit": self.fit_line()}

    def summary(self) -> str:
        """Human-readable lines, ending with the flag when raised."""
        lines = [f"coverage of {self.n_frames} boundary frames ({self.n_chains} chain"
                 f"{'s' if self.n_chains != 1 else ''}):"]
        for t in self.torsions:
            lines.append(f"  {t.name}: {t.n_basins} basin{'s' if t.n_basins != 1 else ''}, "
                         f"{t.transitions} transitions, g = {t.statistical_inefficiency:.1f} "
                         "frames")
        if self.flagged:
            lines.append(
                f"  WARNING: {', '.join(self.flagged)}: fewer than {self.min_transitions} "
                "crossings between basins, or part of the circle never visited: the boundary "
                "data likely miss or misweight states. Run longer MD, or MD at a higher "
                "temperature (the top of the range)."
            )
            lines.append(f"  {self.needed_line()}")
        if self.fit_frames_needed is not None:
            lines.append(f"  {self.fit_line()}")
        return "\n".join(lines)


def largest_gap_deg(angles, bins: int = _BINS) -> float:
    """Width in degrees of the widest run of empty histogram bins, around the circle.

    >>> import numpy as np
    >>> largest_gap_deg(np.deg2rad(np.linspace(-170.0, 0.0, 100)))
    180.0
    """
    counts, _ = np.histogram(_check_angles(angles, "angles"), bins=bins, range=(-np.pi, np.pi))
    if not counts.any():
        return 360.0
    empty = np.r_[counts, counts] == 0  # twice around: runs through ±180° count whole
    longest = run = 0
    for value in empty:
        run = run + 1 if value else 0
        longest = max(longest, run)
    return min(longest, bins) * 360.0 / bins


def _circular_smooth(counts: np.ndarray) -> np.ndarray:
    return (np.roll(counts, 1) + 2 * counts + np.roll(counts, -1)) / 4.0


def find_basins(angles, bins: int = _BINS) -> np.ndarray:
    """Basin borders (radians, ascending in [-π, π)) of an angle series.

    Peaks of the smoothed circular histogram holding at least 0.2 % of the frames (and two
    frames) per bin are basins; neighbouring peaks whose separating minimum is above a
    quarter of the lower peak (a dip under 1.4 kT) are merged. Borders lie at the minima. One
    basin gives an empty array.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = np.r_[rng.normal(-2.0, 0.3, 500), rng.normal(1.0, 0.3, 500)]
    >>> np.round(np.rad2deg(find_basins(a)), -1)
    array([-20., 140.])
    """
    angles = _check_angles(angles, "angles")
    edges = np.linspace(-math.pi, math.pi, bins + 1)
    counts, _ = np.histogram(np.arctan2(np.sin(angles), np.cos(angles)), bins=edges)
    smooth = _circular_smooth(counts.astype(float))
    floor = max(_MIN_PEAK * angles.size, _MIN_PEAK_FRAMES)
    peaks = [i for i in range(bins) if smooth[i] >= floor and smooth[i] > smooth[i - 1]
             and smooth[i] >= smooth[(i + 1) % bins]]
    while len(peaks) > 1:
        # minimum between each peak and the next (circularly) and how deep it is
        gaps = []
        for k, p in enumerate(peaks):
            q = peaks[(k + 1) % len(peaks)]
            span = [(p + j) % bins for j in range(1, (q - p) % bins or bins)]
            if span:  # the middle of the lowest bins (an empty gap's centre)
                lowest = [j for j in span if smooth[j] == min(smooth[span])]
                low = lowest[len(lowest) // 2]
            else:
                low = p
            gaps.append((smooth[low] / min(smooth[p], smooth[q]), low, k))
        shallow = max(gaps)
        if shallow[0] <= _MERGE_DEPTH:
            borders = sorted(low for _, low, _ in gaps)
            return np.sort(0.5 * (edges[borders] + edges[np.array(borders) + 1]))
        # merge: drop the lower of the two peaks around the shallowest minimum
        k = shallow[2]
        p, q = peaks[k], peaks[(k + 1) % len(peaks)]
        peaks.remove(p if smooth[p] < smooth[q] else q)
    return np.zeros(0)


def count_transitions(angles, chains=None, borders=None, margin_deg: float = 15.0
                      ) -> tuple[np.ndarray, int]:
    """Transitions between the basins of an angle series (radians): ``(borders, count)``.

    Core-set counting with hysteresis (see the module docstring); ``borders`` default to
    :func:`find_basins`; ``chains`` (one integer per frame) separates independent chains.

    >>> import numpy as np
    >>> deg = np.array([-120, 5, -120, 60, 60, -120, 60.0])  # 5°: a recrossing, not counted
    >>> count_transitions(np.deg2rad(deg), borders=np.deg2rad([0.0, 180.0]))[1]
    3
    """
    angles = _check_angles(angles, "angles")
    chains = _check_chains(chains, angles.size)
    borders = find_basins(angles) if borders is None else np.sort(
        np.asarray(borders, dtype=np.float64))
    if borders.size < 2:
        return borders, 0
    margin = math.radians(float(margin_deg))
    wrapped = np.arctan2(np.sin(angles), np.cos(angles))
    # basin index: borders split the circle into len(borders) arcs; the arc below the first
    # border joins the last one
    basin = np.searchsorted(borders, wrapped) % borders.size
    distance = np.abs(np.angle(np.exp(1j * (wrapped[:, None] - borders[None, :]))))
    in_core = distance.min(axis=1) > margin
    count = 0
    for chain in np.unique(chains):
        last = -1
        for b in basin[(chains == chain) & in_core]:
            if last >= 0 and b != last:
                count += 1
            last = b
    return borders, int(count)


def _check_angles(angles, name: str) -> np.ndarray:
    array = np.asarray(angles, dtype=np.float64)
    if array.ndim != 1 or not np.all(np.isfinite(array)):
        raise InputError(f"{name} must be a 1-d array of finite angles in radians, got shape "
                         f"{array.shape}")
    return array


def _check_chains(chains, n: int) -> np.ndarray:
    if chains is None:
        return np.zeros(n, dtype=np.int64)
    array = np.asarray(chains)
    if array.shape != (n,) or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"chains must be {n} integers (one per frame), got {array.dtype} "
                         f"{array.shape}")
    return array


def _slow_torsions(traj: mdtraj.Trajectory, n_torsions: int) -> list[tuple[str, np.ndarray]]:
    """φ/ψ when the topology has them, else the heavy-atom torsions of largest spread."""
    pairs = phi_psi_pairs(traj.topology)
    if pairs:
        several = len(pairs) > 1
        named = []
        for residue, phi, psi in pairs:
            suffix = f" ({traj.topology.residue(residue)})" if several else ""
            named += [(f"phi{suffix}", phi), (f"psi{suffix}", psi)]
        return named
    from .zmatrix import ZMatrix

    rows = ZMatrix.from_topology(traj.topology.to_openmm()).rows
    rows = rows[np.all(rows >= 0, axis=1)]
    heavy = np.array([a.element is None or a.element.symbol != "H"
                      for a in traj.topology.atoms])
    if np.any(np.all(heavy[rows], axis=1)):
        rows = rows[np.all(heavy[rows], axis=1)]
    if not len(rows):
        return []
    angles = mdtraj.compute_dihedrals(traj, rows)
    spread = 1.0 - np.abs(np.mean(np.exp(1j * angles), axis=0))
    order = np.argsort(-spread, kind="stable")[:n_torsions]
    return [(f"torsion {'-'.join(str(a) for a in rows[i])}", rows[i]) for i in order]


def measure(traj: mdtraj.Trajectory, chains=None, n_torsions: int = 2,
            min_transitions: int = 10, margin_deg: float = 15.0,
            n_dof: int | None = None) -> Coverage:
    """Basin transitions and statistical inefficiency of the slow torsions of ``traj``.

    Parameters
    ----------
    traj : mdtraj.Trajectory
        Boundary frames.
    chains : array of int, optional
        Chain of each frame; default :func:`openmm_trade.md.frame_chains` (the record of
        :func:`openmm_trade.md.simulate`, one chain when absent).
    n_torsions : int, default 2
        How many torsions of largest circular spread to check when there is no φ/ψ.
    min_transitions : int, default 10
        A torsion with fewer transitions is flagged.
    margin_deg : float, default 15.0
        Half-width of the no-man's-land around each basin border (hysteresis).
    n_dof : int, optional
        The molecule's degrees of freedom (:attr:`MolecularSystem.n_dof`), to check the
        frames per degree of freedom (:attr:`Coverage.fit_frames_needed`).

    Returns
    -------
    Coverage

    Examples
    --------
    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> traj = ot.md.simulate(msys, 300, n_frames=20, interval_ps=0.1, seed=1,
    ...                       equilibration_ps=0.2, quiet=True, n_chains=1)
    >>> result = measure(traj)
    >>> [t.name for t in result.torsions], result.ok
    (['phi', 'psi'], False)
    """
    from .md import frame_chains

    if not isinstance(traj, mdtraj.Trajectory):
        raise InputError(f"traj must be an mdtraj.Trajectory, got {type(traj).__name__}")
    chains = frame_chains(traj) if chains is None else _check_chains(chains, traj.n_frames)
    for value, name in ((n_torsions, "n_torsions"), (min_transitions, "min_transitions")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    torsions = []
    for name, atoms in _slow_torsions(traj, int(n_torsions)):
        angles = np.asarray(mdtraj.compute_dihedrals(traj, np.array([atoms]))[:, 0], float)
        borders, count = count_transitions(angles, chains, margin_deg=margin_deg)
        weights, values = [], []
        for chain in np.unique(chains):
            part = angles[chains == chain]
            weights.append(part.size)
            values.append(circular_statistical_inefficiency(part))
        g = float(np.average(values, weights=weights)) if weights else 1.0
        torsions.append(TorsionCoverage(
            name, tuple(int(a) for a in atoms),
            tuple(round(float(np.rad2deg(b)), 1) for b in borders), count, g,
            largest_gap_deg(angles)))
    return Coverage(tuple(torsions), int(traj.n_frames), int(np.unique(chains).size),
                    int(min_transitions), _interval_ps(traj),
                    None if n_dof is None else int(n_dof))


def _interval_ps(traj: mdtraj.Trajectory) -> float | None:
    """ps between consecutive frames, when the trajectory's times say so (else None)."""
    if traj.n_frames < 2 or traj.time is None:
        return None
    step = float(np.median(np.diff(np.asarray(traj.time, dtype=float))))
    return step if step > 0 and math.isfinite(step) else None
