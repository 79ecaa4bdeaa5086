"""Ray wrappers. Ray is imported only inside functions: the sandbox itself never needs it.

# Ray Data: one Sandbox per actor, built inside the actor
ds.map_batches(SandboxActor, fn_constructor_kwargs={"limits": {"wall_s": 4}}, concurrency=2, batch_size=64)

# plain Ray: a pool of actors
pool = actor_pool(num_actors=2, limits={"wall_s": 4})
verdicts = run_jobs(pool, jobs)          # list of Verdict dicts, input order
"""

from __future__ import annotations

from typing import Any

from sandbox.harness import Sandbox
from sandbox.jobs import Job
from sandbox.limits import Limits


def _limits(limits: Limits | dict | None) -> Limits | None:
    return Limits(**limits) if isinstance(limits, dict) else limits


class SandboxActor:
    """A callable class that owns a Sandbox. Usable as a Ray Data map_batches UDF (batch of columns in,
    same batch with a `verdict` column out), as a `ray.remote` actor (`run`), or directly in tests."""

    def __init__(
        self,
        limits: Limits | dict | None = None,
        workers: int = 1,
        allow_unsafe: bool = False,
        job_column: str = "job",
        verdict_column: str = "verdict",
        retries: int = 2,
    ):
        self.sandbox = Sandbox(_limits(limits), workers=workers, allow_unsafe=allow_unsafe, retries=retries)
        self.job_column, self.verdict_column = job_column, verdict_column

    def run(self, jobs: list[Job | dict]) -> list[dict]:
        """Jobs (objects or dicts as Job.from_dict reads them) -> Verdict dicts, in input order."""
        return [
            v.to_dict()
            for v in self.sandbox.run([j if isinstance(j, Job) else Job.from_dict(j) for j in jobs])
        ]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = dict(batch)
        out[self.verdict_column] = self.run([_plain(j) for j in batch[self.job_column]])
        return out

    def close(self) -> None:
        self.sandbox.close()


def _plain(x: Any) -> Any:
    """Ray Data hands nested values back as numpy arrays; Job.from_dict wants lists and dicts."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if hasattr(x, "tolist"):
        return _plain(x.tolist())
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def actor_pool(
    num_actors: int = 1, limits: Limits | dict | None = None, workers_per_actor: int = 1, **actor_options
):
    """A ray.util.ActorPool of SandboxActors; each reserves `workers_per_actor` CPUs by default."""
    import ray
    from ray.util import ActorPool

    options = {"num_cpus": workers_per_actor, **actor_options}
    remote_cls = ray.remote(**options)(SandboxActor)
    return ActorPool([remote_cls.remote(limits, workers_per_actor) for _ in range(num_actors)])


def run_jobs(pool, jobs: list[Job | dict], chunk_size: int = 32) -> list[dict]:
    """Spread jobs over the pool in chunks; Verdict dicts in input order."""
    chunks = [jobs[i : i + chunk_size] for i in range(0, len(jobs), chunk_size)]
    return [v for out in pool.map(lambda actor, chunk: actor.run.remote(chunk), chunks) for v in out]
