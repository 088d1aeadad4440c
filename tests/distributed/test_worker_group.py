"""Worker groups on a simulated 2-node cluster with fake GPUs: placement, dispatch, failures, shutdown."""
import os
import sys
import time

import pytest
import ray
import ray.cloudpickle
import torch

from rlhf.config.placement import NodeSpec, PlacementConfig, RolePlacement
from rlhf.data.batch import RolloutBatch
from rlhf.distributed.placement import plan_placement
from rlhf.distributed.worker_group import RoleGroups, WorkerError, WorkerTimeoutError
from rlhf.workers.base import BaseWorker, Dispatch, dispatch

# Ray workers cannot import this test module: ship its classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class EchoWorker(BaseWorker):
    @dispatch(Dispatch.SPLIT)
    def tag(self, batch: RolloutBatch) -> RolloutBatch:
        batch.scores_B = torch.full((len(batch),), float(self.rank))
        return batch

    @dispatch(Dispatch.SPLIT)
    def double(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    @dispatch(Dispatch.RANK0)
    def all_reduce_rank(self) -> float:
        """Prove the rendezvous works: sum of ranks through a gloo all-reduce."""
        import torch.distributed as dist

        from rlhf.engine import init_distributed

        init_distributed()
        value = torch.tensor([float(self.rank)])
        dist.all_reduce(value)
        return float(value.item())

    def listening_addresses(self) -> list[str]:
        """IP addresses this worker process listens on (Ray's own servers, gloo, any store)."""
        import psutil

        return sorted({c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
                       if c.status == psutil.CONN_LISTEN})

    def master(self):
        return os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def die_on_rank(self, rank: int, others_sleep: float) -> None:
        if self.rank == rank:
            os._exit(1)
        time.sleep(others_sleep)

    def fail(self) -> None:
        raise ValueError("bad input in fail()")


ROLES = ("actor", "critic", "reward", "reference")
TWO_NODES = [NodeSpec(gpus=4, cpus=4), NodeSpec(gpus=4, cpus=4)]


def make_groups(cfg, roles, **kw):
    plan = plan_placement(cfg, roles, cluster=TWO_NODES)
    return RoleGroups.create(plan, {r: EchoWorker for r in roles}, call_timeout_s=300, **kw)  # real work: room on a busy CI


def test_roles_land_on_the_devices_the_plan_says(ray_cluster):
    cfg = PlacementConfig(
        actor=RolePlacement(num_nodes=2, devices_per_node=2, cpus_per_rank=0.1),
        critic=RolePlacement(devices_per_node=2, cpus_per_rank=0.1),
        reward=RolePlacement(devices_per_node=2, colocate="frozen", cpus_per_rank=0.1),
        reference=RolePlacement(devices_per_node=2, colocate="frozen", cpus_per_rank=0.1),
    )
    groups = make_groups(cfg, ROLES)
    try:
        devices = {}
        for role in ROLES:
            infos = groups[role].ping()
            assert [i["rank"] for i in infos] == list(range(len(infos)))
            devices[role] = [(i["node_id"], tuple(i["gpu_ids"])) for i in infos]
            assert all(len(i["gpu_ids"]) == 1 for i in infos)
        assert len({node for node, _ in devices["actor"]}) == 2  # the actor spans both nodes
        # Non-colocated roles never share a device; colocated ones share exactly.
        for a in ROLES:
            for b in ROLES:
                if a < b and {a, b} != {"reward", "reference"}:
                    assert not set(devices[a]) & set(devices[b]), (a, b)
        assert devices["reward"] == devices["reference"]
        assert len({d for role in ROLES for d in devices[role]}) == 8  # all 8 fake GPUs in use
    finally:
        groups.shutdown()


def test_split_dispatch_preserves_order_and_rendezvous_is_on_loopback(ray_cluster):
    cfg = PlacementConfig(use_gpu=False, actor=RolePlacement(devices_per_node=3, cpus_per_rank=0.1))
    groups = make_groups(cfg, ["actor"])
    try:
        actor = groups["actor"]
        batch = RolloutBatch(input_ids_BS=torch.arange(7 * 4).reshape(7, 4),
                             attention_mask_BS=torch.ones(7, 4, dtype=torch.long), mask_BT=torch.ones(7, 2))
        tagged = actor.call("tag", batch)
        assert torch.equal(tagged.input_ids_BS, batch.input_ids_BS)
        assert tagged.scores_B.tolist() == [0, 0, 0, 1, 1, 2, 2]
        assert torch.equal(actor.call("double", torch.arange(5)), 2 * torch.arange(5))
        assert actor.call("all_reduce_rank") == 0 + 1 + 2
        assert {addr for addr, _ in actor.call("master")} == {"127.0.0.1"}
        # After the process group is up, no rank listens beyond loopback (no wildcard TCP store).
        for addresses in actor.call("listening_addresses"):
            assert set(addresses) <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, addresses
    finally:
        groups.shutdown()


def test_exception_in_a_worker_names_role_rank_and_method(ray_cluster):
    cfg = PlacementConfig(use_gpu=False, critic=RolePlacement(devices_per_node=2, cpus_per_rank=0.1))
    groups = make_groups(cfg, ["critic"])
    try:
        # Both ranks raise; the group reports whichever failure it sees first.
        with pytest.raises(WorkerError, match=r"worker 'critic' rank [01] failed in 'fail'.*bad input"):
            groups["critic"].call("fail")
    finally:
        groups.shutdown()


def test_killed_worker_is_reported_before_the_timeout(ray_cluster):
    cfg = PlacementConfig(use_gpu=False, actor=RolePlacement(devices_per_node=2, cpus_per_rank=0.1))
    groups = make_groups(cfg, ["actor"])
    try:
        start = time.monotonic()
        with pytest.raises(WorkerError) as err:
            # rank 0 "hangs" (as in a collective with the dead rank); the death must still surface.
            # Generous numbers for a loaded CI machine: the death must surface well before the call's
            # 240 s timeout (it takes ~1 s here), not race a tight wall-clock bound.
            groups["actor"].call("die_on_rank", 1, 600.0, timeout_s=240)
        assert (err.value.role, err.value.rank, err.value.method) == ("actor", 1, "die_on_rank")
        assert "died" in str(err.value)
        assert time.monotonic() - start < 120
    finally:
        groups.shutdown()


def test_hung_worker_times_out_with_its_name(ray_cluster):
    cfg = PlacementConfig(use_gpu=False, reward=RolePlacement(cpus_per_rank=0.1))
    groups = make_groups(cfg, ["reward"])
    try:
        start = time.monotonic()
        with pytest.raises(WorkerTimeoutError, match=r"'reward' rank 0 failed in 'sleep': no answer within 2 s"):
            groups["reward"].call("sleep", 60, timeout_s=2)
        assert time.monotonic() - start < 45  # the 2 s timeout, not the 60 s sleep, ended the call
    finally:
        groups.shutdown()


def wait_for_free_cpus(expected: float, timeout_s: float = 20.0) -> float:
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < expected - 1e-6 and time.monotonic() < deadline:
        time.sleep(0.2)
    return ray.available_resources().get("CPU", 0)


def test_shutdown_frees_actors_and_placement_groups(ray_cluster):
    total = ray.cluster_resources()["CPU"]
    assert wait_for_free_cpus(total) == pytest.approx(total)  # earlier tests' shutdowns have landed
    cfg = PlacementConfig(use_gpu=False, actor=RolePlacement(devices_per_node=2, cpus_per_rank=0.5))
    groups = make_groups(cfg, ["actor"])
    groups["actor"].ping()
    assert ray.available_resources().get("CPU", 0) == pytest.approx(total - 1.0)
    groups.shutdown()
    assert wait_for_free_cpus(total) == pytest.approx(total)
    assert not [pg for pg in ray.util.placement_group_table().values() if pg["state"] == "CREATED"]


def test_plan_ray_cannot_place_is_refused(ray_cluster):
    from rlhf.distributed.placement import PlanError, create_placement_groups

    cfg = PlacementConfig(actor=RolePlacement(devices_per_node=8))
    plan = plan_placement(cfg, ["actor"])  # no cluster description: only Ray can say no
    with pytest.raises(PlanError, match="could not place device group 'actor'"):
        create_placement_groups(plan, timeout_s=2)


def test_the_runs_thread_count_reaches_every_worker(ray_cluster, monkeypatch):
    """`torch_threads` (the pipeline exports it as THREADS_ENV) pins torch's threads in each actor;
    without it an actor keeps what Ray gave it."""
    from rlhf.workers.base import THREADS_ENV

    cfg = PlacementConfig(use_gpu=False, actor=RolePlacement(devices_per_node=2, cpus_per_rank=0.1))
    for threads in (3, None):
        if threads is None:
            monkeypatch.delenv(THREADS_ENV, raising=False)
        else:
            monkeypatch.setenv(THREADS_ENV, str(threads))
        groups = make_groups(cfg, ["actor"])
        try:
            counts = [info["torch_threads"] for info in groups["actor"].ping()]
        finally:
            groups.shutdown()
        assert counts == ([3, 3] if threads else [1, 1])  # Ray's default for a fractional CPU share: 1


@pytest.mark.parametrize("loopback", [True, False])
def test_single_host_ranks_bind_gloo_and_nccl_sockets_to_loopback(monkeypatch, loopback):
    """Issue 11 §5: on one host NCCL's bootstrap must not listen on the machine's external interface."""
    for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "RLHF_DIST_INIT_METHOD", "RANK", "WORLD_SIZE",
                 "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        # setenv first: delenv of an absent name records nothing, and set_master's values would then
        # outlive the test (every later rank process would meet in the same stale rendezvous file)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    worker = BaseWorker("actor", 0, 2)
    worker.set_master("127.0.0.1" if loopback else "10.0.0.5", 29500, loopback, "/tmp/rdzv" if loopback else None)
    expected = "lo" if loopback else None
    assert os.environ.get("GLOO_SOCKET_IFNAME") == expected and os.environ.get("NCCL_SOCKET_IFNAME") == expected
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")  # the user's own choice is kept
    worker.set_master("127.0.0.1", 29500, True, "/tmp/rdzv")
    assert os.environ["NCCL_SOCKET_IFNAME"] == "ib0"
