"""Tests of openmm_trade.md: boundary MD, kill-and-resume, reporter, loading, parallel tempering.

Oracles are independent of the code under test: energies from a plain OpenMM Context,
positions re-read from files with mdtraj, openmmtools' own stored reduced energies.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import pytest
from openmm import app, unit

import openmm_trade as ot
from openmm_trade.errors import CheckpointError, InputError
from openmm_trade.files import exclusive_lock
from openmm_trade.mbar import mbar_reference
from openmm_trade.units import KB

REPO = Path(__file__).resolve().parent.parent


def openmm_energies(msys, xyz, platform="CPU") -> np.ndarray:
    """U(x) in kJ/mol from a fresh OpenMM Context (the oracle)."""
    context = openmm.Context(msys.system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName(platform))
    energies = []
    for frame in xyz:
        context.setPositions(frame.astype(np.float64) * unit.nanometer)
        energies.append(context.getState(getEnergy=True).getPotentialEnergy()
                        .value_in_unit(unit.kilojoule_per_mole))
    return np.array(energies)


@pytest.fixture(scope="module")
def short_run(vacuum):
    return ot.md.simulate(vacuum, temperature=300, n_frames=8, interval_ps=0.1, seed=3,
                          equilibration_ps=0.2, quiet=True, n_chains=1)


def test_simulate_frames_energies_and_reproducibility(vacuum, short_run):
    traj = short_run
    assert traj.n_frames == 8 and traj.n_atoms == vacuum.n_atoms
    np.testing.assert_allclose(traj.time, 0.1 * np.arange(1, 9))
    energies = ot.md.potential_energies(traj)
    assert energies.dtype == np.float64 and np.all(np.isfinite(energies))
    np.testing.assert_allclose(energies, openmm_energies(vacuum, traj.xyz), rtol=1e-6)
    # constrained X-H bonds at their lengths
    d = mdtraj.compute_distances(traj, vacuum.constrained_pairs)
    assert np.max(np.abs(d - vacuum.constraint_lengths)) < 1e-5
    again = ot.md.simulate(vacuum, temperature=300, n_frames=8, interval_ps=0.1, seed=3,
                           equilibration_ps=0.2, quiet=True, n_chains=1)
    np.testing.assert_array_equal(again.xyz, traj.xyz)
    # energies do not survive slicing; potential_energies recomputes them given the system
    sub = traj[::2]
    with pytest.raises(InputError, match="potential energies"):
        ot.md.potential_energies(sub)
    np.testing.assert_allclose(ot.md.potential_energies(sub, vacuum), energies[::2], rtol=1e-9)


def test_simulation_summary(short_run):
    summary = ot.md.simulation_summary(short_run)
    assert summary["n_frames"] == 8
    assert summary["simulated_time_ps"] == pytest.approx(0.8)
    assert set(summary["statistical_inefficiency"]) == {"U", "phi", "psi"}
    assert all(g >= 1.0 for g in summary["statistical_inefficiency"].values())
    assert 0 < summary["n_effective"] <= 8


_KILLED_RUN = """
import openmm_trade as ot
msys = ot.systems.load("alanine-dipeptide-vacuum")
ot.md.simulate(msys, 300, n_frames={n}, interval_ps=0.1, seed=5, equilibration_ps=0.2,
               output={out!r}, checkpoint_every=10, quiet=True, n_chains={k})
"""


def _checkpointed_frames(path: Path) -> int:
    try:
        meta, _ = ot.md.trajectory._read_checkpoint(path)
    except (CheckpointError, FileNotFoundError):
        return -1
    return int(meta["n_frames"])


def test_kill_and_resume(vacuum, tmp_path):
    n_frames, out = 300, tmp_path / "run.h5"
    chk = out.with_name(out.name + ".chk")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENMM_CPU_THREADS": "1"}
    script = textwrap.dedent(_KILLED_RUN.format(n=n_frames, out=str(out), k=1))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # generous: a loaded CI machine, not a speed test
    while _checkpointed_frames(chk) < 30:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = _checkpointed_frames(chk)
    assert 30 <= at_kill < n_frames
    on_disk = mdtraj.load(str(out))
    assert on_disk.n_frames >= at_kill

    with pytest.raises(InputError, match="resume=True"):
        ot.md.simulate(vacuum, 300, n_frames=n_frames, interval_ps=0.1, seed=5,
                       equilibration_ps=0.2, output=out, quiet=True, n_chains=1)
    with pytest.raises(CheckpointError, match="temperature"):
        ot.md.simulate(vacuum, 310, n_frames=n_frames, interval_ps=0.1, seed=5,
                       equilibration_ps=0.2, output=out, resume=True, quiet=True, n_chains=1)

    traj = ot.md.simulate(vacuum, 300, n_frames=n_frames, interval_ps=0.1, seed=5,
                          equilibration_ps=0.2, output=out, resume=True,
                          checkpoint_every=10, quiet=True, n_chains=1)
    assert traj.n_frames == n_frames
    np.testing.assert_allclose(np.diff(traj.time), 0.1, rtol=1e-6)  # no duplicates or gaps
    assert traj.time[0] == pytest.approx(0.1)
    np.testing.assert_array_equal(traj.xyz[:at_kill], on_disk.xyz[:at_kill])  # kept as written
    final = mdtraj.load(str(out))
    assert final.n_frames == n_frames
    np.testing.assert_allclose(final.time, traj.time, rtol=1e-6)
    np.testing.assert_array_equal(final.xyz, traj.xyz)
    np.testing.assert_allclose(traj.potential_energy[-5:], openmm_energies(vacuum, traj.xyz[-5:]),
                               rtol=1e-6)
    # resuming a finished run simulates nothing and returns the same frames
    done = ot.md.simulate(vacuum, 300, n_frames=n_frames, interval_ps=0.1, seed=5,
                          equilibration_ps=0.2, output=out, resume=True, quiet=True, n_chains=1)
    np.testing.assert_array_equal(done.xyz, traj.xyz)


def test_chains_recorded_and_reproducible(vacuum):
    traj = ot.md.simulate(vacuum, 300, n_frames=7, interval_ps=0.1, seed=3,
                          equilibration_ps=0.2, quiet=True, n_chains=2)
    np.testing.assert_array_equal(ot.md.frame_chains(traj), [0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(traj.time, [0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(traj.potential_energy, openmm_energies(vacuum, traj.xyz),
                               rtol=1e-6)
    # chain 0 keeps the seed: it is the one-chain run; chain 1 is another trajectory
    first = ot.md.simulate(vacuum, 300, n_frames=4, interval_ps=0.1, seed=3,
                           equilibration_ps=0.2, quiet=True, n_chains=1)
    np.testing.assert_array_equal(traj.xyz[:4], first.xyz)
    assert np.abs(traj.xyz[4] - traj.xyz[0]).max() > 0.01
    np.testing.assert_array_equal(ot.md.frame_chains(traj[:2]), [0, 0])  # not carried: one
    with pytest.raises(InputError, match="n_chains"):
        ot.md.simulate(vacuum, 300, n_frames=2, interval_ps=0.1, seed=3, n_chains=3, quiet=True)
    with pytest.raises(InputError, match="n_chains"):
        ot.md.simulate(vacuum, 300, n_frames=2, interval_ps=0.1, seed=3, n_chains=0, quiet=True)


def _chain_checkpoints(folder: Path, n_chains: int) -> list[int]:
    return [_checkpointed_frames(folder / f"chain-{c}.h5.chk") for c in range(n_chains)]


def test_chains_kill_and_resume(vacuum, tmp_path):
    """Kill a two-chain run (the parent, SIGKILL): its chain processes stop by themselves,
    and resume=True continues each chain from its checkpoint, giving exactly the frames of
    an uninterrupted run."""
    n_frames, out = 600, tmp_path / "run.h5"
    folder = tmp_path / "run.h5.chains"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = textwrap.dedent(_KILLED_RUN.format(n=n_frames, out=str(out), k=2))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while min(_chain_checkpoints(folder, 2)) < 20:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    at_kill = _chain_checkpoints(folder, 2)
    time.sleep(2.0)
    assert _chain_checkpoints(folder, 2) == at_kill, "chain processes outlived their parent"
    # Under load one chain may finish before the other has 20 frames; one must be cut off.
    assert all(20 <= n <= n_frames // 2 for n in at_kill), at_kill
    assert min(at_kill) < n_frames // 2 and not out.exists(), at_kill

    with pytest.raises(InputError, match="resume=True"):
        ot.md.simulate(vacuum, 300, n_frames=n_frames, interval_ps=0.1, seed=5,
                       equilibration_ps=0.2, output=out, quiet=True, n_chains=2)
    with pytest.raises(CheckpointError, match="n_chains"):
        ot.md.simulate(vacuum, 300, n_frames=n_frames, interval_ps=0.1, seed=5,
                       equilibration_ps=0.2, output=out, resume=True, quiet=True, n_chains=1)
    with pytest.raises(CheckpointError, match="temperature"):
        ot.md.simulate(vacuum, 310, n_frames=n_frames, interval_ps=0.1, seed=5,
                       equilibration_ps=0.2, output=out, resume=True, quiet=True, n_chains=2)
    traj = ot.md.simulate(vacuum, 300, n_frames=n_frames, interval_ps=0.1, seed=5,
                          equilibration_ps=0.2, output=out, resume=True, checkpoint_every=10,
                          quiet=True)  # n_chains: as stored (2)
    fresh = ot.md.simulate(vacuum, 300, n_frames=n_frames, interval_ps=0.1, seed=5,
                           equilibration_ps=0.2, quiet=True, n_chains=2)
    np.testing.assert_array_equal(traj.xyz, fresh.xyz)  # resumed = uninterrupted, bit for bit
    np.testing.assert_array_equal(traj.chain_index, np.repeat([0, 1], n_frames // 2))
    stored = ot.md.load_trajectory(out)
    np.testing.assert_array_equal(stored.xyz, traj.xyz)
    np.testing.assert_array_equal(ot.md.frame_chains(out), traj.chain_index)
    np.testing.assert_array_equal(stored.chain_index, traj.chain_index)
    assert mdtraj.load(str(out)).n_frames == n_frames  # still a plain mdtraj file


_RESUMED_RUN = """
import hashlib
import openmm_trade as ot
msys = ot.systems.load("alanine-dipeptide-vacuum")
traj = ot.md.simulate(msys, 300, n_frames={n}, interval_ps=0.1, seed=5, equilibration_ps=0.2,
                      output={out!r}, resume=True, quiet=True, n_chains=2)
print(hashlib.sha256(traj.xyz.tobytes()).hexdigest())
"""


def _start_resumed_run(out: Path, n_frames: int) -> subprocess.Popen:
    script = textwrap.dedent(_RESUMED_RUN.format(n=n_frames, out=str(out)))
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_one_writer_per_output(vacuum, tmp_path):
    """A run whose output another process holds waits, says so, and then continues that
    run; two processes resuming the same cached run side by side both get its frames (they
    used to collide in HDF5's own file lock: 'unable to lock file')."""
    n_frames, out = 40, tmp_path / "run.h5"
    with exclusive_lock(out, "MD run"):
        waiting = _start_resumed_run(out, n_frames)
        seen = []  # stderr up to the waiting message (import warnings come first)
        while not seen or "waiting for another process" not in seen[-1]:
            seen.append(waiting.stderr.readline())  # blocks until the run reaches the lock
            assert seen[-1], "".join(seen)[-2000:]  # end of file: it never waited
        assert str(out) in seen[-1], seen[-1]
        time.sleep(1.0)
        assert waiting.poll() is None and not out.exists()  # still waiting
    stdout, stderr = waiting.communicate(timeout=600)
    assert waiting.returncode == 0, stderr[-2000:]
    fresh = ot.md.simulate(vacuum, 300, n_frames=n_frames, interval_ps=0.1, seed=5,
                           equilibration_ps=0.2, quiet=True, n_chains=2)
    expected = hashlib.sha256(fresh.xyz.tobytes()).hexdigest()
    assert stdout.split() == [expected]

    side_by_side = [_start_resumed_run(out, n_frames) for _ in range(2)]
    for proc in side_by_side:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-2000:]
        assert stdout.split() == [expected]


def _chain_processes(pid: int) -> list[int]:
    """Process ids of the MD chain processes whose parent is ``pid`` (Linux /proc).

    Only chain processes count: other tests of the same session may leave children of
    their own (e.g. multiprocessing's resource tracker).
    """
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"_chain_main" in command:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_chain_death_raises(vacuum, tmp_path):
    """A chain process that dies is a WorkerError at once (no hang); the other stops."""
    import threading

    from openmm_trade.errors import WorkerError

    outcome = {}

    def run():
        try:
            ot.md.simulate(vacuum, 300, n_frames=100_000, interval_ps=0.1, seed=5,
                           equilibration_ps=0.2, quiet=True, n_chains=2,
                           output=tmp_path / "run.h5", checkpoint_every=10)
        except Exception as err:  # noqa: BLE001 - inspected below
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 600
    while min(_chain_checkpoints(tmp_path / "run.h5.chains", 2)) < 1:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    children = _chain_processes(os.getpid())
    assert len(children) == 2
    os.kill(children[1], signal.SIGKILL)
    thread.join(timeout=120)  # a hang is forever; 120 s leaves room for a loaded machine
    assert not thread.is_alive(), "simulate hangs after a chain died"
    assert isinstance(outcome.get("error"), WorkerError)
    assert "killed by SIGKILL" in str(outcome["error"])
    time.sleep(0.5)
    assert _chain_processes(os.getpid()) == []


def _user_simulation(msys, seed=11):
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond,
                                                 0.002 * unit.picoseconds)
    integrator.setRandomNumberSeed(seed)
    simulation = app.Simulation(msys.topology, msys.system, integrator,
                                openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(msys.positions)
    simulation.minimizeEnergy(maxIterations=100)
    return simulation


def test_boundary_reporter_memory_and_file(vacuum, tmp_path):
    simulation = _user_simulation(vacuum)
    path = tmp_path / "reporter.h5"
    reporter = ot.md.BoundaryReporter(file=path, report_interval=25)
    simulation.reporters.append(reporter)
    simulation.step(100)
    traj = reporter.trajectory()
    assert traj.n_frames == 4 == reporter.n_frames
    np.testing.assert_allclose(traj.time, [0.05, 0.1, 0.15, 0.2], rtol=1e-6)
    np.testing.assert_allclose(traj.potential_energy, openmm_energies(vacuum, traj.xyz), rtol=1e-6)
    # the file is flushed as it goes: another process reads it while the reporter is open
    count = "import sys, tables; print(len(tables.open_file(sys.argv[1]).root.coordinates))"
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}  # the writer holds HDF5's lock
    out = subprocess.run([sys.executable, "-c", count, str(path)], capture_output=True,
                         text=True, check=True, env=env)
    assert int(out.stdout) == 4
    simulation.step(50)
    reporter.close()
    loaded = ot.md.load_boundary(path, vacuum)
    assert loaded.n_frames == 6
    np.testing.assert_allclose(loaded.potential_energy[:4], traj.potential_energy, rtol=1e-6)


def test_load_boundary_formats_and_checks(vacuum, implicit, short_run, tmp_path):
    dcd, h5 = tmp_path / "b.dcd", tmp_path / "b.h5"
    short_run.save_dcd(str(dcd))
    short_run.save_hdf5(str(h5))
    traj = ot.md.load_boundary([dcd, h5], vacuum, stride=2)
    assert traj.n_frames == 8
    np.testing.assert_allclose(traj.potential_energy,
                               np.tile(short_run.potential_energy[::2], 2), rtol=1e-5)

    # energies stored in a file that disagree with the system are reported
    with_energies = tmp_path / "e.h5"
    from mdtraj.formats import HDF5TrajectoryFile

    with HDF5TrajectoryFile(str(with_energies), "w") as handle:
        handle.topology = short_run.topology
        handle.write(short_run.xyz, time=short_run.time,
                     potentialEnergy=short_run.potential_energy)
    with pytest.warns(UserWarning, match="stored potential energies differ"):
        ot.md.load_boundary(with_energies, implicit)

    # wrong atom count / order, missing file, unconstrained geometry
    short_run.atom_slice(range(10)).save_dcd(str(tmp_path / "few.dcd"))
    with pytest.raises(InputError, match="atoms"):
        ot.md.load_boundary(tmp_path / "few.dcd", vacuum)
    swapped = short_run.topology.copy()
    first, second = list(swapped.atoms)[:2]
    first.name, second.name = second.name, first.name
    mdtraj.Trajectory(short_run.xyz, swapped).save_hdf5(str(tmp_path / "order.h5"))
    with pytest.raises(InputError, match="atom names and order"):
        ot.md.load_boundary(tmp_path / "order.h5", vacuum)
    with pytest.raises(InputError, match="not found"):
        ot.md.load_boundary(tmp_path / "missing.dcd", vacuum)
    stretched = short_run[:2]
    stretched.xyz = stretched.xyz * 1.01
    stretched.save_dcd(str(tmp_path / "stretched.dcd"))
    with pytest.warns(UserWarning, match="constrained bonds deviate"):
        ot.md.load_boundary(tmp_path / "stretched.dcd", vacuum)


def test_parallel_tempering_and_resume(vacuum, tmp_path):
    from openmmtools.multistate import MultiStateReporter

    temps, storage = [300.0, 360.0, 430.0], tmp_path / "pt" / "ref.nc"
    pt = ot.md.parallel_tempering(vacuum, temps, n_iterations=5, steps_per_iteration=50,
                                  storage=storage, seed=2, quiet=True)
    assert len(pt.trajectories) == 3 and pt.n_iterations == 5
    assert [t.n_frames for t in pt.trajectories] == [5, 5, 5]
    np.testing.assert_allclose(pt.trajectories[0].time, 0.1 * np.arange(1, 6))
    assert pt.n_energy_evaluations == 5 * 3 * 50
    assert pt.u_kn.shape == (3, 15) and list(pt.N_k) == [5, 5, 5]
    assert pt.acceptance_rates.shape == (2,)
    assert np.all((pt.acceptance_rates >= 0) & (pt.acceptance_rates <= 1))

    # our energies (on stored float32 positions) against openmmtools' own reduced energies
    reporter = MultiStateReporter(str(storage), open_mode="r", checkpoint_interval=1)
    try:
        reduced = reporter.read_energies()[0][1:]
        states = reporter.read_replica_thermodynamic_states()[1:]
    finally:
        reporter.close()
    beta = 1 / (KB * np.array(temps))
    for k in range(3):
        replica = np.argmax(states == k, axis=1)
        theirs = reduced[np.arange(5), replica, k] / beta[k]
        np.testing.assert_allclose(pt.energies[k], theirs, rtol=1e-4)

    table = mbar_reference(pt, discard=0, subsample=False)
    assert table.delta_f[0] == 0 and np.all(np.isfinite(table.delta_f))
    assert np.all(np.isfinite(table.delta_f_error[1:])) and np.all(table.delta_f_error[1:] > 0)
    assert np.all(np.isfinite(table.mean_energy_error))

    more = ot.md.parallel_tempering(vacuum, temps, n_iterations=7, steps_per_iteration=50,
                                    storage=storage, seed=2, quiet=True)
    assert [t.n_frames for t in more.trajectories] == [7, 7, 7]
    for a, b in zip(pt.trajectories, more.trajectories, strict=True):
        np.testing.assert_array_equal(a.xyz, b.xyz[:5])
    with pytest.raises(CheckpointError, match="temperatures"):
        ot.md.parallel_tempering(vacuum, [300.0, 400.0], n_iterations=7,
                                 steps_per_iteration=50, storage=storage, quiet=True)
    with pytest.raises(InputError, match="resume=True"):
        ot.md.parallel_tempering(vacuum, temps, n_iterations=7, steps_per_iteration=50,
                                 storage=storage, resume=False, quiet=True)


def test_parallel_tempering_reproduces_with_seed(vacuum, tmp_path):
    """Same seed, same process: bit-identical energies and swap history; another seed
    differs. (The integrators' seeds must reach the moves the sampler runs, and the
    compiled swap-all mixing draws from numba's generator, not numpy's.)"""
    def run(name, seed):
        return ot.md.parallel_tempering(vacuum, [300.0, 310.0, 320.0], n_iterations=6,
                                        steps_per_iteration=20, storage=tmp_path / name,
                                        seed=seed, quiet=True)

    numpy_state = np.random.get_state()
    first, second, other = run("a.nc", 7), run("b.nc", 7), run("c.nc", 8)
    np.testing.assert_array_equal(first.u_kn, second.u_kn)
    np.testing.assert_array_equal(first.replica_states, second.replica_states)
    assert np.all(first.acceptance_rates > 0)  # swaps happened, so the test covers them
    assert not np.array_equal(first.u_kn, other.u_kn)
    after = np.random.get_state()  # the caller's numpy stream is left as it was
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1])


def test_parallel_tempering_storage_names_the_move_where_old_files_look():
    """Storage written before md/ became a package names the move ``openmm_trade.md``;
    openmmtools resumes it by importing that name, so it must stay there."""
    from openmm import unit
    from openmmtools import utils

    move = ot.md.SeededLangevinDynamicsMove(random_seed=5, timestep=1 * unit.femtosecond)
    stored = utils.serialize(move)
    stored["__module__"] = "openmm_trade.md"
    again = utils.deserialize(stored)
    assert type(again) is type(move) and again.random_seed == 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -5.0}, "temperature"),
        ({"n_frames": 0}, "n_frames"),
        ({"interval_ps": 0.003}, "interval_ps must be a whole multiple"),
        ({"interval_ps": -1.0}, "interval_ps"),
        ({"seed": -1}, "seed"),
        ({"platform": "NoSuchPlatform"}, "platform"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
    ],
)
def test_simulate_bad_input(vacuum, kwargs, match):
    args = {"temperature": 300.0, "n_frames": 2, "interval_ps": 0.1, "seed": 0, **kwargs}
    with pytest.raises(InputError, match=match):
        ot.md.simulate(vacuum, quiet=True, **args)


def test_bad_paths_and_temperatures(vacuum, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="output"):
        ot.md.simulate(vacuum, 300, 2, 0.1, 0, output=blocker / "run.h5", quiet=True)
    with pytest.raises(InputError, match="storage"):
        ot.md.parallel_tempering(vacuum, [300, 400], 2, storage=blocker / "pt.nc", quiet=True)
    with pytest.raises(InputError, match="increasing"):
        ot.md.parallel_tempering(vacuum, [300, 500, 400], 2, storage=tmp_path / "p.nc")
    with pytest.raises(InputError, match="temperatures"):
        ot.md.parallel_tempering(vacuum, [0, 300], 2, storage=tmp_path / "p.nc")
    with pytest.raises(InputError, match="n_iterations"):
        ot.md.parallel_tempering(vacuum, [300, 400], 0, storage=tmp_path / "p.nc")
    with pytest.raises(InputError, match="report_interval"):
        ot.md.BoundaryReporter(report_interval=0)
    assert not (tmp_path / "p.nc").exists()


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENMM_TRADE_CACHE", str(tmp_path / "cache"))
    assert ot.md.cache_dir() == tmp_path / "cache"


def test_save_and_load_trajectory_round_trip(vacuum, short_run, tmp_path):
    path = ot.md.save_trajectory(short_run, tmp_path / "boundary.h5")
    assert not list(tmp_path.glob(".boundary.h5*"))  # temporary file replaced
    back = ot.md.load_trajectory(path)
    np.testing.assert_array_equal(back.xyz, short_run.xyz)
    np.testing.assert_allclose(back.time, short_run.time, rtol=1e-6)
    np.testing.assert_allclose(back.potential_energy, short_run.potential_energy, rtol=1e-6)
    exact = ot.md.load_trajectory(path, vacuum)  # recomputed float64 energies
    np.testing.assert_allclose(exact.potential_energy, short_run.potential_energy, rtol=1e-9)
    assert ot.md.default_timestep_ps(vacuum) == 0.002


def test_busy_ticks_and_idleness_order_follow_proc_stat_fields():
    from openmm_trade.md import engine

    text = "cpu  1 1 1 1 1\ncpu0 10 2 3 500 7 1 1 0\ncpu1 1 0 0 900 0 0 0 0\nintr 5\n"
    assert engine._cpu_busy_ticks(text) == {0: 17, 1: 1}  # idle (4th) and iowait (5th) out
    assert engine.order_by_idleness([0, 1, 2], {0: 0, 1: 5, 2: 0}, {0: 3, 1: 5, 2: 9}) == [1, 0, 2]
    assert engine.order_by_idleness([3, 1], {}, {1: 2}) == [3, 1]  # unread cores keep order


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two cores")
def test_one_core_takes_a_core_another_job_leaves_free():
    """A second MD job must not land on the core a first one is spinning on (both used to
    pin to core 0 and ran at half speed)."""
    from openmm_trade.md import engine

    def busy_fractions(window_s: float) -> dict[int, float]:
        before = engine._cpu_busy_ticks(Path("/proc/stat").read_text())
        time.sleep(window_s)
        after = engine._cpu_busy_ticks(Path("/proc/stat").read_text())
        hz = os.sysconf("SC_CLK_TCK")
        return {c: (after[c] - before[c]) / (hz * window_s) for c in os.sched_getaffinity(0)}

    if max(busy_fractions(0.5).values()) > 0.3:
        pytest.skip("another job keeps a core busy; the check needs a quiet machine")
    busy_core = engine.cores_by_idleness(0.3)[0]  # make the idlest core the busy one
    spinner = subprocess.Popen([sys.executable, "-c", (
        f"import os; os.sched_setaffinity(0, {{{busy_core}}})\nwhile True: pass")])
    try:
        time.sleep(0.5)
        order = engine.cores_by_idleness(0.5)
        assert order[0] != busy_core and sorted(order) == sorted(os.sched_getaffinity(0))
        with engine.one_core():
            assert os.sched_getaffinity(0) != {busy_core}
        with engine.one_core(busy_core):  # an explicit core is kept
            assert os.sched_getaffinity(0) == {busy_core}
    finally:
        spinner.kill()
        spinner.wait()
