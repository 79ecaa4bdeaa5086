"""Turn fork-server responses into a Verdict. Runs in the harness: expected values live only here."""

from __future__ import annotations

import signal

from sandbox.compare import decode, stdout_matches, strict_equal
from sandbox.jobs import MISSING, Job
from sandbox.limits import Limits
from sandbox.verdicts import RESOURCE_ORDER, CaseResult, Status, Verdict

MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "out of memory")


def resource_status(resp: dict, limits: Limits) -> Status | None:
    """TLE / MLE / OLE for one execution, or None if it stayed within its limits."""
    if resp["over"]:
        return Status.OLE
    cpu_soft = limits.cpu_soft_hard()[0]
    sig = resp["signal"]
    if (
        resp["timed_out"]
        or sig == signal.SIGXCPU
        or (sig == signal.SIGKILL and resp["cpu_s"] >= cpu_soft - 0.05)
    ):
        return Status.TLE
    load = _load(resp)
    if load.get("exc") == "MemoryError":
        return Status.MLE
    if (sig or resp["exit"]) and any(m in resp["stderr"][-2000:] for m in MEMORY_MARKERS):
        return Status.MLE
    return None


def _load(resp: dict) -> dict:
    return next((r for r in resp["results"] if isinstance(r, dict) and "load" in r), {})


def _by_case(resp: dict) -> dict[int, dict]:
    return {r["i"]: r for r in resp["results"] if isinstance(r, dict) and type(r.get("i")) is int}


def _exc_text(r: dict) -> str:
    return f"{r.get('exc')}: {r.get('msg', '')}"


def _missing_case(st: Status | None, load: dict) -> CaseResult:
    """A case with no result: the limit that stopped the run, the load error, or an early exit."""
    if st is not None:
        return CaseResult(st, error=f"no result: the run stopped at {st.value}")
    if load.get("load") == "exc":
        return CaseResult(Status.ERROR, error="program failed to load: " + _exc_text(load))
    return CaseResult(Status.FAIL, error="no result: the program exited before this case ran")


def judge_call(job: Job, resp: dict, limits: Limits) -> list[CaseResult]:
    st, load, got = resource_status(resp, limits), _load(resp), _by_case(resp)
    cases = []
    for i, case in enumerate(job.tests):
        r = got.get(i)
        if r is None:
            cases.append(_missing_case(st, load))
        elif r.get("ole"):
            cases.append(CaseResult(Status.OLE, error="return value over result_bytes"))
        elif "exc" in r:
            status = Status.MLE if r["exc"] == "MemoryError" else Status.ERROR
            cases.append(CaseResult(status, error=_exc_text(r), time_s=r.get("t")))
        else:
            actual = decode(r.get("v"))
            ok = strict_equal(actual, case.expected, job.float_tol)
            cases.append(CaseResult(Status.PASS if ok else Status.FAIL, actual=actual, time_s=r.get("t")))
    return cases


def judge_assert(job: Job, resp: dict, limits: Limits) -> list[CaseResult]:
    st, load, got = resource_status(resp, limits), _load(resp), _by_case(resp)
    cases = []
    for i in range(len(job.tests)):
        r = got.get(i)
        if r is None:
            cases.append(_missing_case(st, load))
        elif "exc" not in r:
            cases.append(CaseResult(Status.PASS, time_s=r.get("t")))
        else:
            failed = r["exc"] in ("AssertionError", "SystemExit")
            status = Status.MLE if r["exc"] == "MemoryError" else Status.FAIL if failed else Status.ERROR
            cases.append(CaseResult(status, error=_exc_text(r), time_s=r.get("t")))
    return cases


def judge_stdio_case(job: Job, expected: str, resp: dict, limits: Limits) -> CaseResult:
    st, load = resource_status(resp, limits), _load(resp)
    if st is not None:
        return CaseResult(
            st, actual=resp["stdout"], error=f"run stopped at {st.value}", time_s=resp["wall_s"]
        )
    if load.get("load") == "exc" or resp["exit"] or resp["signal"]:
        why = _exc_text(load) if load.get("load") == "exc" else f"exit={resp['exit']} signal={resp['signal']}"
        return CaseResult(Status.ERROR, actual=resp["stdout"], error=why, time_s=resp["wall_s"])
    ok = expected is MISSING or stdout_matches(resp["stdout"], expected, job.whitespace)
    return CaseResult(Status.PASS if ok else Status.FAIL, actual=resp["stdout"], time_s=resp["wall_s"])


def overall(cases: list[CaseResult], resp: dict, limits: Limits) -> tuple[Status, str]:
    """Job status: PASS if every case passed; else the first resource limit hit; else ERROR if any case
    raised; else FAIL. A job without cases passes if its program ran cleanly."""
    statuses = [c.status for c in cases]
    if not cases:
        st = resource_status(resp, limits)
        if st is not None:
            return st, f"run stopped at {st.value}"
        if _load(resp).get("load") == "exc" or resp["exit"] or resp["signal"]:
            return Status.ERROR, _exc_text(_load(resp)) if _load(resp) else f"exit={resp['exit']}"
        return Status.PASS, "ran cleanly (no test cases)"
    if all(s is Status.PASS for s in statuses):
        return Status.PASS, f"{len(cases)}/{len(cases)} cases passed"
    first_bad = next(c for c in cases if c.status is not Status.PASS)
    summary = f"{statuses.count(Status.PASS)}/{len(cases)} cases passed; first failure: {first_bad.error or first_bad.status.value}"
    for s in RESOURCE_ORDER:
        if s in statuses:
            return s, summary
    return (Status.ERROR if Status.ERROR in statuses else Status.FAIL), summary


def channel_problem(job: Job, resp: dict) -> str | None:
    """Why one execution's results cannot be taken as the runner's word, or None.

    The fork-server has already checked that every frame is authentic (see forkserver.install_guard);
    here the sequence is checked against the job: case results once each, in order, none beyond the
    job's cases, the guard's end marker last with the same count, nothing denied, and the process's
    exit status equal to the one the marker states."""
    if resp.get("channel"):
        return resp["channel"]
    records = resp["results"]
    cases = [r["i"] for r in records if "i" in r]
    expected = len(job.tests) if job.kind != "stdio" else 0
    if cases != list(range(len(cases))) or len(cases) > expected:
        return f"case results {cases[:10]} are not cases 0..{expected - 1} once each, in order"
    if sum("load" in r for r in records) > 1 or (cases and any("load" in r for r in records)):
        return "a load result next to case results"
    ends = [k for k, r in enumerate(records) if "end" in r]
    if not ends:
        return None
    end = records[ends[0]]
    if ends != [len(records) - 1] or end["cases"] != len(cases):
        return "results after the end marker, or a count that does not match it"
    if end["denied"]:
        return f"the program tried {end['denied']} operation(s) the sandbox denies (introspection, tracing, ctypes, forged results)"
    if resp["signal"] is not None or resp["exit"] != end["exit"]:
        return f"the process ended (exit={resp['exit']} signal={resp['signal']}) unlike the runner's end marker (exit={end['exit']})"
    return None


def judge(job: Job, responses: list[dict], limits: Limits, flags: list[str]) -> Verdict:
    if job.kind == "stdio":
        cases = [
            judge_stdio_case(job, c.expected, r, limits) for c, r in zip(job.tests, responses, strict=False)
        ]
    elif job.kind == "call":
        cases = judge_call(job, responses[0], limits)
    else:
        cases = judge_assert(job, responses[0], limits)
    status, detail = overall(cases, responses[0], limits)
    problem = next(filter(None, (channel_problem(job, r) for r in responses)), None)
    ended = any("end" in r for r in responses[0]["results"])
    if problem is None and status is Status.PASS and job.kind != "stdio" and not ended:
        problem = "the runner did not reach its end marker"
    if problem is not None:  # whatever the cases say, they are not the runner's word
        status, detail = Status.SUSPICIOUS, f"results channel: {problem}"
        for c in cases:
            if c.status is Status.PASS:
                c.status = Status.SUSPICIOUS
    elif job.kind == "assert" and status is Status.PASS and flags:
        status, detail = Status.SUSPICIOUS, "assert-style tests passed, but: " + "; ".join(flags)
        for c in cases:
            c.status = Status.SUSPICIOUS
    return Verdict(
        status=status,
        cases=cases,
        stdout=responses[0]["stdout"],
        stderr=responses[0]["stderr"],
        detail=detail,
        flags=list(flags),
        time_s=sum(r["wall_s"] for r in responses),
        job_id=job.id,
    )
