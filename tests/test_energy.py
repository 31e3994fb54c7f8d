"""OpenMMEnergy against OpenMM itself: values, gradients, back ends, faults, lifetime."""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

import openmm_trade as ot
from openmm_trade.errors import InputError, WorkerError
from openmm_trade.worker_pool import ContextSpec, WorkerPool

pytestmark = pytest.mark.timeout(120)

ONE_THREAD = {"Threads": "1"}


def perturbed(frames: np.ndarray, n: int, scale: float = 0.003, seed: int = 0) -> np.ndarray:
    """``n`` conformations: MD frames plus Gaussian noise of ``scale`` nm."""
    rng = np.random.default_rng(seed)
    picked = frames[rng.integers(0, len(frames), size=n)]
    return picked + scale * rng.standard_normal(picked.shape)


def oracle(msys, positions: np.ndarray, platform: str = "Reference", properties=None):
    """Energies and forces from a separate, plainly used ``openmm.Context``."""
    context = openmm.Context(
        msys.system, openmm.VerletIntegrator(0.001),
        openmm.Platform.getPlatformByName(platform), properties or {},
    )
    energies, forces = [], []
    for p in positions:
        context.setPositions(p * unit.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(
            unit.kilojoule_per_mole / unit.nanometer))
    return np.array(energies), np.array(forces)


def with_failures(positions: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Copy of ``positions`` with a NaN, an infinite and an overlapping-atom conformation."""
    x = positions.copy()
    x[1, 4, 2] = np.nan
    x[4, 0, 0] = np.inf
    x[6, 21] = x[6, 0]  # two non-bonded atoms on top of each other
    return x, [1, 4, 6]


@pytest.fixture(params=["vacuum", "implicit"])
def msys(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def pool(vacuum):
    """A two-worker pool on the CPU platform, one thread each, shared by tests."""
    with ot.OpenMMEnergy(vacuum, n_workers=2, platform_properties=ONE_THREAD) as energy:
        yield energy


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize(
    ("platform", "properties"),
    # multi-threaded CPU forces vary from run to run at ~1e-7 (summation order): one thread
    [("Reference", {}), ("CPU", ONE_THREAD)],
)
def test_matches_openmm_on_same_platform(msys, vacuum_frames, platform, properties):
    x = perturbed(vacuum_frames, 12)
    expected_u, expected_f = oracle(msys, x, platform, properties)
    with ot.OpenMMEnergy(msys, platform=platform, platform_properties=properties) as energy:
        u, f = energy.energies_and_forces(x)
        xt = torch.tensor(x, requires_grad=True)
        ut = energy(xt)
        ut.sum().backward()
        with torch.no_grad():  # the energies-only path
            u_no_grad = energy(xt)
    np.testing.assert_allclose(u, expected_u, rtol=1e-8, atol=0)
    np.testing.assert_allclose(f, expected_f, rtol=1e-8, atol=1e-8 * np.abs(expected_f).max())
    assert ut.dtype == torch.float64 and ut.shape == (12,)
    np.testing.assert_array_equal(ut.detach().numpy(), u)
    np.testing.assert_array_equal(xt.grad.numpy(), -f)
    np.testing.assert_array_equal(u_no_grad.numpy(), u)
    assert (energy.n_evaluations, energy.n_failed) == (36, 0)


def test_cpu_agrees_with_reference_loosely(msys, vacuum_frames):
    x = perturbed(vacuum_frames, 8, seed=1)
    expected_u, expected_f = oracle(msys, x, "Reference")
    with ot.OpenMMEnergy(msys) as energy:  # CPU, the default
        u, f = energy.energies_and_forces(x)
    # CPU computes nonbonded terms in single precision; implicit energies are sums of
    # large cancelling terms, so compare in kJ/mol rather than relative to the total
    np.testing.assert_allclose(u, expected_u, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(f, expected_f, atol=1e-4 * np.abs(expected_f).max())


def test_reduced_energy(vacuum, vacuum_frames):
    x = torch.tensor(perturbed(vacuum_frames, 3))
    temperature = torch.tensor([300.0, 450.0, 600.0])
    with ot.OpenMMEnergy(vacuum, platform="Reference") as energy:
        u = energy(x)
        torch.testing.assert_close(energy.reduced(x, temperature),
                                   u / (ot.KB * temperature.double()), rtol=1e-15, atol=0)
        torch.testing.assert_close(energy.reduced(x, 300), u / (ot.KB * 300), rtol=1e-15, atol=0)


# ----------------------------------------------------------------------------- gradients
def test_gradcheck(msys, vacuum_frames):
    x = torch.tensor(perturbed(vacuum_frames, 2, seed=2), requires_grad=True)
    with ot.OpenMMEnergy(msys, platform="Reference") as energy:
        assert torch.autograd.gradcheck(energy, (x,), eps=1e-6, atol=1e-4, rtol=1e-6)
        u = energy(x)
        (grad,) = torch.autograd.grad(u.sum(), x)
        generator = torch.Generator().manual_seed(3)
        for _ in range(3):  # central differences along random directions
            v = torch.randn(x.shape, generator=generator, dtype=torch.float64)
            h = 1e-6
            with torch.no_grad():
                numeric = (energy(x + h * v) - energy(x - h * v)) / (2 * h)
            torch.testing.assert_close(numeric, (grad * v).sum(dim=(1, 2)), rtol=1e-7, atol=1e-6)


def test_gradient_dtype_and_weighting(vacuum, vacuum_frames):
    x64 = perturbed(vacuum_frames, 4, seed=4)
    x = torch.tensor(x64, dtype=torch.float32, requires_grad=True)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    with ot.OpenMMEnergy(vacuum, platform="Reference") as energy:
        u = energy(x)
        (u * weights).sum().backward()
        forces = energy.forces(x.detach().double().numpy())
    assert u.dtype == torch.float64 and x.grad.dtype == torch.float32
    expected = -weights.numpy()[:, None, None] * forces
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-6,
                               atol=1e-6 * np.abs(expected).max())


# ----------------------------------------------------------------------------- back ends
@pytest.fixture(scope="module")
def dask_executor():
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client.get_executor()


def test_backends_give_identical_numbers(vacuum, implicit, vacuum_frames, pool,
                                         dask_executor):
    x, failed = with_failures(perturbed(vacuum_frames, 11, seed=5))
    expected = {}
    for msys in (vacuum, implicit):
        with ot.OpenMMEnergy(msys, platform_properties=ONE_THREAD) as local:
            expected[msys.name] = local.energies_and_forces(x)
    u = expected[vacuum.name][0]
    assert np.isinf(u[failed]).all() and np.isfinite(np.delete(u, failed)).all()

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=spawn) as processes:
        for executor in (processes, dask_executor):
            for msys in (vacuum, implicit):  # one executor, two systems: two cached Contexts
                energy = ot.OpenMMEnergy(msys, n_workers=2, executor=executor,
                                         platform_properties=ONE_THREAD)
                u, f = energy.energies_and_forces(x)
                np.testing.assert_array_equal(u, expected[msys.name][0])
                np.testing.assert_array_equal(f, expected[msys.name][1])
                assert energy.n_failed == len(failed)
    u, f = pool.energies_and_forces(x)
    np.testing.assert_array_equal(u, expected[vacuum.name][0])
    np.testing.assert_array_equal(f, expected[vacuum.name][1])
    # a batch smaller than the number of workers, as a tensor
    one = pool(torch.tensor(x[:1]))
    np.testing.assert_array_equal(one.numpy(), expected[vacuum.name][0][:1])


# ----------------------------------------------------------------------------- faults
@pytest.mark.parametrize("n_workers", [1, 2])
def test_failed_conformations_are_inf_and_isolated(vacuum, vacuum_frames, caplog, n_workers):
    good = perturbed(vacuum_frames, 8, seed=6)
    x, failed = with_failures(good)
    kept = [i for i in range(len(x)) if i not in failed]
    expected_u, expected_f = oracle(vacuum, good[kept], "CPU", ONE_THREAD)
    caplog.set_level(logging.WARNING, logger="openmm_trade.energy")
    with ot.OpenMMEnergy(vacuum, n_workers=n_workers, platform_properties=ONE_THREAD) as energy:
        xt = torch.tensor(x, requires_grad=True)
        u = energy(xt)
        u[kept].sum().backward()
        assert torch.isinf(u[failed]).all() and (u[failed] > 0).all()
        np.testing.assert_allclose(u[kept].detach().numpy(), expected_u, rtol=1e-12)
        np.testing.assert_allclose(xt.grad[kept].numpy(), -expected_f, rtol=1e-12, atol=1e-9)
        assert (xt.grad[failed] == 0).all()
        energies, forces = energy.energies_and_forces(x)
        assert np.isinf(energies[failed]).all() and (forces[failed] == 0).all()
        assert (energy.n_evaluations, energy.n_failed) == (16, 6)
    warnings = [r for r in caplog.records if r.name == "openmm_trade.energy"]
    assert len(warnings) == 1 and "3 of 8 conformations failed" in warnings[0].getMessage()


def run_python(script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a script in a fresh interpreter (so a hang cannot take the test run with it)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_killed_worker_raises_promptly():
    result = run_python("""
        import os, signal, threading, time
        import numpy as np
        import openmm_trade as ot
        from openmm_trade.errors import WorkerError

        msys = ot.systems.load("alanine-dipeptide-implicit")
        x = np.repeat(msys.positions[None], 16, axis=0)

        def expect_worker_error(energy, batch, when):
            start = time.monotonic()
            try:
                energy.forces(batch)
            except WorkerError as err:
                print(when, round(time.monotonic() - start, 3), str(err).splitlines()[0])
            else:
                print(when, "no error")

        energy = ot.OpenMMEnergy(msys, n_workers=2, platform="Reference")
        energy.forces(x)
        os.kill(energy.worker_pids[1], signal.SIGKILL)
        expect_worker_error(energy, x, "idle")
        expect_worker_error(energy, x, "again")

        energy = ot.OpenMMEnergy(msys, n_workers=2, platform="Reference")
        pids = energy.worker_pids
        threading.Timer(0.5, os.kill, (pids[0], signal.SIGKILL)).start()
        expect_worker_error(energy, np.repeat(x, 2500, axis=0), "busy")
        time.sleep(0.5)
        alive = [p for p in pids if os.path.exists(f"/proc/{p}")]
        print("alive", alive)
    """)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    for when in ("idle", "again", "busy"):
        seconds, message = lines[when].split(" ", 1)
        assert float(seconds) < 10, lines
        assert "OpenMM worker" in message or "unusable" in message
    assert "SIGKILL" in lines["idle"] and "SIGKILL" in lines["busy"]
    assert lines["alive"] == "[]"


EXIT_SCRIPT = """
    import sys, time
    import openmm_trade as ot

    msys = ot.systems.load("alanine-dipeptide-vacuum")
    energy = ot.OpenMMEnergy(msys, n_workers=2, platform="Reference")
    energy.forces(msys.positions[None].repeat(4, axis=0))
    print(*energy.worker_pids, flush=True)
    if sys.argv[-1] == "hang":
        time.sleep(60)
"""


def gone(pid: int) -> bool:
    """True when ``pid`` has exited (no process, or a zombie awaiting its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_until_gone(pids, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


#: Seconds after which a process that should end is taken to hang (a test of hangs, not of
#: speed: on a quiet machine these processes end in about a second).
HANG_LIMIT_S = 60.0


@pytest.mark.parametrize("ending", ["exit", "parent-killed"])
def test_process_with_live_pool_ends_promptly(ending):
    args = [sys.executable, "-c", textwrap.dedent(EXIT_SCRIPT), "hang" if ending != "exit" else ""]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        # A hang never ends; the generous limit only keeps a loaded machine from failing it.
        start = time.monotonic()
        if ending == "exit":
            proc.wait(timeout=HANG_LIMIT_S)
        else:
            proc.kill()  # SIGKILL: no atexit; the workers see end-of-file on their stdin
            proc.wait(timeout=HANG_LIMIT_S)
        assert wait_until_gone(pids, timeout=HANG_LIMIT_S - (time.monotonic() - start))
    finally:
        proc.kill()
        proc.wait()


def test_close_and_context_manager(vacuum):
    with ot.OpenMMEnergy(vacuum, n_workers=2, platform="Reference") as energy:
        pids = energy.worker_pids
        assert len(pids) == 2 and not any(gone(p) for p in pids)
    assert wait_until_gone(pids, timeout=5)
    assert "closed" in repr(energy)
    with pytest.raises(WorkerError, match="closed"):
        energy(torch.tensor(vacuum.positions[None]))
    energy.close()  # idempotent

    energy = ot.OpenMMEnergy(vacuum, n_workers=2, platform="Reference")
    pids = energy.worker_pids
    del energy  # garbage collection stops the workers too
    assert wait_until_gone(pids, timeout=5)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def reference_energy(vacuum):
    with ot.OpenMMEnergy(vacuum, platform="Reference") as energy:
        yield energy


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(2, 21, 3), r"x must have shape \(B, 22, 3\), got \(2, 21, 3\)"),
        (torch.zeros(22, 3), r"x must have shape \(B, 22, 3\), got \(22, 3\)"),
        (torch.zeros(1, 2, 22, 3), r"got \(1, 2, 22, 3\)"),
        ([[[0.0] * 3] * 22], r"x must be a torch.Tensor or numpy array of shape \(B, 22, 3\)"
                             r" in nm, got list"),
        (torch.zeros(2, 22, 3, dtype=torch.int64), "floating-point tensor.*int64"),
        (np.array([["a"] * 3] * 22, dtype=object)[None], "real numbers.*object"),
    ],
)
def test_bad_positions(reference_energy, x, message):
    with pytest.raises(InputError, match=message):
        reference_energy(x)
    with pytest.raises(InputError, match=message):
        reference_energy.forces(x)


def test_numpy_positions_accepted(reference_energy, vacuum):
    forces = reference_energy.forces(vacuum.positions[None])
    assert isinstance(forces, np.ndarray) and forces.shape == (1, 22, 3)
    assert forces.dtype == np.float64


@pytest.mark.parametrize(
    ("temperature", "message"),
    [
        (0.0, "temperature must be a finite temperature > 0 K, got 0.0"),
        (-300, "got -300"),
        (float("nan"), "got nan"),
        (torch.tensor([300.0, 400.0, 500.0]), r"temperature must have shape \(2,\), got \(3,\)"),
        (torch.tensor([300.0, -1.0]), "finite temperatures > 0 K"),
        ("300", "got str"),
    ],
)
def test_bad_temperature(reference_energy, vacuum, temperature, message):
    x = torch.tensor(vacuum.positions[None].repeat(2, axis=0))
    with pytest.raises(InputError, match=message):
        reference_energy.reduced(x, temperature)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"platform": "Quantum"}, r"platform must be one of \[.*'Reference'.*\], got 'Quantum'"),
        ({"n_workers": 0}, "n_workers must be an integer >= 1, got 0"),
        ({"n_workers": 1.5}, "n_workers must be an integer >= 1, got 1.5"),
        ({"executor": object()}, "executor must be a concurrent.futures.Executor"),
        ({"platform_properties": "Threads=1"}, "platform_properties must be a dict, got str"),
    ],
)
def test_bad_construction(vacuum, kwargs, message):
    with pytest.raises(InputError, match=message):
        ot.OpenMMEnergy(vacuum, **kwargs)


def test_bad_system_property_and_context():
    with pytest.raises(InputError, match="msys must be an openmm_trade.MolecularSystem, got str"):
        ot.OpenMMEnergy("alanine-dipeptide-vacuum")
    msys = ot.systems.load("alanine-dipeptide-vacuum")
    with pytest.raises(InputError, match=r"among \['Threads', .*got \['Thread'\]"):
        ot.OpenMMEnergy(msys, platform_properties={"Thread": "1"})
    broken = ContextSpec("<not a System/>", "0" * 64, "Reference")
    with pytest.raises(WorkerError, match="could not build its Context"):
        WorkerPool(broken, n_workers=1)
