"""The sandbox: outputs of good code, and the limits (network, time incl. children, memory, working directory)."""

import os
import signal
import socket
import textwrap

import pytest

from flywheel.sandbox import Limits, network_isolation, run_program


def test_returns_outputs_of_good_code():
    script = run_program("a, b = map(int, input().split())\nprint(a * b)", stdin="6 7\n")
    assert script.ok and script.stdout == "42\n"
    calls = run_program("def f(x):\n    return [x, x * 2]", calls=["f(2)", "f('a')", "f()"])
    assert calls.ok and calls.results == ["[2, 4]", "['a', 'aa']", "error:TypeError"]


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    yield server
    server.close()


def test_refuses_network(listener):
    port = listener.getsockname()[1]
    program = textwrap.dedent(f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect(("127.0.0.1", {port}))
        print("connected")
    """)
    result = run_program(program)
    assert "connected" not in result.stdout
    assert result.returncode != 0
    with pytest.raises(socket.timeout):
        listener.accept()  # nothing reached the listening socket
    assert network_isolation() in ("unshare", "audit-hook")


def test_audit_hook_refuses_network_without_a_namespace(listener, monkeypatch):
    import flywheel.sandbox

    monkeypatch.setattr(flywheel.sandbox, "network_isolation", lambda: "audit-hook")
    port = listener.getsockname()[1]
    result = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('connected')")
    assert "connected" not in result.stdout
    assert "network access is disabled in the sandbox" in result.stderr


def test_network_namespace_holds_for_spawned_processes(listener):
    if network_isolation() != "unshare":
        pytest.skip("no network namespace on this machine: only the in-process audit hook applies")
    port = listener.getsockname()[1]
    # A fresh interpreter has no audit hook; only the namespace stops it.
    program = textwrap.dedent(f"""
        import subprocess, sys
        code = "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3); print('connected')"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        print(done.stdout, done.returncode)
    """)
    result = run_program(program)
    assert result.ok and "connected" not in result.stdout


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"  # a zombie is dead, merely unreaped
    except FileNotFoundError:
        return False


def test_time_limit_kills_the_program_and_its_children():
    program = textwrap.dedent("""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.1)"])
        print(child.pid, flush=True)
        while True:
            pass
    """)
    result = run_program(program, limits=Limits(wall_seconds=2, cpu_seconds=60))
    assert result.timed_out and not result.ok
    child_pid = int(result.stdout.split()[0])
    assert not _alive(child_pid)


def test_cpu_limit_kills_a_busy_loop():
    result = run_program("while True:\n    pass", limits=Limits(wall_seconds=60, cpu_seconds=1))
    assert not result.timed_out and result.returncode == -signal.SIGXCPU  # RLIMIT_CPU, not the wall clock


def test_memory_limit():
    result = run_program("block = bytearray(1024 ** 3)\nprint('allocated')", limits=Limits(memory_mb=200))
    assert "allocated" not in result.stdout
    assert "MemoryError" in result.stderr


def test_relative_writes_stay_in_the_sandbox(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    program = "import os\nopen('out.txt', 'w').write('x')\nprint(os.getcwd())\nprint(os.environ.get('HOME'))"
    result = run_program(program)
    assert result.ok
    sandbox_cwd, home = result.stdout.split()
    assert sandbox_cwd == home and sandbox_cwd != str(tmp_path)
    assert not (tmp_path / "out.txt").exists()
    assert not os.path.exists(sandbox_cwd)  # the temporary directory is removed afterwards


def test_minimal_environment(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    result = run_program("import os\nprint(sorted(os.environ))")
    assert "SECRET_TOKEN" not in result.stdout
