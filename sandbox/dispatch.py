"""Jobs through one worker, the next request already waiting in the fork-server's pipe.

The fork-server runs one execution at a time. With a second request in flight it starts the next
execution the moment it has answered the last, while the harness judges that answer: the harness's
work and one round trip leave the critical path.

Infrastructure failures (the fork-server died, did not answer, could not isolate a task) lose what was
in flight: those requests are sent again to a fresh fork-server. Only the job that was executing counts
the failure; after `retries` failures it ends as SANDBOX_ERROR, never FAIL. An anomaly the fork-server
reports (a process outlived the group kill, the workdir could not be wiped) or `recycle_every`
executions restart it too; a request sent after the anomalous one is sent again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandbox.harness import Worker
    from sandbox.jobs import Job
    from sandbox.limits import Limits

DEPTH = 2  # requests in flight per worker: one executing, one waiting in the pipe
PIPELINE_MAX_BYTES = 16 << 10  # larger requests wait for an empty pipe: both sides never block writing


@dataclass(eq=False)
class JobRun:
    """One job on its way through a worker: its requests (packed frames) and the answers so far."""

    index: int  # position in the caller's list
    job: Job
    limits: Limits
    flags: list[str]
    frames: list[bytes]  # one request frame per execution
    responses: dict[int, dict] = field(default_factory=dict)
    failures: int = 0  # infrastructure failures while this job was executing
    error: Exception | None = None
    done: bool = False


class Dispatcher:
    def __init__(self, worker: Worker, retries: int, recycle_every: int):
        self.worker, self.retries, self.recycle_every = worker, retries, recycle_every
        self.unsent: deque[tuple[JobRun, int]] = deque()  # (run, execution index)
        self.inflight: deque[tuple[JobRun, int]] = deque()
        self.finish: Callable[[JobRun], None] = lambda run: None
        self.pull: Callable[[bool], JobRun | None] = lambda ahead: None
        self.exhausted = False

    def run(self, pull: Callable[[bool], JobRun | None], finish: Callable[[JobRun], None]) -> None:
        """Pull runs until pull(False) returns None; pull(True) asks for one to queue behind what is in
        flight (None: not now, e.g. an idle worker should take it). finish(run) once per run, when all
        its answers are in or it failed `retries` + 1 times (run.error set)."""
        self.finish, self.pull, self.exhausted = finish, pull, False
        while True:
            self._fill()
            if self.inflight:
                self._receive()
            elif self.exhausted and not self.unsent:
                return

    def _fill(self) -> None:
        """Send until DEPTH requests are in flight, nothing is left, or a send failed."""
        while len(self.inflight) < DEPTH:
            if not self.unsent:
                run = None if self.exhausted else self.pull(bool(self.inflight))
                if run is None:
                    self.exhausted = not self.inflight
                    return
                self.unsent.extend((run, k) for k in range(len(run.frames)))
            run, k = self.unsent[0]
            if run.done:
                self.unsent.popleft()
                continue
            recycle = self.worker.executions >= self.recycle_every
            if self.inflight and (recycle or len(run.frames[k]) > PIPELINE_MAX_BYTES):
                return  # send it once the pipe is empty / the fork-server has been recycled
            if recycle:
                self.worker.close()  # a fresh one starts at the next send
            self.unsent.popleft()
            self.inflight.append((run, k))
            if not self._send(run.frames[k]):
                return

    def _send(self, frame: bytes) -> bool:
        from sandbox.harness import InfraError

        try:
            self.worker.send(frame)
            return True
        except InfraError as e:
            self._lost(e)
            return False

    def _receive(self) -> None:
        from sandbox.harness import InfraError

        run, k = self.inflight[0]
        try:
            resp = self.worker.receive(run.limits.wall_s)
        except InfraError as e:
            self._lost(e)
            return
        self.inflight.popleft()
        if resp.get("anomaly"):
            self._restart()
        if run.done:
            return
        run.responses[k] = resp
        if len(run.responses) == len(run.frames):
            run.done = True
            self.finish(run)

    def _restart(self) -> None:
        """Close the fork-server; what was in flight is sent again to the next one."""
        lost, self.inflight = self.inflight, deque()
        self.worker.close()
        self.unsent.extendleft(reversed(lost))

    def _lost(self, error: Exception) -> None:
        """The fork-server failed while the oldest request in flight was executing: that job counts a
        failure, every request in flight is sent again."""
        culprit = self.inflight[0][0]
        culprit.failures += 1
        culprit.error = error
        if culprit.failures > self.retries:
            culprit.done = True
            self.finish(culprit)
        self._restart()
