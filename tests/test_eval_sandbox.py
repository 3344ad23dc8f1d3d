"""The sandbox for generated code stops hostile programs and still passes a correct solution."""

import os
import subprocess
import time

import pytest

from r1_ds.evaluation.humaneval import check_program, load_problems
from r1_ds.evaluation.sandbox import Limits, namespaces_available, process_limit_available, run_python

FAST = Limits(timeout_s=2.0)
needs_ns = pytest.mark.skipif(not namespaces_available(), reason="unshare cannot create namespaces here")
# without a cap, a fork bomb would fill this machine's process table until the wall-clock kill
needs_cap = pytest.mark.skipif(not process_limit_available(), reason="root without a writable pids cgroup")


def _leftovers() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if "r1_sandbox_" in line]


def test_correct_solution_passes_and_wrong_one_fails():
    problem = load_problems(limit=1)["HumanEval/0"]
    assert run_python(check_program(problem, problem["canonical_solution"])).result == "passed"
    wrong = run_python(check_program(problem, "    return False\n"))
    assert not wrong.passed and wrong.result.startswith("failed: AssertionError")


def test_early_exit_is_not_a_pass():
    problem = load_problems(limit=1)["HumanEval/0"]
    r = run_python(check_program(problem, "    import sys; sys.exit(0)\n") + "\n")
    assert not r.passed  # sys.exit(0) inside the call; and a bare top-level exit:
    assert not run_python("import sys\nsys.exit(0)").passed


def test_infinite_loop_is_killed_at_the_wall_clock_limit():
    t = time.monotonic()
    r = run_python("while True:\n    pass\n", FAST)
    assert r.result == "timed out" and time.monotonic() - t < FAST.timeout_s + 3
    assert _leftovers() == []


@needs_cap
def test_fork_bomb_is_contained_and_its_processes_are_gone():
    t = time.monotonic()
    r = run_python("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", FAST)
    assert not r.passed and time.monotonic() - t < FAST.timeout_s + 5
    time.sleep(0.2)
    assert _leftovers() == []


@needs_cap
def test_process_count_is_limited():
    r = run_python(
        "import os, time\nn = 0\ntry:\n    while n < 500:\n        if os.fork() == 0:\n"
        "            time.sleep(5)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\n"
        "print(n)\n",
        Limits(timeout_s=4.0, max_processes=16),
    )
    assert r.passed and int(r.stdout.strip()) < 16


def test_ten_gigabyte_allocation_fails():
    r = run_python("x = bytearray(10 * 1024 ** 3)\n", FAST)
    assert not r.passed and "MemoryError" in r.result


@needs_ns
def test_no_network():
    r = run_python("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n", FAST)
    assert not r.passed and ("unreachable" in r.result or "OSError" in r.result)


@needs_ns
def test_no_write_outside_its_directory(tmp_path):
    target = tmp_path / "outside.txt"
    os.chmod(tmp_path, 0o777)
    for path in (str(target), "/tmp/r1_sandbox_escape.txt"):
        r = run_python(f"open({path!r}, 'w').write('x')\n", FAST)
        assert not r.passed and "Read-only file system" in r.result
        assert not os.path.exists(path)
    # a remount to get the write back is refused too (no capabilities left)
    r = run_python(
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.mount(None, b'/', None, 32 | 4096, None) == 0, ctypes.get_errno()\n",
        FAST,
    )
    assert not r.passed
    assert run_python("open('inside.txt', 'w').write('x')\nprint(open('inside.txt').read())\n", FAST).stdout == "x"


def test_without_namespaces_the_limits_and_the_group_kill_still_apply():
    bare = Limits(timeout_s=2.0, isolate=False)
    problem = load_problems(limit=1)["HumanEval/0"]
    assert run_python(check_program(problem, problem["canonical_solution"]), bare).passed
    assert run_python("while True:\n    pass\n", bare).result == "timed out"
    assert "MemoryError" in run_python("x = bytearray(10 * 1024 ** 3)\n", bare).result
    assert _leftovers() == []


def test_a_flood_of_output_is_capped_and_an_escaped_child_is_killed():
    r = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", FAST)
    assert not r.passed and len(r.stdout) <= 1 << 16  # the file-size limit ends it; only the tail is read
    # a child that leaves the process group (setsid) and keeps running: the pid namespace ends it, and
    # without namespaces the run's cgroup does
    escape = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
    for limits in (FAST, Limits(timeout_s=2.0, isolate=False)) if process_limit_available() else (FAST,):
        assert run_python(escape, limits).passed
        time.sleep(0.2)
        assert _leftovers() == []


@pytest.fixture
def unshare_refused(tmp_path, monkeypatch):
    """An `unshare` on PATH that fails as it does where user namespaces are not allowed; the cached probe
    results are cleared before and after, so the real system's answer returns for the other tests."""
    from r1_ds.evaluation import sandbox

    fake = tmp_path / "bin" / "unshare"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    for cached in (sandbox.namespaces_available, sandbox.isolation_warning):
        cached.cache_clear()
    yield
    for cached in (sandbox.namespaces_available, sandbox.isolation_warning):
        cached.cache_clear()


def test_where_unshare_is_refused_the_evaluation_warns_and_still_runs_with_the_limits(unshare_refused, caplog):
    from r1_ds.evaluation.humaneval import score_samples
    from r1_ds.evaluation.sandbox import isolation_warning

    assert not namespaces_available()
    problems = load_problems(limit=2)
    first, second = problems
    samples = [
        {"task_id": first, "completion": problems[first]["canonical_solution"]},
        {"task_id": second, "completion": "    while True:\n        pass\n"},
        {"task_id": second, "completion": "    x = bytearray(10 * 1024 ** 3)\n"},
    ]
    scored = score_samples(problems, samples, limits=Limits(timeout_s=2.0), workers=2)
    assert [s["passed"] for s in scored] == [True, False, False]
    assert scored[1]["result"] == "timed out" and "MemoryError" in scored[2]["result"]
    assert "WITH network access" in isolation_warning()
    assert "cannot create network/mount/user namespaces" in caplog.text  # logged, once per process
    assert _leftovers() == []
