"""Tests of openmm_trade.coverage: basins and transitions of slow torsions.

Oracles: angle series built with a known number of basin changes (the test knows them by
construction), and real MD whose torsions are counted independently here.
"""

from __future__ import annotations

import mdtraj
import numpy as np
import pytest

import openmm_trade as ot
from openmm_trade import coverage
from openmm_trade.errors import InputError

CENTRES = np.deg2rad([-100.0, 70.0])


def telegraph(n_switches: int, dwell: int = 40, noise_deg: float = 15.0, seed: int = 0,
              recross_every: int = 0):
    """Angles that switch basins exactly ``n_switches`` times, Gaussian noise around the
    centres; with ``recross_every``, a frame 5° past the border (inside the margin) on the
    wrong side every that many frames: recrossing noise that must not count."""
    rng = np.random.default_rng(seed)
    basins = np.repeat(np.arange(n_switches + 1) % 2, dwell)
    angles = CENTRES[basins] + rng.normal(0.0, np.deg2rad(noise_deg), basins.size)
    if recross_every:
        border = np.deg2rad(-15.0)  # the midpoint between the centres on the short side
        wrong = np.where(basins == 0, border + np.deg2rad(5.0), border - np.deg2rad(5.0))
        picks = np.arange(dwell // 2, basins.size, recross_every)
        angles[picks] = wrong[picks]
    return np.arctan2(np.sin(angles), np.cos(angles))


@pytest.mark.parametrize("n_switches", [0, 1, 7, 23])
def test_known_transitions(n_switches):
    angles = telegraph(n_switches)
    borders, count = coverage.count_transitions(angles)
    assert count == n_switches
    if n_switches:
        # two basins, borders on either side between the centres
        assert borders.size == 2
        assert np.deg2rad(-60) < borders[0] < np.deg2rad(30)
        assert np.abs(np.angle(np.exp(1j * (borders[1] - np.deg2rad(165))))) < np.deg2rad(40)
    else:
        assert borders.size == 0


def test_hysteresis_removes_recrossings():
    angles = telegraph(7, recross_every=17)
    borders = np.deg2rad([-15.0, 165.0])
    _, naive = coverage.count_transitions(angles, borders=borders, margin_deg=0.0)
    assert naive > 7 + 10  # without the margin every recrossing frame counts twice
    assert coverage.count_transitions(angles, borders=borders)[1] == 7


def test_chains_are_not_joined():
    angles = np.r_[np.full(30, CENTRES[0]), np.full(30, CENTRES[1])]
    borders = np.deg2rad([-15.0, 165.0])
    assert coverage.count_transitions(angles, borders=borders)[1] == 1
    chains = np.repeat([0, 1], 30)
    assert coverage.count_transitions(angles, chains, borders=borders)[1] == 0


def test_three_basins_and_merging():
    rng = np.random.default_rng(1)
    centres = np.deg2rad([-150.0, -60.0, 60.0])
    angles = np.concatenate([rng.normal(c, 0.2, 400) for c in centres])
    assert coverage.find_basins(angles).size == 3
    # one broad basin with sampling noise: one basin, no border
    assert coverage.find_basins(rng.normal(0.5, 0.5, 2000)).size == 0


def test_one_basin_is_flagged_only_when_part_of_the_circle_is_empty():
    rng = np.random.default_rng(7)
    broad = rng.vonmises(2.5, 0.3, size=4000)  # one wide basin over the whole circle
    narrow = rng.vonmises(-2.0, 8.0, size=4000)  # one basin, most of the circle empty
    assert coverage.find_basins(broad).size == 0 and coverage.find_basins(narrow).size == 0
    assert coverage.largest_gap_deg(broad) == 0.0 and coverage.largest_gap_deg(narrow) >= 180
    torsions = tuple(coverage.TorsionCoverage(name, (0, 1, 2, 3), (), 0, 1.0,
                                              coverage.largest_gap_deg(a))
                     for name, a in (("broad", broad), ("narrow", narrow)))
    result = coverage.Coverage(torsions, 4000, 1, 10)
    assert result.flagged == ["narrow"] and "WARNING: narrow:" in result.summary()
    # two basins: the number of transitions decides, whatever the gaps
    two = coverage.TorsionCoverage("two", (0, 1, 2, 3), (0.0, 180.0), 9, 1.0, 0.0)
    assert coverage.Coverage((two,), 4000, 1, 10).flagged == ["two"]
    assert coverage.Coverage((two,), 4000, 1, 9).ok


def test_bad_input():
    with pytest.raises(InputError, match="angles"):
        coverage.count_transitions(np.zeros((3, 2)))
    with pytest.raises(InputError, match="chains"):
        coverage.count_transitions(np.zeros(3), chains=[0, 1])
    with pytest.raises(InputError, match="traj"):
        coverage.measure(np.zeros(3))


def _run(temperature: float):
    msys = ot.systems.load("alanine-dipeptide-vacuum")
    return ot.md.simulate(msys, temperature, n_frames=1000, interval_ps=0.2, seed=2,
                          equilibration_ps=2.0, quiet=True, n_chains=2)


@pytest.fixture(scope="module")
def hot_run():
    """Vacuum alanine dipeptide at 1000 K, two chains of 100 ps: φ crosses its barrier."""
    return _run(1000.0)


def _phi_changes(traj, first: tuple[float, float], second: tuple[float, float]) -> int:
    """Changes of φ (degrees) between two regions, last region visited, chain by chain;
    ``first`` = (a, b) means a < φ < b; ``second`` = (a, b) means φ > a or φ < b (wraps)."""
    angles = np.rad2deg(mdtraj.compute_phi(traj)[1][:, 0])
    chains = ot.md.frame_chains(traj)
    changes = 0
    for chain in np.unique(chains):
        last = None
        for a in angles[chains == chain]:
            region = 1 if first[0] < a < first[1] else 2 if (a > second[0] or a < second[1]) \
                else None
            if region is not None:
                changes += last is not None and region != last
                last = region
    return changes


def test_hot_md_crosses_cold_does_not(hot_run):
    hot = coverage.measure(hot_run)
    assert [t.name for t in hot.torsions] == ["phi", "psi"]
    assert hot.n_chains == 2 and hot.n_frames == 1000
    phi = hot.torsions[0]
    assert phi.n_basins == 2
    low, high = phi.borders_deg
    # the same core-set definition, written out here: the count must agree exactly
    assert phi.transitions == _phi_changes(hot_run, (low + 15, high - 15), (high + 15, low - 15))
    # smaller cores see no more transitions, larger ones (no margin) no fewer: a hand-drawn
    # C7ax/αL region (30°, 110°) against φ < -45° or > 160° bounds the count from below
    hand = _phi_changes(hot_run, (30, 110), (160, -45))
    assert 3 <= hand <= phi.transitions <= _phi_changes(hot_run, (low, high), (high, low))
    assert phi.statistical_inefficiency >= 1.0
    assert "phi: 2 basins" in hot.summary()
    assert hot.to_dict()["torsions"][0]["transitions"] == phi.transitions
    # the same MD at 300 K stays in the C7eq/β/αR basin of φ: flagged
    cold_run = _run(300.0)
    cold = coverage.measure(cold_run)
    assert _phi_changes(cold_run, (30, 110), (160, -45)) == 0
    assert cold.torsions[0].transitions == 0 and "phi" in cold.flagged
    assert "WARNING" in cold.summary()
    # no crossing in 1000 frames: at least 10 / (3 per 1000) frames needed, stated with the
    # MD time from the trajectory's own 0.2 ps frames; nothing needed where nothing is flagged
    assert cold.interval_ps == pytest.approx(0.2)
    assert cold.frames_needed == 3334
    assert "at least 3334 frames (0.667 ns at 0.2 ps per frame)" in cold.summary()
    assert cold.to_dict()["frames_needed"] == 3334
    assert (hot.frames_needed is None) == hot.ok


def test_frames_per_degree_of_freedom_note(hot_run):
    """1000 frames for alanine dipeptide's 48 degrees of freedom (20.8 per degree) are too
    few for the fit: noted with the frames 125 per degree would give; enough frames: silent."""
    msys = ot.systems.load("alanine-dipeptide-vacuum")
    ic = ot.TemperatureFlow.for_system(msys, hot_run, (300.0, 600.0), hidden=8, n_blocks=1,
                                       whiten=False).coordinates
    assert msys.n_dof == ic.n_dof == 48  # the flow's own count is the oracle
    few = coverage.measure(hot_run, n_dof=msys.n_dof)
    assert few.fit_frames_needed == coverage.FRAMES_PER_DOF * 48 == 6000
    assert "NOTE: 1000 frames for 48 degrees of freedom" in few.summary()
    assert "6000 frames (1.2 ns at 0.2 ps per frame)" in few.fit_line()
    assert few.to_dict()["fit_frames_needed"] == 6000
    enough = coverage.measure(hot_run, n_dof=1000 // coverage.FRAMES_PER_DOF)
    assert enough.fit_frames_needed is None and "NOTE" not in enough.summary()
    assert coverage.measure(hot_run).fit_line() == ""  # n_dof unknown: no note


def test_frames_needed_follows_the_crossing_rate(hot_run):
    # a slice with k crossings of phi (k < 10) needs 10/k times its length
    for n in (100, 200, 400):
        part = coverage.measure(hot_run[:n], chains=np.zeros(n, dtype=int))
        phi = part.torsions[0]
        if 0 < phi.transitions < 10:
            assert phi.frames_needed(n, 10) == int(np.ceil(10 * n / phi.transitions))
            assert part.frames_needed >= phi.frames_needed(n, 10)
            assert "about" in part.needed_line() or "at least" in part.needed_line()
            return
    pytest.fail("no slice with 1-9 crossings of phi")


def test_flag_and_fallback_torsions(hot_run):
    # a 20-frame slice cannot cross 10 times: flagged
    short = coverage.measure(hot_run[:20], chains=np.zeros(20, dtype=int))
    assert not short.ok and set(short.flagged) == {"phi", "psi"}
    assert "WARNING" in short.summary()
    # without φ/ψ (atom names changed): the heavy-atom torsions of largest spread
    topology = hot_run.topology.to_openmm()
    for atom in topology.atoms():
        if atom.name == "N":
            atom.name = "NX"
    renamed = mdtraj.Trajectory(hot_run.xyz[:200], mdtraj.Topology.from_openmm(topology))
    result = coverage.measure(renamed, n_torsions=2)
    assert len(result.torsions) == 2
    assert all(t.name.startswith("torsion") for t in result.torsions)
    heavy = [a.element.symbol != "H" for a in renamed.topology.atoms]
    assert all(heavy[i] for t in result.torsions for i in t.atoms)
    spreads = [1 - abs(np.mean(np.exp(1j * mdtraj.compute_dihedrals(renamed, [t.atoms]))))
               for t in result.torsions]
    all_rows = ot.ZMatrix.from_topology(renamed.topology.to_openmm()).rows
    rows = [r for r in all_rows if min(r) >= 0 and all(heavy[i] for i in r)]
    every = 1 - np.abs(np.mean(np.exp(1j * mdtraj.compute_dihedrals(renamed, rows)), axis=0))
    assert min(spreads) >= np.sort(every)[-2] - 1e-12
