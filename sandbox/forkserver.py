"""The fork-server: the one long-lived program inside a worker's bwrap sandbox.

Runs as `python3 -I -S -B forkserver.py`, stdlib only (it is copied into the sandbox by bwrap
--ro-bind-data; the venv is not visible). Speaks framed JSON on stdin/stdout with the harness:
4-byte big-endian length, then UTF-8 JSON. First frame in: init {bpf, workdirs, sandboxed}; first
frame out: ready. Then one request per execution, one response each.

Per execution: fork; the child takes a new process group, rlimits, the seccomp filter, and runs the
task code in-process (no exec: a warm interpreter is what makes hundreds of runs per second). The
server reads the child's stdout/stderr/result pipes under caps and a wall-clock deadline, then kills
the whole group, kills and reaps anything else alive in the pid namespace, and wipes the workdirs.

The server must stay able to kill: seccomp is installed only in the child. The server makes itself
non-dumpable, so a task (same uid) cannot open /proc/<server>/mem or its fds.
"""

import builtins
import contextlib
import ctypes
import fcntl
import gc
import json
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback
import types

PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 4, 22, 38, 36
SECCOMP_MODE_FILTER = 2
RESULT_FD = 3  # in the child: framed per-case results; 0/1/2 are the task's stdin/stdout/stderr
CHILD_SETUP_FAILED = 125  # exit code of a child whose isolation could not be applied
MAX_MSG = 1000  # characters of an exception message that are framed back


# ---- wire values: Python values <-> plain JSON with "$tag" objects (shared with sandbox.compare) ----


def encode(v, _depth=0):
    """Frame a return value as JSON data. Exact types only: subclasses (and anything else) become
    {"$object": type name, "repr": ...}, which the harness never treats as equal to anything."""
    t = type(v)
    if _depth > 100:
        raise ValueError("value nested deeper than 100 levels")
    if v is None or t is bool or t is int or t is str:
        return v
    if t is float:
        return v if v == v and v not in (float("inf"), float("-inf")) else {"$float": repr(v)}
    if t is list:
        return [encode(x, _depth + 1) for x in v]
    if t is tuple:
        return {"$tuple": [encode(x, _depth + 1) for x in v]}
    if t is dict:
        if all(type(k) is str and not k.startswith("$") for k in v):
            return {k: encode(x, _depth + 1) for k, x in v.items()}
        return {"$dict": [[encode(k, _depth + 1), encode(x, _depth + 1)] for k, x in v.items()]}
    if t is set or t is frozenset:
        return {"$" + t.__name__: [encode(x, _depth + 1) for x in v]}
    if t is bytes:
        return {"$bytes": v.hex()}
    if t is complex:
        return {"$complex": [v.real, v.imag]}
    try:
        r = repr(v)
    except BaseException:
        r = "<unrepresentable>"
    return {"$object": t.__qualname__, "repr": str(r)[:200]}


def decode(v, opaque=None):
    """Inverse of encode. `opaque(type_name, repr)` builds $object values (harness side)."""
    if type(v) is list:
        return [decode(x, opaque) for x in v]
    if type(v) is not dict:
        return v
    if v and next(iter(v)).startswith("$"):
        tag, body = next(iter(v.items()))
        if tag == "$tuple":
            return tuple(decode(x, opaque) for x in body)
        if tag == "$set":
            return {decode(x, opaque) for x in body}
        if tag == "$frozenset":
            return frozenset(decode(x, opaque) for x in body)
        if tag == "$dict":
            return {decode(k, opaque): decode(x, opaque) for k, x in body}
        if tag == "$float":
            return float(body)
        if tag == "$bytes":
            return bytes.fromhex(body)
        if tag == "$complex":
            return complex(body[0], body[1])
        if tag == "$object":
            return opaque(body, v.get("repr", "")) if opaque else None
    return {k: decode(x, opaque) for k, x in v.items()}


# ---- framing ----


def read_frame(fd):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    body = _read_exact(fd, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


def write_frame(fd, obj):
    _write_all(fd, pack_frame(obj))


def pack_frame(obj):
    data = json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")
    return struct.pack(">I", len(data)) + data


def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def split_frames(buf):
    """Parse a byte buffer of frames; stops at the first malformed or partial one."""
    out, pos, ok = [], 0, True
    while pos + 4 <= len(buf):
        n = struct.unpack(">I", buf[pos : pos + 4])[0]
        if pos + 4 + n > len(buf):
            ok = False
            break
        try:
            out.append(json.loads(buf[pos + 4 : pos + 4 + n]))
        except ValueError:
            ok = False
            break
        pos += 4 + n
    return out, ok and pos == len(buf)


# ---- the server ----


class Server:
    def __init__(self, init, rfd, wfd):
        self.rfd, self.wfd = rfd, wfd
        self.workdirs = init["workdirs"]
        self.sandboxed = init["sandboxed"]  # True: we own a pid namespace and may kill all but pid 1
        self.libc = ctypes.CDLL(None, use_errno=True)
        bpf = bytes.fromhex(init["bpf"]) if init.get("bpf") else b""
        self.bpf_buf = ctypes.create_string_buffer(bpf, len(bpf))  # kept alive: the child uses it

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        self.fprog = SockFprog(len(bpf) // 8, ctypes.addressof(self.bpf_buf)) if bpf else None
        self.libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        self.libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of a task come back to us

    def serve(self):
        gc.freeze()  # forked tasks then never scan (= write to, = copy) the server's objects
        write_frame(self.wfd, {"ready": True, "pid": os.getpid(), "uid": os.getuid(), "python": sys.version})
        while True:
            req = read_frame(self.rfd)
            if req is None:
                return
            write_frame(self.wfd, self.execute(req))

    def execute(self, req):
        lim = req["limits"]
        stdin_fd = os.memfd_create("stdin")  # a file, not a pipe: no deadlock on large inputs
        _write_all(stdin_fd, req.get("stdin", "").encode("utf-8", "surrogateescape"))
        os.lseek(stdin_fd, 0, os.SEEK_SET)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = os.pipe()
        ok_r, ok_w = os.pipe()  # the child writes one byte here once isolated, before any task code
        gc.freeze()  # this request's objects too: a collection in the child must not write to them
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            self.child(req, (stdin_fd, out_w, err_w, res_w), ok_w)  # never returns
        with contextlib.suppress(OSError):  # also here: no window where killpg(pid) misses the child
            os.setpgid(pid, pid)
        for fd in (stdin_fd, out_w, err_w, res_w, ok_w):
            os.close(fd)
        caps = {out_r: lim["output_bytes"], err_r: lim["output_bytes"], res_r: lim["result_bytes"]}
        names = {out_r: "stdout", err_r: "stderr", res_r: "results"}
        bufs = {fd: bytearray() for fd in caps}
        over, timed_out = None, False
        pidfd = os.pidfd_open(pid)
        for fd in caps:
            os.set_blocking(fd, False)
        open_fds, exited = set(caps), False
        deadline = t0 + lim["wall_s"]
        while not exited and over is None:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([*open_fds, pidfd], [], [], left)
            exited = pidfd in ready
            # once the child exited, drain what is already buffered but never wait for EOF: a
            # grandchild may hold the pipes open, and it is about to be killed anyway
            for fd in list(open_fds) if exited else [f for f in ready if f != pidfd]:
                over = over or self._pump(fd, bufs, caps, open_fds, names)
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        _, status, ru = os.wait4(pid, 0)
        wall = time.monotonic() - t0
        escaped = self.sweep(pid)
        wiped = self.wipe()
        os.set_blocking(ok_r, False)
        try:
            setup_ok = os.read(ok_r, 1) == b"1"
        except BlockingIOError:
            setup_ok = False
        for fd in (*caps, pidfd, ok_r):
            os.close(fd)
        results, results_ok = split_frames(bytes(bufs[res_r]))
        return {
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "timed_out": timed_out,
            "over": over,
            "cpu_s": ru.ru_utime + ru.ru_stime,
            "maxrss_kb": ru.ru_maxrss,
            "wall_s": wall,
            "stdout": bufs[out_r].decode("utf-8", "replace"),
            "stderr": bufs[err_r].decode("utf-8", "replace"),
            "results": results,
            "results_ok": results_ok,
            "setup_ok": setup_ok,
            "escaped": escaped,
            "anomaly": None if escaped == 0 and wiped else f"escaped={escaped} wiped={wiped}",
        }

    @staticmethod
    def _pump(fd, bufs, caps, open_fds, names):
        while fd in open_fds:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return None
            if not chunk:
                open_fds.discard(fd)
                return None
            bufs[fd] += chunk
            if len(bufs[fd]) > caps[fd]:
                del bufs[fd][caps[fd] :]
                return names[fd]
        return None

    def sweep(self, pgid):
        """Kill and reap every process in our pid namespace except bwrap (1) and us. Returns how many
        lived outside the task's process group (0 unless something escaped the group kill), or -1 if
        processes would not die."""
        if not self.sandboxed:
            self._reap()
            return 0
        me, escaped = os.getpid(), set()
        self._reap()
        if not [p for p in _pids() if p != 1 and p != me]:  # the common case: nothing but bwrap and us
            return 0
        for attempt in range(400):  # <= ~4 s: a fork bomb's members take a moment to die
            self._reap()
            alive = {p: g for p, g in map(_state, _pids()) if p not in (1, me) and g is not None}
            escaped |= {p for p, g in alive.items() if g != pgid}
            if not alive:
                return len(escaped)
            for p in alive:
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
            time.sleep(0.0005 * min(attempt, 20))
        return -1

    @staticmethod
    def _reap():
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    return
            except ChildProcessError:
                return

    def wipe(self):
        ok = True
        for d in self.workdirs:
            for entry in os.listdir(d):
                ok = _remove(os.path.join(d, entry)) and ok
        return ok

    # ---- the child: isolate, then run the task; never returns ----

    def child(self, req, fds, ok_fd):
        code = CHILD_SETUP_FAILED
        try:
            os.setpgid(0, 0)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (*fds, ok_fd)]
            for target, fd in enumerate(high[:-1]):
                os.dup2(fd, target)
            os.chdir(self.workdirs[0])
            os.umask(0o077)
            lim = req["limits"]
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_CPU, tuple(lim["cpu"]))
            resource.setrlimit(resource.RLIMIT_AS, (lim["as_bytes"], lim["as_bytes"]))
            resource.setrlimit(resource.RLIMIT_FSIZE, (lim["fsize_bytes"], lim["fsize_bytes"]))
            resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))
            resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
            if self.fprog is not None:
                if self.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
                if self.libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self.fprog), 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP failed")
            os.write(high[-1], b"1")
            os.closerange(RESULT_FD + 1, 1 << 20)  # the server's protocol pipes, pidfds, the ok pipe
            code = 0
        except BaseException:
            os.write(2, ("sandbox: child setup failed: " + traceback.format_exc()).encode())
            os._exit(code)
        try:
            code = run_task(req)
        except BaseException:
            code = 1
        finally:
            os._exit(code)


def _pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _state(pid):
    """(pid, process group) of a live process; group None if it is a zombie or gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # state ppid pgrp ...
    except OSError:
        return pid, None
    return pid, None if fields[0] in (b"Z", b"X") else int(fields[2])


def _remove(path):
    for _ in range(2):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)
                for entry in os.listdir(path):
                    _remove(os.path.join(path, entry))
                os.rmdir(path)
            else:
                os.unlink(path)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            continue
    return False


# ---- the task, inside the isolated child. References are taken before user code can patch them. ----


def run_task(req, _write=os.write, _pack=pack_frame, _encode=encode, _decode=decode, _time=time.perf_counter):
    """Run the program, then its cases; frame results on RESULT_FD. Returns the exit code."""
    sys.stdin = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
    budget = [req["limits"]["result_bytes"] - 64]  # bytes of result frames left

    def emit(obj):
        data = _pack(obj)
        if len(data) > budget[0]:
            data = _pack({"i": obj.get("i"), "ole": True})
        budget[0] -= len(data)
        view = memoryview(data)
        while view:
            view = view[_write(RESULT_FD, view) :]

    def failure(e):
        return {"exc": type(e).__name__, "msg": str(e)[:MAX_MSG]}

    mode, exit_code, run_cases = req["mode"], 0, req["mode"] != "stdio"
    module = types.ModuleType("__main__" if mode == "stdio" else "__solution__")
    module.__builtins__ = builtins
    sys.modules[module.__name__] = module
    try:
        exec(compile(req["code"], "<solution>", "exec"), module.__dict__)
    except SystemExit as e:  # sys.exit() before the tests: the cases get no result
        exit_code, run_cases = _exit_code(e.code), False
        emit({"load": "exit", "exit": exit_code})
    except BaseException as e:
        traceback.print_exc()
        exit_code, run_cases = 1, False
        emit({"load": "exc", **failure(e)})
    fn = module.__dict__.get(req.get("entry") or "")
    if run_cases and mode == "call" and not callable(fn):
        run_cases = False
        emit({"load": "exc", "exc": "NameError", "msg": f"entry point {req['entry']!r} is not defined"})
    for i, case in enumerate(req.get("cases", ()) if run_cases else ()):
        t0 = _time()
        try:
            if mode == "call":
                args, kwargs = _decode(case.get("args", [])), _decode(case.get("kwargs", {}))
                r = {"i": i, "v": _encode(fn(*args, **kwargs))}
            else:
                exec(compile(case["code"], f"<test {i}>", "exec"), module.__dict__)
                r = {"i": i, "ok": True}
        except BaseException as e:
            r = {"i": i, **failure(e)}
        r["t"] = _time() - t0
        emit(r)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    emit({"done": True})
    return exit_code


def _exit_code(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def main():
    rfd, wfd = os.dup(0), os.dup(1)  # the protocol moves off 0/1 so tasks can have them
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    init = read_frame(rfd)
    if init is None:
        return
    Server(init, rfd, wfd).serve()


if __name__ == "__main__":
    main()
