"""How a worker's fork-server is launched: the bwrap command line, the uid pool, and preflight checks.

    setpriv --reuid=U --regid=U --clear-groups -- bwrap <namespaces, read-only /usr, private /tmp>
        python3 -I -S -B /sandbox/forkserver.py

Launched as root, setpriv drops to a real unprivileged uid U first, so bwrap builds an unprivileged
user namespace (no capabilities on the host) and RLIMIT_NPROC applies (it is ignored for uid 0).
NPROC counts per uid across sandboxes, hence one uid per worker slot, leased with a lock file.
The sandboxed code sees: /usr (ro), the interpreter's prefix (ro), /proc of its own pid namespace,
a minimal /dev, private size-capped tmpfs /tmp and /dev/shm, no /etc, no /home, no network.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import stat
import sys
from dataclasses import dataclass

SCRIPT_PATH = "/sandbox/forkserver.py"  # where the fork-server's source appears inside the sandbox
HINT = (
    "Fix: `apt-get install -y bubblewrap util-linux` (bwrap, setpriv) and `pip install pyseccomp` with "
    "the system libseccomp2; user namespaces must be allowed (sysctl kernel.unprivileged_userns_clone=1, "
    "user.max_user_namespaces > 0). Running without isolation needs Sandbox(..., allow_unsafe=True)."
)


class SandboxUnavailable(RuntimeError):
    """Isolation cannot start on this machine. The message says what to install or change."""


@dataclass(frozen=True)
class Isolation:
    bwrap: str = "bwrap"
    setpriv: str = "setpriv"
    python: str | None = None  # interpreter inside the sandbox; None -> find_python()
    uid_first: int = 61000  # uid pool for worker slots (numeric: no /etc/passwd entry needed)
    uid_count: int = 1000
    lock_dir: str = "/run/alignfactory-sandbox"  # lock files that lease uids across processes


def find_python(prefer: str | None = None) -> str:
    """A plain stdlib CPython the sandbox uid can read: the venv's base interpreter if its path is
    world-traversable, else the system /usr/bin/python3 (pyenv under /root is 0700, for example)."""
    candidates = [prefer] if prefer else []
    candidates += [
        os.path.join(sys.base_prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}"),
        os.path.join(sys.base_prefix, "bin", "python3"),
        "/usr/bin/python3",
    ]
    for c in candidates:
        if c and os.path.exists(c) and _world_readable(os.path.realpath(c)):
            return os.path.realpath(c)
    raise SandboxUnavailable(
        f"no Python interpreter readable by an unprivileged uid among {candidates}. {HINT}"
    )


def _world_readable(path: str) -> bool:
    """Every directory on the way is o+x and the file is o+rx."""
    parts = path.split("/")
    for i in range(2, len(parts)):
        if not os.stat("/".join(parts[:i])).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(path).st_mode
    return bool(mode & stat.S_IXOTH and mode & stat.S_IROTH)


def preflight(iso: Isolation) -> dict:
    """Resolve binaries or raise SandboxUnavailable with a fix. Returns resolved paths."""
    problems, found = [], {}
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"isolation needs Linux (this is {sys.platform}). {HINT}")
    for name in ("bwrap", "setpriv") if os.geteuid() == 0 else ("bwrap",):
        path = shutil.which(getattr(iso, name))
        if path is None:
            problems.append(f"{getattr(iso, name)!r} not found on PATH")
        found[name] = path
    try:
        from sandbox.seccomp_filter import build_bpf

        found["bpf"] = build_bpf()
    except Exception as e:  # ImportError (no pyseccomp), OSError (no libseccomp.so.2)
        problems.append(f"cannot build the seccomp filter ({type(e).__name__}: {e})")
    if problems:
        raise SandboxUnavailable("sandbox isolation unavailable: " + "; ".join(problems) + ". " + HINT)
    found["python"] = find_python(iso.python)
    return found


def server_argv(found: dict, uid: int | None, tmp_mb: int, script_fd: int) -> list[str]:
    """The command that starts one worker's fork-server. `script_fd` holds forkserver.py's source."""
    python = found["python"]
    prefix = os.path.dirname(os.path.dirname(python))
    argv = [found["setpriv"], f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"] if uid else []
    argv += [found["bwrap"], "--unshare-all", "--unshare-user", "--disable-userns"]
    argv += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]
    argv += ["--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8"]
    argv += ["--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    if not prefix.startswith("/usr/") and prefix != "/usr":
        argv += ["--ro-bind", prefix, prefix]
    size = str(tmp_mb << 20)  # bytes
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/tmp"]
    argv += ["--size", size, "--tmpfs", "/dev/shm", "--perms", "0444", "--ro-bind-data", str(script_fd)]
    argv += [SCRIPT_PATH, "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp"]
    return [*argv, python, "-I", "-S", "-B", SCRIPT_PATH]


class UidLease:
    """One uid from the pool, held by an flock for this process's lifetime (released on close/exit).
    Skips uids that exist in /etc/passwd, so no real account's process count is touched."""

    def __init__(self, iso: Isolation):
        lock_dir = iso.lock_dir if os.geteuid() == 0 else f"/tmp/alignfactory-sandbox-{os.geteuid()}"
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        for uid in range(iso.uid_first, iso.uid_first + iso.uid_count):
            if _uid_exists(uid):
                continue
            fd = os.open(
                os.path.join(lock_dir, f"uid-{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uid, self._fd = uid, fd
            return
        raise SandboxUnavailable(f"all {iso.uid_count} sandbox uids from {iso.uid_first} are leased")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _uid_exists(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False
