"""README "CPU threads": inside a Ray actor the transformers engine uses as many torch threads as
the CPUs Ray assigned to it (resources.num_cpus). The session's real 2-CPU Ray, one actor after the
other; the real embedded model, built through make_engine."""

import pytest

pytestmark = pytest.mark.slow


class EngineHolder:
    def __init__(self):
        from alignfactory.llm import make_engine
        from alignfactory.llm.config import ModelConfig

        self.engine = make_engine(ModelConfig(backend="transformers"), batch_size=2)

    def threads(self) -> tuple[int, int, float]:
        import ray
        import torch

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        return self.engine.threads, torch.get_num_threads(), cpus


def test_engine_threads_equal_the_cpus_ray_assigned(local_ray):
    holder = local_ray.remote(EngineHolder)
    for cpus in (1, 2):
        actor = holder.options(num_cpus=cpus).remote()
        assert local_ray.get(actor.threads.remote()) == (cpus, cpus, float(cpus))
        local_ray.kill(actor)
