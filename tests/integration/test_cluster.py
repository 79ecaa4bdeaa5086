"""Two Ray nodes on one machine (ray.cluster_utils.Cluster): the generate stage's shards land on both."""

import pytest

from alignfactory.run import Runner
from alignfactory.spec import load_spec
from tests.integration.conftest import REPO, SHORT_REPLIES, assert_each_input_once, input_lines, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # 2 logical CPUs per node: one generate actor (2 CPUs) fits per node, so a pool of 2 spans both.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_work_lands_on_both_nodes(two_nodes, tmp_path):
    import ray

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    rows = [{"instruction": f"Write one sentence about the number {i}."} for i in range(8)]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    sets = [
        f"input.path={path}",
        "shard_size=2",
        "sampling.max_tokens=12",
        SHORT_REPLIES,
        "stages.1.resources.concurrency=2",
        "stages.1.resources.num_cpus=2",
        "stages.2.resources.num_cpus=0.25",
        "stages.2.params.min_chars=1",
    ]
    spec = load_spec(REPO / "pipelines" / "sft_quick.yaml", sets, output=str(tmp_path / "run"))
    manifest = Runner(spec).run()
    generate = next(s for s in manifest["stages"] if s["name"] == "generate")
    assert len(generate["nodes"]) == 2  # shards were generated on both nodes
    assert generate["rows_out"] == 8
    assert_each_input_once(tmp_path / "run", input_lines(path))  # row by row, across both nodes
