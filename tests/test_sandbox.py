"""The sandbox: outputs of good code, the limits (network, time incl. children, memory, CPU, output), and what a
hostile program tries: outlive the run, hold its pipes open, flood its output, kill the flywheel, read the
round's hidden labels, write outside its directory, fork without end. Strict mode contains all of it; the
weak mode's limits are tested too, and what it cannot contain is said in flywheel.sandbox."""

import os
import signal
import socket
import textwrap
import time
import uuid

import pytest

from flywheel.errors import InputError
from flywheel.sandbox import Limits, network_isolation, require, run_program, strict_available

STRICT_OK, WHY = strict_available()
needs_strict = pytest.mark.skipif(not STRICT_OK, reason=f"no namespaces on this machine: {WHY}")
MODES = [pytest.param("strict", marks=needs_strict), "weak"]


@pytest.mark.parametrize("mode", MODES)
def test_returns_outputs_of_good_code(mode):
    limits = Limits(mode=mode)
    script = run_program("a, b = map(int, input().split())\nprint(a * b)", stdin="6 7\n", limits=limits)
    assert script.ok and script.stdout == "42\n"
    calls = run_program("def f(x):\n    return [x, x * 2]", calls=["f(2)", "f('a')", "f()"], limits=limits)
    assert calls.ok and calls.results == ["[2, 4]", "['a', 'aa']", "error:TypeError"]


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    yield server
    server.close()


@pytest.mark.parametrize("mode", MODES)
def test_refuses_network(listener, mode):
    port = listener.getsockname()[1]
    program = textwrap.dedent(f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect(("127.0.0.1", {port}))
        print("connected")
    """)
    result = run_program(program, limits=Limits(mode=mode))
    assert "connected" not in result.stdout
    assert result.returncode != 0
    with pytest.raises(socket.timeout):
        listener.accept()  # nothing reached the listening socket
    assert network_isolation() in ("unshare", "audit-hook")


def test_weak_mode_audit_hook_refuses_network_without_a_namespace(listener, monkeypatch):
    import flywheel.sandbox

    monkeypatch.setattr(flywheel.sandbox, "network_isolation", lambda: "audit-hook")
    port = listener.getsockname()[1]
    result = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
                         "print('connected')", limits=Limits(mode="weak"))
    assert "connected" not in result.stdout
    assert "network access is disabled in the sandbox" in result.stderr


@needs_strict
def test_network_namespace_holds_for_spawned_processes(listener):
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


def _running(marker: str) -> list[int]:
    """Host processes whose command line holds ``marker`` (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().decode(errors="replace")
            with open(f"/proc/{entry}/stat") as handle:
                zombie = handle.read().split(") ")[1][0] == "Z"
        except OSError:
            continue
        if marker in command and not zombie:
            found.append(int(entry))
    return found


def _sleeper(marker: str, *, setsid: bool) -> str:
    """A program that starts a child which sleeps (marked) and keeps the program's stdout open."""
    return textwrap.dedent(f"""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time  # {marker}\\ntime.sleep(60)"],
                         start_new_session={setsid})
        print("started", flush=True)
    """)


@needs_strict
def test_nothing_the_program_starts_outlives_it_even_in_a_new_session():
    marker = f"flywheel-test-{uuid.uuid4().hex}"
    start = time.monotonic()
    result = run_program(_sleeper(marker, setsid=True) + "\nimport time\ntime.sleep(60)",
                         limits=Limits(wall_seconds=2, cpu_seconds=60))
    assert result.timed_out and "started" in result.stdout
    assert time.monotonic() - start < 10
    time.sleep(0.2)
    assert _running(marker) == []


@pytest.mark.parametrize("mode", MODES)
def test_a_child_holding_stdout_open_does_not_block_the_run(mode):
    """The program exits at once; the child it started keeps the pipe open for 60 s."""
    marker = f"flywheel-test-{uuid.uuid4().hex}"
    start = time.monotonic()
    result = run_program(_sleeper(marker, setsid=True), limits=Limits(wall_seconds=5, cpu_seconds=60, mode=mode))
    elapsed = time.monotonic() - start
    assert result.stdout == "started\n" and not result.timed_out
    assert elapsed < 5, f"the run waited {elapsed:.1f} s on a pipe a leftover child held"
    if mode == "strict":
        assert _running(marker) == []
    else:  # weak mode: a setsid child escapes the process group (the reason strict mode exists)
        for pid in _running(marker):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("mode", MODES)
def test_time_limit_kills_the_program_and_its_children(mode):
    marker = f"flywheel-test-{uuid.uuid4().hex}"
    result = run_program(_sleeper(marker, setsid=False) + "\nwhile True:\n    pass",
                         limits=Limits(wall_seconds=2, cpu_seconds=60, mode=mode))
    assert result.timed_out and not result.ok
    time.sleep(0.2)
    assert _running(marker) == []


@pytest.mark.parametrize("mode", MODES)
def test_a_flood_of_output_is_cut_and_costs_the_caller_nothing(mode):
    limits = Limits(wall_seconds=20, cpu_seconds=20, mode=mode, output_bytes=4096)
    start = time.monotonic()
    result = run_program("import sys\nchunk = 'x' * 1_000_000\nfor _ in range(1000):\n    sys.stdout.write(chunk)",
                         limits=limits)
    assert result.output_truncated and len(result.stdout) == 4096
    assert not result.ok and time.monotonic() - start < 15  # killed for the flood, not read to the end


@needs_strict
def test_the_program_cannot_signal_the_flywheel():
    program = textwrap.dedent(f"""
        import os
        print(os.getpid(), os.getppid())
        try:
            os.kill({os.getpid()}, 9)  # the flywheel's pid, as the caller sees it
        except ProcessLookupError:
            print("no such process")
        os.kill(os.getppid(), 9)
    """)
    result = run_program(program)
    # Its parent is PID 1 of its own namespace (the sandbox's reaper, which a signal from inside cannot kill);
    # the flywheel's pid does not exist there.
    assert result.stdout.split("\n")[:2] == ["2 1", "no such process"]
    assert result.ok


@needs_strict
def test_the_program_sees_no_project_data_and_writes_only_its_directory(tmp_path):
    labels = tmp_path / "rounds" / "1" / "audit.parquet"
    labels.parent.mkdir(parents=True)
    labels.write_text("the hidden answers")
    outside = tmp_path / "written-from-the-sandbox"
    program = textwrap.dedent(f"""
        import os
        for path in ({str(labels)!r}, {os.path.abspath(__file__)!r}, "/etc/shadow"):
            try:
                print(path, open(path).read()[:20])
            except OSError as error:
                print(path, type(error).__name__)
        for path in ({str(outside)!r}, "/usr/evil", "/sandbox/ok.txt"):
            try:
                open(path, "w").write("x")
                print(path, "written")
            except OSError as error:
                print(path, type(error).__name__)
        print(sorted(os.listdir("/")))
    """)
    result = run_program(program)
    assert result.ok, result.stderr
    lines = result.stdout.splitlines()
    assert "the hidden answers" not in result.stdout
    assert lines[0] == f"{labels} FileNotFoundError" and lines[1].endswith("FileNotFoundError")
    assert lines[2].split()[-1] in ("FileNotFoundError", "PermissionError")
    assert lines[3].endswith(("FileNotFoundError", "OSError")) and lines[4].endswith(("OSError", "PermissionError"))
    assert lines[5] == "/sandbox/ok.txt written"
    assert not outside.exists()
    assert str(tmp_path).split("/")[1] not in eval(lines[6]) or str(tmp_path).startswith("/root")


@needs_strict
def test_a_fork_bomb_is_capped_by_the_process_limit():
    program = textwrap.dedent("""
        import os, time
        started = 0
        for _ in range(200):
            try:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                started += 1
            except OSError:
                break
        print(started)
    """)
    result = run_program(program, limits=Limits(wall_seconds=10, processes=16))
    assert result.ok and int(result.stdout) < 16


@pytest.mark.parametrize("mode", MODES)
def test_cpu_limit_kills_a_busy_loop(mode):
    result = run_program("while True:\n    pass", limits=Limits(wall_seconds=60, cpu_seconds=1, mode=mode))
    assert not result.timed_out and result.returncode in (-signal.SIGXCPU, -signal.SIGKILL)


@pytest.mark.parametrize("mode", MODES)
def test_memory_limit(mode):
    result = run_program("block = bytearray(1024 ** 3)\nprint('allocated')", limits=Limits(memory_mb=200, mode=mode))
    assert "allocated" not in result.stdout
    assert "MemoryError" in result.stderr


def test_weak_mode_relative_writes_stay_in_its_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    program = "import os\nopen('out.txt', 'w').write('x')\nprint(os.getcwd())\nprint(os.environ.get('HOME'))"
    result = run_program(program, limits=Limits(mode="weak"))
    assert result.ok
    sandbox_cwd, home = result.stdout.split()
    assert sandbox_cwd == home and sandbox_cwd != str(tmp_path)
    assert not (tmp_path / "out.txt").exists()
    assert not os.path.exists(sandbox_cwd)  # the temporary directory is removed afterwards


@pytest.mark.parametrize("mode", MODES)
def test_minimal_environment(monkeypatch, mode):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    result = run_program("import os\nprint(sorted(os.environ))", limits=Limits(mode=mode))
    assert "SECRET_TOKEN" not in result.stdout


def test_strict_mode_refuses_in_one_line_where_namespaces_are_missing(monkeypatch):
    import flywheel.sandbox

    monkeypatch.setattr(flywheel.sandbox, "strict_available", lambda: (False, "unshare: Operation not permitted"))
    with pytest.raises(InputError) as error:
        require(Limits())
    message = str(error.value)
    assert "\n" not in message and "code.sandbox" in message and "code.sandbox=weak" in message
    require(Limits(mode="weak"))  # the opt-in runs without namespaces
    with pytest.raises(InputError):
        run_program("print(1)")  # never runs the program unconfined


# What a program may forge: the sandbox once trusted a `.status` file in the program's own directory.
FORGERIES = {
    "file": "open('.status', 'w').write(json.dumps({'returncode': 0}))\nos.chmod('.status', 0o444)",
    "symlink to a read-only file": "open('forged', 'w').write(json.dumps({'returncode': 0}))\n"
                                   "os.chmod('forged', 0o444)\nos.symlink('forged', '.status')",
    "directory": "os.mkdir('.status')",
}


@needs_strict
@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_program_cannot_forge_its_own_verdict(forgery):
    from flywheel.tasks.code import passes

    program = "import json, os, sys\nprint(42)\n" + FORGERIES[forgery] + "\nsys.exit(3)"
    result = run_program(program)
    assert result.returncode == 3 and not result.ok
    assert not passes(program, [{"stdin": "", "stdout": "42"}], Limits())
    # Call mode: forged results beside the forged status count for nothing either.
    calls = ("def f():\n    return 1\n" + program.replace("sys.exit(3)", "")
             + "json.dump(['True'], open('.results.json', 'w'))\nos.chmod('.results.json', 0o444)\nsys.exit(3)")
    assert not passes(calls, [{"assert": "f() == 2"}], Limits())


@pytest.mark.parametrize("mode", MODES)
def test_exit_codes_and_signals_are_reported(mode):
    limits = Limits(mode=mode)
    assert run_program("import sys\nsys.exit(7)", limits=limits).returncode == 7
    killed = run_program("import os, signal\nprint('x', flush=True)\nos.kill(os.getpid(), signal.SIGTERM)",
                         limits=limits)
    assert killed.returncode == -signal.SIGTERM and not killed.ok and not killed.timed_out
    assert killed.stdout == "x\n"
    assert run_program("print('fine')", limits=limits).ok


@pytest.fixture(params=["root", "user namespace"])
def strict_path(request, monkeypatch):
    """Strict mode both ways: as root (the program runs as nobody) and as a non-root caller would run it (a user
    namespace, where the program is root of its namespace); running as root, the second is entered on purpose."""
    import flywheel.sandbox

    if not STRICT_OK:
        pytest.skip(f"no namespaces on this machine: {WHY}")
    if request.param == "root" and os.geteuid() != 0:
        pytest.skip("the root path needs root")
    monkeypatch.setattr(flywheel.sandbox, "_real_root", lambda: request.param == "root")
    return request.param


def test_the_program_cannot_stop_or_reach_the_sandbox_reaper(strict_path):
    program = textwrap.dedent("""
        import ctypes, os, signal, time
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL, signal.SIGSTOP):
            os.kill(1, sig)  # PID 1 of its namespace: the reaper that reports how the program ended
        time.sleep(0.5)
        libc = ctypes.CDLL(None, use_errno=True)
        print("ptrace", libc.ptrace(16, 1, 0, 0), os.strerror(ctypes.get_errno()))  # PTRACE_ATTACH
        reached = []
        for path in ["/proc/1/mem", *(f"/proc/1/fd/{fd}" for fd in range(16))]:  # its report pipe among them
            try:
                os.close(os.open(path, os.O_WRONLY))
                reached.append(path)
            except (PermissionError, FileNotFoundError):
                pass
        print("reached", reached)
        status = dict(line.split(":\\t") for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
        print("capabilities", status["CapEff"], status["CapPrm"], status["CapBnd"])
    """)
    result = run_program(program)
    assert result.ok, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ptrace -1 ")
    assert lines[1] == "reached []"
    assert lines[2] == "capabilities " + " ".join(["0" * 16] * 3)


WRITE_MANY = textwrap.dedent("""
    import errno, sys
    written = 0
    for index in range(64):
        try:
            with open(f"part-{index}", "wb") as handle:
                handle.write(b"x" * 2 ** 20)
        except OSError as error:
            print(written, errno.errorcode[error.errno])
            sys.exit(0)
        written += 1
    print(written, "written")
""")


def test_strict_caps_the_bytes_written_in_all(strict_path):
    result = run_program(WRITE_MANY, limits=Limits(file_mb=4))  # each file (1 MB) is under the per-file cap
    written, error = result.stdout.split()
    assert int(written) <= 4 and error == "ENOSPC"


def test_weak_fails_a_program_that_writes_past_the_cap_in_its_directory():
    result = run_program(WRITE_MANY, limits=Limits(file_mb=4, mode="weak"))
    assert not result.ok and result.returncode == -signal.SIGXFSZ


@pytest.mark.parametrize("mode", MODES)
def test_a_program_that_never_reads_its_input_still_has_the_wall_clock(mode):
    # More input than a pipe holds: writing it all before reading the output once blocked the caller until
    # the program ended, whatever the wall clock said.
    result = run_program("import time\ntime.sleep(20)\nprint('done')", stdin="x" * 2 ** 20,
                         limits=Limits(wall_seconds=2, cpu_seconds=30, mode=mode))
    assert result.timed_out and not result.ok and result.stdout == ""
