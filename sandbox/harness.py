"""The Sandbox: a pool of workers, each a warm fork-server inside its own bwrap sandbox and uid.

    with Sandbox(Limits(wall_s=2), workers=2) as sb:
        verdicts = sb.run([Job(code=..., kind="call", entry_point="f", tests=[Case(args=[1], expected=2)])])

Thread-safe and reusable: any number of threads may call run() at once; each job takes an idle
worker. Infrastructure failures (the fork-server died, did not answer, could not isolate a task)
restart the worker and retry the job; after `retries` retries the verdict is SANDBOX_ERROR.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from sandbox import forkserver, isolation, static_checks
from sandbox.compare import decode  # noqa: F401  (re-exported for callers judging their own values)
from sandbox.dispatch import Dispatcher, JobRun
from sandbox.jobs import Job
from sandbox.judge import judge
from sandbox.limits import Limits
from sandbox.verdicts import Status, Verdict

SERVER_SOURCE = Path(forkserver.__file__).read_bytes()
START_TIMEOUT_S = 20.0  # bwrap + interpreter start; generous for a loaded 2-core machine
IDLE_PROCESSES = 5  # a worker's uid between tasks: bwrap, bwrap (pid 1), monitor, zygote, next task (waiting)
GRACE_S = 10.0  # beyond a task's wall limit, how long the harness waits before declaring the server dead


class InfraError(Exception):
    """The sandbox infrastructure failed: never the candidate's fault."""


class Worker:
    """One worker slot: a uid lease and (lazily) a running fork-server."""

    def __init__(
        self,
        limits: Limits,
        found: dict | None,
        iso: isolation.Isolation,
        launcher: ThreadPoolExecutor,
        profile: bool = False,
    ):
        self.limits, self.found, self.iso = limits, found, iso
        # profile mode: each response's phase stamps (forkserver.STAMPS, ns), for the bench
        self.profiles: list[dict] | None = [] if profile else None
        self.launcher = launcher  # the thread every fork-server is started from: see start()
        self.lease = isolation.UidLease(iso) if found is not None and os.geteuid() == 0 else None
        self.proc: subprocess.Popen | None = None
        self.executions = 0  # since the last (re)start
        self._rbuf = bytearray()  # bytes read from the fork-server past the last frame
        self.starts = 0
        self._unsafe_dir: str | None = None

    @property
    def uid(self) -> int | None:
        return self.lease.uid if self.lease else None

    def start(self) -> None:
        self.starts += 1
        self.executions = 0
        self._rbuf = bytearray()
        errfile = tempfile.TemporaryFile()  # noqa: SIM115  (the fork-server's stderr; closed in close())
        if self.found is not None:  # isolated: setpriv + bwrap, source passed as a pipe (< 64 KiB)
            r, w = os.pipe()
            os.write(w, SERVER_SOURCE)
            os.close(w)
            argv = isolation.server_argv(self.found, self.uid, self.limits.tmp_mb, r)
            init = {"workdirs": ["/tmp", "/dev/shm"], "sandboxed": True, "bpf": self.found["bpf"].hex()}
            pass_fds = (r,)
        else:  # allow_unsafe: same fork-server, no namespaces, no uid change
            self._unsafe_dir = tempfile.mkdtemp(prefix="sandbox-unsafe-")
            argv = [sys.executable, "-I", "-S", "-B", forkserver.__file__]
            init = {"workdirs": [self._unsafe_dir], "sandboxed": False, "bpf": _bpf_or_empty().hex()}
            pass_fds = ()
        init["profile"] = self.profiles is not None
        try:
            # bwrap --die-with-parent is PR_SET_PDEATHSIG, which fires when the *thread* that forked
            # bwrap exits: start it from the Sandbox's long-lived launcher thread, never from a caller's
            self.proc = self.launcher.submit(
                subprocess.Popen,
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errfile,
                pass_fds=pass_fds,
                env={"PATH": "/usr/bin:/bin"},  # bwrap's own environ is readable at /proc/1/environ
                start_new_session=True,  # its own process group: killpg reaches setpriv/bwrap
            ).result()
        except OSError as e:
            raise InfraError(f"cannot launch the sandbox ({e}). {isolation.HINT}") from e
        finally:
            if pass_fds:
                os.close(pass_fds[0])
        self.proc.errfile = errfile  # type: ignore[attr-defined]
        try:
            self._send(init)
            ready = self._recv(time.monotonic() + START_TIMEOUT_S)
        except InfraError as e:
            self.close()
            raise InfraError(f"sandbox did not start: {e}. {isolation.HINT}") from None
        if self.uid is not None and ready.get("uid") != self.uid:
            self.close()
            raise InfraError(f"fork-server runs as uid {ready.get('uid')}, expected {self.uid}")

    def send(self, frame: bytes) -> None:
        """One request frame (see dispatch: at most two in flight). Starts the fork-server if needed."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.executions += 1
        try:
            self._send_bytes(frame)
        except InfraError:
            self.close()
            raise

    def receive(self, wall_s: float) -> dict:
        """The answer to the oldest request in flight."""
        try:
            resp = self._recv(time.monotonic() + wall_s + GRACE_S)
        except InfraError:
            self.close()
            raise
        if not resp.get("setup_ok"):
            self.close()
            raise InfraError("task isolation could not be applied: " + resp.get("stderr", "")[-500:])
        if self.profiles is not None:
            self.profiles.append({**resp.pop("profile"), "task_cpu_ns": int(resp["cpu_s"] * 1e9)})
        return resp

    def _send(self, obj: dict) -> None:
        self._send_bytes(forkserver.pack_frame(obj))

    def _send_bytes(self, frame: bytes) -> None:
        try:
            self.proc.stdin.write(frame)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as e:
            raise InfraError(f"fork-server gone ({e}); stderr: {self._stderr_tail()}") from None

    def _recv(self, deadline: float) -> dict:
        """One frame. Reads in large chunks: bytes past the frame (the next answer, when requests are
        pipelined) stay in self._rbuf for the next call."""
        fd, buf = self.proc.stdout.fileno(), self._rbuf
        self._read_more(fd, buf, 4, deadline)
        n = 4 + struct.unpack(">I", buf[:4])[0]
        self._read_more(fd, buf, n, deadline)
        frame = bytes(buf[4:n])
        del buf[:n]
        return json.loads(frame)

    def _read_more(self, fd: int, buf: bytearray, n: int, deadline: float) -> None:
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise InfraError("fork-server did not answer in time")
            chunk = os.read(fd, max(n - len(buf), 1 << 16))
            if not chunk:
                raise InfraError(f"fork-server exited; stderr: {self._stderr_tail()}")
            buf += chunk

    def _stderr_tail(self) -> str:
        try:
            f = self.proc.errfile  # type: ignore[union-attr]
            f.seek(0)
            return f.read()[-1000:].decode("utf-8", "replace").strip() or "(empty)"
        except Exception:
            return "(unreadable)"

    def close(self) -> None:
        """Stop the fork-server: close its stdin, then kill its process group (bwrap takes the sandbox
        down with it: --die-with-parent, pid namespace)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout=0.5)
        except Exception:
            pass
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.errfile.close()  # type: ignore[attr-defined]
        if self.uid is not None:  # the sandbox dies asynchronously (pid 1 gone -> namespace killed)
            deadline = time.monotonic() + 5.0
            while uid_processes(self.uid) and time.monotonic() < deadline:
                time.sleep(0.005)

    def release(self) -> None:
        self.close()
        if self.lease:
            self.lease.close()
        if self._unsafe_dir:
            import shutil

            shutil.rmtree(self._unsafe_dir, ignore_errors=True)


def uid_processes(uid: int) -> int:
    """Live (non-zombie) processes on this host owned by `uid`. A worker's uid is leased to it alone,
    so between tasks this is IDLE_PROCESSES (see settled_processes), 0 after close()."""
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}").st_uid == uid:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    n += f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    return n


def settled_processes(uid: int, timeout_s: float = 2.0) -> int:
    """uid_processes once a worker has settled after a response: the zygote forks the next task just
    after the response is sent. IDLE_PROCESSES then; more means something a task started survived."""
    deadline = time.monotonic() + timeout_s
    while (n := uid_processes(uid)) != IDLE_PROCESSES and time.monotonic() < deadline:
        time.sleep(0.002)
    return n


def _bpf_or_empty() -> bytes:
    try:
        from sandbox.seccomp_filter import build_bpf

        return build_bpf()
    except Exception:
        return b""


class Sandbox:
    def __init__(
        self,
        limits: Limits | None = None,
        workers: int = 1,
        allow_unsafe: bool = False,
        retries: int = 2,
        recycle_every: int = 2000,
        isolation_config: isolation.Isolation | None = None,
        profile: bool = False,
    ):
        """Fails closed: raises SandboxUnavailable (with the fix) unless isolation works here, or
        allow_unsafe=True. `retries`: extra attempts after SANDBOX_ERROR. `recycle_every`: executions
        per fork-server before a fresh one (also after any anomaly the fork-server reports). `profile`:
        the fork-servers time each phase of every execution (see forkserver.STAMPS; for the bench)."""
        self.limits = limits or Limits()
        self.retries, self.recycle_every = retries, recycle_every
        self.iso = isolation_config or isolation.Isolation()
        try:
            self.found = isolation.preflight(self.iso)
        except isolation.SandboxUnavailable:
            if not allow_unsafe:
                raise
            self.found = None
        self.isolated = self.found is not None
        self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-launcher")
        self._workers = [
            Worker(self.limits, self.found, self.iso, self._launcher, profile) for _ in range(workers)
        ]
        self._idle: queue.Queue[Worker] = queue.Queue()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox")
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._workers[0].start()  # prove isolation works now, not at the first job
        except InfraError as e:
            self.close()
            raise isolation.SandboxUnavailable(str(e)) from None
        for w in self._workers:
            self._idle.put(w)

    # ---- public API ----

    def run(self, jobs: list[Job]) -> list[Verdict]:
        """Verdicts in input order. Raises ValueError for malformed jobs (e.g. unsupported language)."""
        for job in jobs:
            job.validate()
        if self._closed:
            raise RuntimeError("Sandbox is closed")
        # min(workers, jobs) drainers, each holding one worker, pull jobs in order; the calling thread
        # is one of them, so a 1-worker Sandbox runs jobs with no thread hand-off at all
        verdicts: list[Verdict | None] = [None] * len(jobs)
        todo, lock = iter(enumerate(jobs)), threading.Lock()
        drainers = min(len(self._workers), len(jobs))
        taken = [0]

        def pull(ahead: bool) -> JobRun | None:
            with lock:
                if ahead and len(jobs) - taken[0] < drainers:
                    return None  # queueing it behind a running job would leave a worker idle
                item = next(todo, None)
                taken[0] += item is not None
            return None if item is None else self._prepare(*item)

        def finish(run: JobRun) -> None:
            verdicts[run.index] = self._verdict(run)

        def drain() -> None:
            worker = self._idle.get()
            try:
                Dispatcher(worker, self.retries, self.recycle_every).run(pull, finish)
            finally:
                self._idle.put(worker)

        helpers = [self._pool.submit(drain) for _ in range(drainers - 1)]
        drain()
        for h in helpers:
            h.result()
        return verdicts  # type: ignore[return-value]

    def run_one(self, job: Job) -> Verdict:
        return self.run([job])[0]

    def recycle(self) -> None:
        """Stop every idle fork-server; each restarts at its next job."""
        for _ in range(len(self._workers)):
            w = self._idle.get()
            w.close()
            self._idle.put(w)

    @property
    def profiles(self) -> list[dict]:
        """Profile mode: every execution's phase stamps so far, worker by worker, in order."""
        return [p for w in self._workers for p in w.profiles or ()]

    @property
    def uids(self) -> list[int | None]:
        return [w.uid for w in self._workers]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=True)
        for w in self._workers:
            w.release()
        self._launcher.shutdown(wait=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # ---- one job: what enters the sandbox, and the verdict from what came back ----

    def _prepare(self, index: int, job: Job) -> JobRun:
        limits = replace(job.limits, tmp_mb=self.limits.tmp_mb) if job.limits else self.limits
        frames = [forkserver.pack_frame(r) for r in _requests(job, limits)]
        return JobRun(index, job, limits, static_checks.flags(job.code), frames)

    def _verdict(self, run: JobRun) -> Verdict:
        if run.error is not None and len(run.responses) < len(run.frames):
            return Verdict(
                status=Status.SANDBOX_ERROR,
                detail=f"sandbox infrastructure failed {run.failures} times: {run.error}",
                flags=run.flags,
                attempts=run.failures,
                job_id=run.job.id,
            )
        verdict = judge(run.job, [run.responses[k] for k in range(len(run.frames))], run.limits, run.flags)
        verdict.attempts = run.failures + 1
        return verdict


def _requests(job: Job, limits: Limits) -> list[dict]:
    """What enters the sandbox: code, inputs, limits. Never the expected values."""
    base = {"mode": job.kind, "code": job.code, "entry": job.entry_point, "limits": limits.to_wire()}
    if job.probe:
        base["probe"] = True
    if job.kind == "stdio":
        return [{**base, "stdin": c.stdin} for c in job.tests] or [{**base, "stdin": ""}]
    if job.kind == "call":
        cases = [
            {"args": forkserver.encode(list(c.args)), "kwargs": forkserver.encode(dict(c.kwargs))}
            for c in job.tests
        ]
    else:
        cases = [{"code": c.code} for c in job.tests]
    return [{**base, "cases": cases}]
