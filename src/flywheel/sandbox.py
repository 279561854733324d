"""Run untrusted Python (model-written programs) in a sandbox it cannot escape.

Two modes (``code.sandbox``):

``strict`` (the default): the program runs in its own PID, mount and network namespaces (``unshare``,
  from util-linux, which both images have; as a non-root user inside a user namespace too):
    processes  it is PID 1's child in its namespace: everything it starts dies with it (``setsid``, daemons
               included), and it can see or signal no process outside (not the flywheel); PID 1 ignores
               every signal the program sends it and is not dumpable (no ptrace, no ``/proc/1/fd``)
    files      a private root: the system's ``/usr``, ``/lib``, ``/etc`` and the interpreter read-only,
               a fresh tmpfs at ``/sandbox`` (cwd, HOME, TMPDIR) the only writable place: ``file_mb`` in all
               on top of the program's own files, and 4096 files at most; the project, the round's data and
               its hidden labels are not there to read, and nothing it writes reaches the caller's disk
    network    an empty network namespace (no interface but a down loopback)
    identity   as root, it runs as ``nobody``; as a non-root caller, it is root of a user namespace; either
               way with no capabilities (bounding set emptied), no new privileges, at most ``processes``
               processes
    verdict    how it ended (exit code, or a signal as its negative) is what PID 1 saw when it reaped it,
               told on a pipe only PID 1 holds and confirmed by PID 1's exit code; nothing in ``/sandbox``
               counts beyond the call results its own interpreter wrote (read by PID 1 after a clean exit)
  Where the kernel allows no namespaces here, a strict run refuses to start (one line) rather than
  run the program unconfined.
``weak`` (opt-in): rlimits, a process group killed at the end, a network namespace where possible
  (else an audit hook in the program's interpreter), a temporary cwd. A program can still read and
  write the caller's files by absolute path and keep a ``setsid`` child alive; use it only where the
  programs are trusted or the whole flywheel runs in a throw-away container. Its writes: each file is capped
  (RLIMIT_FSIZE), and its temporary directory is measured every 0.1 s and at the end: past ``file_mb`` in
  all, the program is killed and fails (returncode ``-SIGXFSZ``); between two looks it can write what the
  disk takes in 0.1 s, and what it writes elsewhere by absolute path (``/tmp``, the caller's files) is not
  counted at all.

Both modes: ``wall_seconds`` of wall clock (the whole group, namespace included, is killed), ``cpu_seconds``
(RLIMIT_CPU), ``memory_mb`` of address space (RLIMIT_AS), written bytes capped at ``file_mb`` per file
(RLIMIT_FSIZE) and in all (above), no core dumps, a minimal environment, ``python -I``; input is fed as the
program reads it; output is streamed and capped: at most ``output_bytes`` of stdout (its head) and stderr (its
tail) are kept, and a program printing more than ``64 x output_bytes`` in all is killed, so a program printing a
gigabyte costs the caller nothing.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import replace

from flywheel.errors import InputError
from flywheel.supervisor import Limits, RunResult, bytes_under, own_processes, supervise

MODES = ("strict", "weak")

RUNNER = r'''
import json, sys
mode, program_path, tests_path, results_path = sys.argv[1:5]

def _refuse_network(event, args):
    if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                 "socket.gethostbyname", "socket.gethostbyaddr"):
        raise PermissionError(f"network access is disabled in the sandbox ({event})")

sys.addaudithook(_refuse_network)
source = open(program_path).read()
if mode == "main":
    namespace = {"__name__": "__main__"}
    exec(compile(source, "solution.py", "exec"), namespace)
else:
    calls = json.load(open(tests_path))
    namespace = {"__name__": "solution"}
    exec(compile(source, "solution.py", "exec"), namespace)
    results = []
    for call in calls:
        try:
            results.append(repr(eval(call, namespace)))
        except BaseException as error:  # a failing test is an output, not a crash of the runner
            results.append(f"error:{type(error).__name__}")
    with open(results_path, "w") as handle:
        json.dump(results, handle)
'''


def _read_capped(path: str, cap: int) -> bytes | None:
    """A file the program wrote, if it is a plain file of at most ``cap`` bytes (no link followed, no FIFO
    waited on: the program chose what is at ``path``). The caller's, and PID 1's in the strict sandbox (SETUP
    carries its source)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = bytearray()
        while len(data) <= cap:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return bytes(data)
            data += chunk
        return None
    finally:
        os.close(fd)


# PID 1 of the strict sandbox's namespaces: builds the private root, drops privileges, starts the runner and
# reports how it ended. Runs with the flywheel interpreter's stdlib only (python -I -S), before the program exists
# as a process. The program can neither signal it (PID 1 of a namespace gets, from inside, only the signals it
# handles: none here), nor trace or read it (it is not dumpable and the program has no capabilities), nor write
# what it reports: the report goes to a pipe only PID 1 holds, and PID 1 exits with the same code.
SETUP = r'''
import ctypes, json, os, resource, signal, stat, sys
''' + inspect.getsource(_read_capped) + r'''
spec = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Python's own handler: the one signal the program could send us

def check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")

def mount(source, target, fstype, flags, data=None):
    check(libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), flags,
                     data and data.encode()), f"mount {source} on {target}")

def bind(source, target, writable=False):
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND | MS_REC)
    if not writable:
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)

def drop_bounding_set():
    # An exec as uid 0 (the user-namespace case) gains the bounding set; empty, it gains nothing.
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    if ctypes.get_errno() != 22 or cap == 0:  # EINVAL: past the last capability this kernel knows
        check(-1, "drop the capability bounding set")

def drop_capabilities():
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    empty = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (two words each): none
    check(libc.capset(header, empty), "drop capabilities")

report = spec["report_fd"]
os.set_inheritable(report, False)  # the runner's exec closes it
os.setsid()
mount(None, "/", None, MS_REC | MS_PRIVATE)
root = spec["root"]
mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
for path in spec["system"]:
    target = root + path
    if os.path.islink(path):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.readlink(path), target)
    elif os.path.exists(path):
        bind(path, target)
for device in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"):
    bind(device, root + device, writable=True)
# /sandbox, the one writable place: a tmpfs holding the program's files and at most write_bytes more, in all.
files = {}
for name in spec["files"]:
    with open(os.path.join(spec["workdir"], name), "rb") as handle:
        files[name] = handle.read()
page = os.sysconf("SC_PAGE_SIZE")
size = spec["write_bytes"] + sum(-(-len(data) // page) * page for data in files.values())
owner = spec["drop_to"] if spec["drop_to"] is not None else 0
os.makedirs(root + "/sandbox")
mount("tmpfs", root + "/sandbox", "tmpfs", MS_NOSUID | MS_NODEV,
      f"size={size},nr_inodes={spec['inodes']},mode=0700,uid={owner},gid={owner}")
for name, data in files.items():
    with open(root + "/sandbox/" + name, "wb") as handle:
        handle.write(data)
    os.chown(root + "/sandbox/" + name, owner, owner)
try:
    os.makedirs(root + "/proc", exist_ok=True)
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV)  # this namespace's processes only
except OSError:
    pass
mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
os.chroot(root)
os.chdir("/sandbox")
drop_bounding_set()
if spec["drop_to"] is not None:  # real root: become nobody (a user namespace maps only the caller's uid)
    os.setgroups([])
    os.setgid(spec["drop_to"])
    os.setuid(spec["drop_to"])
drop_capabilities()
check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no new privileges")
check(libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "death signal")  # again: a change of credentials cleared unshare's
check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "not dumpable")  # the runner's exec makes only itself dumpable again
resource.setrlimit(resource.RLIMIT_NPROC, (spec["nproc"], spec["nproc"]))
runner = os.fork()
if runner == 0:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the program's interpreter handles Ctrl-C as usual
    os.execve(spec["python"], [spec["python"], "-I", *spec["argv"]], spec["env"])
# PID 1 stays to reap, and reports how the runner ended; when it exits, the kernel kills whatever is left.
returncode = None
while returncode is None:
    try:
        pid, raw = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    if pid == runner:
        returncode = os.waitstatus_to_exitcode(raw)
results = _read_capped(spec["results"], size) if returncode == 0 else None
message = json.dumps({"returncode": returncode, "results": results is not None}).encode() + b"\n" + (results or b"")
try:
    while message:
        message = message[os.write(report, message):]
except OSError:
    pass
os._exit(1 if returncode is None else returncode if returncode >= 0 else 128 - returncode)
'''


@functools.lru_cache(maxsize=1)
def network_isolation() -> str:
    """Weak mode's network: 'unshare' when a new network namespace works here (root, or unprivileged user
    namespaces), else 'audit-hook'."""
    for prefix in (_unshare_prefix(), ["unshare", "--user", "--map-root-user", "--net"]):
        if shutil.which("unshare") is None:
            break
        try:
            done = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            _UNSHARE.append(prefix)
            return "unshare"
    return "audit-hook"


_UNSHARE: list[list[str]] = []


def _unshare_prefix() -> list[str]:
    return ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--user", "--net"]


def _real_root() -> bool:
    """Root drops the program to nobody; any other caller runs it as root of a new user namespace."""
    return os.geteuid() == 0


def _namespace_prefix() -> list[str]:
    """unshare with PID, mount and network namespaces; PID 1 (our setup) dies with unshare."""
    prefix = ["unshare", "--fork", "--kill-child", "--pid", "--mount", "--net"]
    if not _real_root():
        prefix += ["--user", "--map-root-user"]
    return prefix


@functools.lru_cache(maxsize=1)
def strict_available() -> tuple[bool, str]:
    """Whether the strict sandbox works on this machine (tried once), and why not."""
    if shutil.which("unshare") is None:
        return False, "the unshare command (util-linux) is not installed"
    try:
        result = _run_strict("print('ok')", stdin="", calls=None, limits=Limits(wall_seconds=30, cpu_seconds=10))
    except OSError as error:
        return False, str(error)
    if result.stdout.strip() == "ok":
        return True, ""
    return False, (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1][:200]


def require(limits: Limits) -> None:
    """Before a stage runs any program: the sandbox its mode asks for works here, else one line."""
    if limits.mode not in MODES:
        raise InputError("config", f"must be one of {', '.join(MODES)}", field="code.sandbox")
    if limits.mode == "strict":
        ok, why = strict_available()
        if not ok:
            raise InputError("code.sandbox", f"strict needs PID, mount and network namespaces, which this machine "
                             f"does not allow ({why}); run where they are (a pod whose seccomp profile allows "
                             "unshare: Unconfined, not the RuntimeDefault KFP's step pods get), or opt into "
                             "code.sandbox=weak, which cannot keep a program from the caller's files "
                             "(docs/code-tests-and-judge.md)", field="code.sandbox")


def run_program(source: str, *, stdin: str = "", calls: list[str] | None = None,
                limits: Limits = Limits()) -> RunResult:
    """Run ``source`` as a script fed ``stdin``, or (``calls`` given) import it and evaluate each call expression."""
    if limits.mode == "strict":
        require(limits)
        return _run_strict(source, stdin=stdin, calls=calls, limits=limits)
    return _run_weak(source, stdin=stdin, calls=calls, limits=limits)


PROGRAM_FILES = ("solution.py", ".runner.py", ".calls.json")
INODES = 4096  # strict: files and directories a program may create in /sandbox (a tmpfs's inodes cost memory)


def _write_program(workdir: str, source: str, calls) -> None:
    for name, text in zip(PROGRAM_FILES, (source, RUNNER, json.dumps(calls or []))):
        with open(os.path.join(workdir, name), "w") as handle:
            handle.write(text)


def _write_bytes(limits: Limits) -> int:
    """Bytes a program may write in all, in one file or many: the per-file cap, ``file_mb``."""
    return limits.file_mb * 1024 * 1024


def _run_strict(source: str, *, stdin: str, calls, limits: Limits) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="flywheel-sandbox-") as scratch:
        workdir, root = os.path.join(scratch, "work"), os.path.join(scratch, "root")
        os.makedirs(workdir)
        os.makedirs(root)
        _write_program(workdir, source, calls)  # PID 1 copies it into the program's own /sandbox
        python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        system = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc"]
        prefix = os.path.realpath(sys.base_prefix)
        if not any(prefix == s or prefix.startswith(s + "/") for s in system):
            system.append(prefix)  # an interpreter outside /usr (pyenv, uv): its own directory only
        drop_to = 65534 if _real_root() else None
        report = os.pipe()  # PID 1 -> this process: how the program ended, and its results
        spec = {"root": root, "system": system, "workdir": workdir, "files": PROGRAM_FILES, "python": python,
                "drop_to": drop_to, "write_bytes": _write_bytes(limits), "inodes": INODES,
                "nproc": limits.processes if drop_to is not None else own_processes() + limits.processes,
                "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/sandbox", "TMPDIR": "/sandbox"},
                "argv": ["/sandbox/.runner.py", "call" if calls is not None else "main", "/sandbox/solution.py",
                         "/sandbox/.calls.json", "/sandbox/.results.json"],
                "results": "/sandbox/.results.json", "report_fd": report[1]}
        command = [*_namespace_prefix(), python, "-I", "-S", "-c", SETUP, json.dumps(spec)]
        result, reported = supervise(command, cwd=workdir, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                      stdin=stdin, limits=limits, report=report)
        return _strict_verdict(result, reported, calls)


def _strict_verdict(result: RunResult, reported: bytes, calls) -> RunResult:
    """How the program ended, as PID 1 saw it and told this process alone (a pipe, which the program cannot reach),
    confirmed by PID 1's exit code (unshare --fork passes it on). Without both, the supervised process's own
    ending stands: the setup failed, the wall clock ran out, or the run was killed (a flood of output)."""
    header, _, results = reported.partition(b"\n")
    try:
        said = json.loads(header)
        returncode = int(said["returncode"])
    except (ValueError, KeyError, TypeError):
        return result
    if result.timed_out or result.returncode != _exit_code(returncode):
        return result
    return _with_results(replace(result, returncode=returncode), results if said.get("results") else None, calls)


def _exit_code(returncode: int) -> int:
    """The exit code a shell reports for ``returncode`` (killed by signal N: 128 + N), as PID 1 exits with it."""
    return returncode if returncode >= 0 else 128 - returncode


def _run_weak(source: str, *, stdin: str, calls, limits: Limits) -> RunResult:
    isolation = network_isolation()
    with tempfile.TemporaryDirectory(prefix="flywheel-sandbox-") as workdir:
        _write_program(workdir, source, calls)
        command = [sys.executable, "-I", os.path.join(workdir, ".runner.py"), "call" if calls is not None else "main",
                   os.path.join(workdir, "solution.py"), os.path.join(workdir, ".calls.json"),
                   os.path.join(workdir, ".results.json")]
        if isolation == "unshare":
            command = [*_UNSHARE[0], *command]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        watch = (workdir, bytes_under(workdir) + _write_bytes(limits))
        result, _ = supervise(command, cwd=workdir, env=env, stdin=stdin, limits=limits, watch=watch)
        results = None
        if calls is not None and result.ok:
            results = _read_capped(os.path.join(workdir, ".results.json"), _write_bytes(limits))
        return _with_results(result, results, calls)


def _with_results(result: RunResult, results: bytes | None, calls) -> RunResult:
    if calls is None or not result.ok or results is None:
        return result
    try:
        parsed = [str(r) for r in json.loads(results)]
    except (ValueError, TypeError, RecursionError):
        return result
    return replace(result, results=parsed)
