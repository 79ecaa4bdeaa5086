"""README "CPU threads": inside a Ray actor the transformers engine uses as many torch threads as
the CPUs Ray assigned to it (resources.num_cpus). Real Ray (4 logical CPUs declared, so a 2-CPU actor
fits beside a 1-CPU one on a 2-core machine), the real embedded model, built through make_engine."""

import os

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray4():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


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


def test_engine_threads_equal_the_cpus_ray_assigned(ray4):
    holder = ray4.remote(EngineHolder)
    one = holder.options(num_cpus=1).remote()
    two = holder.options(num_cpus=2).remote()
    assert ray4.get(one.threads.remote()) == (1, 1, 1.0)
    assert ray4.get(two.threads.remote()) == (2, 2, 2.0)
    for actor in (one, two):
        ray4.kill(actor)
