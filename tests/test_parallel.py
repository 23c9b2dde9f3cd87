"""The thread pool (csrc/core/parallel.cpp) and the locks fastnn owns: bounded thread counts,
workers started only for the chunks a kernel has, thread-creation failure survived, and fork()
while another thread is inside a kernel. Never more than 16 threads are started here; the
scenarios that change process-wide limits or fork run in a subprocess with a timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnn
from fastnn import _C

GRAIN = 32768  # kGrainElements: elements per chunk below which an array stays on one thread


def _run(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(fastnn.__file__)),
                                                    env.get("PYTHONPATH", "")] if p)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


@pytest.mark.parametrize("n", [30000, 10**6, 2**31 - 1, 2**40, 10**30])
def test_set_num_threads_refuses_absurd_counts(n, restore_num_threads):
    before = fastnn.get_num_threads()
    bound = _C.max_num_threads()
    assert bound == 4 * max(1024, _C.default_num_threads())
    if n <= bound:
        pytest.skip(f"this machine's bound {bound} admits {n}")
    with pytest.raises(ValueError, match=rf"n: expected at most {bound} threads .* got {n}"):
        fastnn.set_num_threads(n)
    assert fastnn.get_num_threads() == before


def test_set_num_threads_above_the_cpus_warns(restore_num_threads):
    n = _C.default_num_threads() + 1
    with pytest.warns(RuntimeWarning, match=rf"set_num_threads\({n}\): more threads than the {n - 1} CPUs"):
        fastnn.set_num_threads(n)
    assert fastnn.get_num_threads() == n


def test_set_num_threads_within_the_cpus_does_not_warn(restore_num_threads, recwarn):
    fastnn.set_num_threads(1)
    fastnn.set_num_threads(_C.default_num_threads())
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_workers_are_started_only_for_the_chunks_of_work(restore_num_threads, recwarn):
    fastnn.set_num_threads(1)  # stops the pool
    assert _C.started_threads() == 0
    fastnn.set_num_threads(16)
    x = np.linspace(-3, 3, 3 * GRAIN, dtype=np.float32)
    np.testing.assert_array_equal(fastnn.functional.relu(x), np.maximum(x, 0))
    assert _C.started_threads() == 2  # 3 chunks: the caller and two workers
    x = np.linspace(-3, 3, GRAIN // 2, dtype=np.float32)
    np.testing.assert_array_equal(fastnn.functional.relu(x), np.maximum(x, 0))
    assert _C.started_threads() == 2  # one chunk runs inline and starts nobody
    x = np.linspace(-3, 3, 40 * GRAIN + 7, dtype=np.float32)
    np.testing.assert_array_equal(fastnn.functional.relu(x), np.maximum(x, 0))
    assert _C.started_threads() == 15
    fastnn.set_num_threads(2)  # fewer threads than the pool has: it is stopped and restarted small
    np.testing.assert_array_equal(fastnn.functional.relu(x), np.maximum(x, 0))
    assert _C.started_threads() == 1


def test_failed_thread_creation_runs_on_the_threads_that_exist_with_a_warning():
    # The address space is capped just above what the process uses: a few 8 MiB thread stacks fit,
    # then pthread_create fails with EAGAIN. The kernel must finish on the threads it has.
    r = _run("""
        import resource, warnings
        import numpy as np
        import fastnn
        from fastnn import _C
        warnings.simplefilter("always")
        x = np.linspace(-3, 3, 16 * 32768, dtype=np.float32)
        out = np.empty_like(x)
        expected = np.maximum(x, 0)
        with warnings.catch_warnings(record=True):
            fastnn.set_num_threads(16)
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (24 << 20), resource.RLIM_INFINITY))
        with warnings.catch_warnings(record=True) as w:
            fastnn.functional.relu(x, out=out)
        started = _C.started_threads()
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert np.array_equal(out, expected)
        msgs = [str(m.message) for m in w if issubclass(m.category, RuntimeWarning)]
        print("started", started, "warnings", msgs)
        assert started < 15, started
        assert len(msgs) == 1 and "could not start more than" in msgs[0], msgs
        # the next kernel runs on the same threads without a second warning
        with warnings.catch_warnings(record=True) as w2:
            fastnn.functional.relu(x, out=out)
        assert np.array_equal(out, expected) and not w2, [str(m.message) for m in w2]
        print("ok")
    """)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def test_an_exception_in_a_task_reaches_the_caller_and_the_pool_runs_on():
    # A task that throws (std::bad_alloc of a packing buffer under a memory limit) aborted the
    # interpreter from a worker thread (std::terminate) and, from the calling thread, left the
    # region while the workers still ran tasks on its unwound stack (a segfault later). Now the
    # first exception waits for the region's other tasks and is raised in the caller. In a
    # subprocess: an abort must fail this test, not end the session.
    r = _run("""
        import fastnn
        from fastnn import _C
        fastnn.set_num_threads(2)
        n = 2 * 32768
        assert _C.parallel_check(n) == n
        for i in range(200):  # every task throws: the worker's and the caller's, whichever ran them
            try:
                _C.parallel_check(n, fail=True)
                raise SystemExit("no MemoryError")
            except MemoryError:
                pass
        assert _C.parallel_check(n) == n and _C.started_threads() == 1, _C.started_threads()
        print("ok")
    """)
    assert r.returncode == 0 and "ok" in r.stdout, (r.returncode, r.stdout + r.stderr)


def test_gemm_under_a_memory_limit_is_a_memory_error_not_a_crash():
    # The same through real allocations: a 2000x1000 @ 1000x4000 product (B too large to share, so
    # each thread allocates its own packing buffer inside the region) under address-space limits
    # from tight to loose (2 MiB steps up to where it runs); each either runs or raises MemoryError,
    # and the process goes on. Before, at ~40 MiB above the process's size run alone: 'terminate
    # called after throwing std::bad_alloc', or a segfault.
    r = _run("""
        import resource
        import numpy as np
        import fastnn
        import fastnn.functional as F
        fastnn.set_num_threads(2)
        a = np.ones((2000, 1000), np.float32)
        b = np.ones((4000, 1000), np.float32).T
        small = F.matmul(a[:64], b[:, :64])
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
        outcomes = []
        for extra_mib in range(0, 1024, 2):  # up to the first limits that let it run
            resource.setrlimit(resource.RLIMIT_AS, (vm + (extra_mib << 20), resource.RLIM_INFINITY))
            try:
                c = F.matmul(a, b)
                outcomes.append(bool(c[0, 0] == 1000 and c[-1, -1] == 1000))
                del c
            except MemoryError:
                outcomes.append("MemoryError")
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            fastnn.empty_cache()
            if outcomes[-3:] == [True] * 3:
                break
        assert False not in outcomes and outcomes[0] == "MemoryError" and outcomes[-1] is True, outcomes
        assert np.array_equal(F.matmul(a[:64], b[:, :64]), small)
        print("ok")
    """)
    assert r.returncode == 0 and "ok" in r.stdout, (r.returncode, r.stdout + r.stderr)


def test_fork_while_other_threads_are_inside_kernels_does_not_deadlock_the_child():
    # Two Python threads run the linear layer's forward and backward with dropout without pause:
    # each call takes and frees host-cache blocks (the 256x512 gradient scratch, >= 64 KiB) with
    # the GIL released. The main thread forks 400 times; each child runs the same kernels and
    # must exit within 5 s. Before the cache lock had a fork handler, about 1 child in 150 hung
    # (forked while a kernel thread held the lock).
    r = _run("""
        import os, threading, time
        import numpy as np
        import fastnn
        import fastnn.functional as F
        fastnn.set_num_threads(1)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((256, 1)).astype(np.float32)
        w = rng.standard_normal((512, 1)).astype(np.float32)
        stop = threading.Event()

        def busy():
            while not stop.is_set():
                y, saved = F.linear(x, w, activation="tanh", dropout_p=0.5, seed=1, return_saved=True)
                F.linear_backward(y, x, w, saved)

        threads = [threading.Thread(target=busy) for _ in range(2)]
        for t in threads:
            t.start()
        hung = failed = 0
        expected = F.linear(x, w, activation="tanh", dropout_p=0.5, seed=2)
        for i in range(400):
            pid = os.fork()
            if pid == 0:
                y = F.linear(x, w, activation="tanh", dropout_p=0.5, seed=2)
                os._exit(0 if np.array_equal(y, expected) else 3)
            deadline = time.monotonic() + 5
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    failed += os.waitstatus_to_exitcode(status) != 0
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    hung += 1
                    break
                time.sleep(0.001)
        stop.set()
        for t in threads:
            t.join()
        print("hung", hung, "failed", failed)
        assert hung == 0 and failed == 0
        print("ok")
    """, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
