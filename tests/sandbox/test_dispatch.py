"""Control flow of the per-worker dispatcher, against a scripted worker (no sandbox)."""

from collections import deque

import pytest

from sandbox.dispatch import DEPTH, PIPELINE_MAX_BYTES, Dispatcher, JobRun
from sandbox.harness import InfraError
from sandbox.limits import Limits


class ScriptedWorker:
    """A fork-server stand-in: answers each frame with {"frame", "server"} in order. `fail` maps a frame
    to how many times its execution kills the server; `anomaly` frames report an anomaly once."""

    def __init__(self, fail=None, anomaly=()):
        self.fail, self.anomaly = dict(fail or {}), set(anomaly)
        self.server, self.alive, self.executions = 0, False, 0
        self.pending: deque[bytes] = deque()
        self.max_inflight = 0
        self.per_server: list[int] = []

    def send(self, frame):
        if not self.alive:
            self.alive, self.server, self.executions = True, self.server + 1, 0
            self.per_server.append(0)
        self.executions += 1
        self.per_server[-1] += 1
        self.pending.append(frame)
        self.max_inflight = max(self.max_inflight, len(self.pending))

    def receive(self, wall_s):
        frame = self.pending.popleft()
        if self.fail.get(frame, 0) > 0:
            self.fail[frame] -= 1
            self.close()
            raise InfraError("fork-server died")
        resp = {"frame": frame, "server": self.server}
        if frame in self.anomaly:
            self.anomaly.discard(frame)
            resp["anomaly"] = "escaped=1 wiped=True"
        return resp

    def close(self):
        self.alive = False
        self.pending.clear()


def runs(*frames_per_job):
    return [JobRun(i, None, Limits(), [], list(frames)) for i, frames in enumerate(frames_per_job)]


def dispatch(worker, jobs, retries=2, recycle_every=1000, ahead_ok=True):
    todo, finished = deque(jobs), []

    def pull(ahead):
        if ahead and not ahead_ok:
            return None
        return todo.popleft() if todo else None

    Dispatcher(worker, retries, recycle_every).run(pull, finished.append)
    return finished


def answers(run):
    return [run.responses[k]["frame"] for k in range(len(run.frames))]


def test_every_frame_answered_in_order_with_two_in_flight():
    jobs = runs([b"a"], [b"b1", b"b2", b"b3"], [b"c"])
    w = ScriptedWorker()
    finished = dispatch(w, jobs)
    assert [r.index for r in finished] == [0, 1, 2]
    assert [answers(r) for r in jobs] == [[b"a"], [b"b1", b"b2", b"b3"], [b"c"]]
    assert w.max_inflight == DEPTH and all(r.failures == 0 for r in jobs)


def test_a_failure_counts_against_the_executing_job_only_and_resends_what_was_in_flight():
    jobs = runs([b"a"], [b"b"], [b"c"])
    w = ScriptedWorker(fail={b"b": 1})
    dispatch(w, jobs)
    assert [r.failures for r in jobs] == [0, 1, 0]
    assert [answers(r) for r in jobs] == [[b"a"], [b"b"], [b"c"]]
    assert jobs[1].responses[0]["server"] == 2 and jobs[2].responses[0]["server"] == 2


def test_a_job_that_keeps_killing_the_server_ends_with_an_error_and_the_rest_go_on():
    jobs = runs([b"a"], [b"boom"], [b"c"])
    w = ScriptedWorker(fail={b"boom": 99})
    finished = dispatch(w, jobs, retries=2)
    assert jobs[1].failures == 3 and isinstance(jobs[1].error, InfraError) and not jobs[1].responses
    assert answers(jobs[2]) == [b"c"] and jobs[2].failures == 0
    assert sorted(r.index for r in finished) == [0, 1, 2]  # each finished exactly once


def test_an_anomaly_restarts_the_server_and_resends_the_request_behind_it():
    jobs = runs([b"a"], [b"b"])
    w = ScriptedWorker(anomaly={b"a"})
    dispatch(w, jobs)
    assert jobs[0].responses[0]["server"] == 1  # the anomalous answer itself is kept
    assert jobs[1].responses[0]["server"] == 2  # b had been sent to the old server: sent again
    assert w.per_server == [2, 1]


def test_large_requests_are_not_queued_behind_a_running_one():
    big = b"x" * (PIPELINE_MAX_BYTES + 1)
    jobs = runs([b"a"], [big], [b"c"])
    w = ScriptedWorker()
    seen = []
    send = w.send
    w.send = lambda frame: (seen.append((frame[:1], len(w.pending))), send(frame))
    dispatch(w, jobs)
    assert (b"x", 0) in seen  # the big one went out with nothing in flight
    assert [answers(r) for r in jobs] == [[b"a"], [big], [b"c"]]


def test_recycle_every_bounds_executions_per_server():
    jobs = runs(*([bytes([i])] for i in range(7)))
    w = ScriptedWorker()
    dispatch(w, jobs, recycle_every=3)
    assert w.per_server == [3, 3, 1]
    assert all(len(r.responses) == 1 for r in jobs)


@pytest.mark.parametrize("ahead_ok", [True, False])
def test_not_now_is_not_the_end(ahead_ok):
    jobs = runs([b"a"], [b"b"], [b"c"])
    w = ScriptedWorker()
    dispatch(w, jobs, ahead_ok=ahead_ok)
    assert all(len(r.responses) == 1 for r in jobs)
    assert w.max_inflight == (DEPTH if ahead_ok else 1)
