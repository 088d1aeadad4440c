"""Placement planning (pure, no Ray): rank layout, colocation, and refusing plans that cannot fit."""
import pytest

from rlhf.config.placement import NodeSpec, PlacementConfig, RolePlacement
from rlhf.distributed.placement import PlanError, plan_placement

ROLES = ("actor", "critic", "reward", "reference")


def config(**roles):
    return PlacementConfig(**{name: RolePlacement(**kw) for name, kw in roles.items()})


def test_default_gives_each_role_its_own_device():
    plan = plan_placement(PlacementConfig(), ROLES, cluster=[NodeSpec(gpus=4, cpus=8)])
    assert [g.roles for g in plan.groups] == [(r,) for r in ROLES]
    assert all(s.num_gpus == 1.0 for s in plan.slots)
    assert "actor" in plan.describe()


def test_multi_node_role_ranks_are_numbered_node_major():
    cfg = config(actor=dict(num_nodes=2, devices_per_node=4))
    plan = plan_placement(cfg, ["actor"], cluster=[NodeSpec(gpus=4, cpus=8), NodeSpec(gpus=4, cpus=8)])
    slots = plan.role_slots("actor")
    assert [(s.rank, s.node_slot, s.bundle) for s in slots] == [
        (r, r // 4, r % 4) for r in range(8)]
    assert sorted(plan.group_of("actor").assigned_nodes) == [0, 1]


def test_colocated_roles_share_bundles_with_fractional_shares():
    cfg = config(actor=dict(devices_per_node=2, colocate="shared"),
                 reference=dict(devices_per_node=2, colocate="shared"),
                 critic=dict(devices_per_node=2), reward=dict(devices_per_node=2))
    plan = plan_placement(cfg, ROLES, cluster=[NodeSpec(gpus=6, cpus=8)])
    shared = plan.group_of("actor")
    assert shared is plan.group_of("reference") and shared.roles == ("actor", "reference")
    for actor_slot, ref_slot in zip(plan.role_slots("actor"), plan.role_slots("reference")):
        assert (actor_slot.node_slot, actor_slot.bundle) == (ref_slot.node_slot, ref_slot.bundle)
        assert actor_slot.num_gpus == ref_slot.num_gpus == 0.5
    assert plan.group_of("critic") is not shared


def test_colocated_roles_must_have_the_same_layout():
    cfg = config(actor=dict(devices_per_node=2, colocate="x"), critic=dict(devices_per_node=1, colocate="x"))
    with pytest.raises(PlanError, match="colocate group 'x'.*actor: 1×2.*critic: 1×1"):
        plan_placement(cfg, ["actor", "critic"])


def test_plan_that_does_not_fit_is_refused_with_what_is_missing():
    cfg = config(actor=dict(devices_per_node=4), critic=dict(devices_per_node=4))
    with pytest.raises(PlanError) as err:
        plan_placement(cfg, ["actor", "critic"], cluster=[NodeSpec(gpus=4, cpus=16)])
    message = str(err.value)
    assert "4 GPU" in message and "GPU: plan needs 8, cluster has 4" in message
    assert "colocate" in message


def test_node_slot_must_fit_on_one_node_even_if_total_gpus_suffice():
    cfg = config(actor=dict(devices_per_node=4))
    with pytest.raises(PlanError, match="no node has that free"):
        plan_placement(cfg, ["actor"], cluster=[NodeSpec(gpus=2, cpus=8), NodeSpec(gpus=2, cpus=8)])


def test_colocation_makes_an_oversized_plan_fit():
    roles = {r: dict(devices_per_node=2) for r in ROLES}
    with pytest.raises(PlanError):
        plan_placement(config(**roles), ROLES, cluster=[NodeSpec(gpus=4, cpus=8)])
    colocated = {r: dict(devices_per_node=2, colocate="all") for r in ROLES}
    plan = plan_placement(config(**colocated), ROLES, cluster=[NodeSpec(gpus=4, cpus=8)])
    assert len(plan.groups) == 1 and all(s.num_gpus == 0.25 for s in plan.slots)


def test_cpu_mode_requests_no_gpus():
    cfg = PlacementConfig(use_gpu=False)
    plan = plan_placement(cfg, ROLES, cluster=[NodeSpec(gpus=0, cpus=2)])
    assert all(s.num_gpus == 0.0 for s in plan.slots)
    assert plan.groups[0].bundle_resources == {"CPU": 0.25}


@pytest.mark.parametrize("field,value", [("num_nodes", 0), ("devices_per_node", -1), ("cpus_per_rank", 0)])
def test_invalid_role_placement_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"placement.critic.{field}={value}"):
        PlacementConfig(critic=RolePlacement(**{field: value}))


def test_hybrid_layout_hosts_the_uncolocated_roles_in_one_process_per_rank():
    from rlhf.distributed.worker_group import host_env, host_slots
    from rlhf.workers.base import THREADS_ENV

    cfg = PlacementConfig(layout="hybrid", **{r: RolePlacement(devices_per_node=2, cpus_per_rank=0.5) for r in ROLES})
    plan = plan_placement(cfg, ROLES, cluster=[NodeSpec(gpus=2, cpus=8)])
    (group,) = plan.groups
    assert group.name == "hybrid" and group.roles == ROLES and plan.hosted_together(group)
    assert group.bundle_resources == {"CPU": 2.0, "GPU": 1.0}  # every role's CPU share, one whole GPU
    hosts = host_slots(plan, group)
    assert [(s.rank, s.bundle, s.num_gpus, s.num_cpus) for s in hosts] == [(0, 0, 1.0, 2.0), (1, 1, 1.0, 2.0)]
    assert "one process hosting all 4 roles (hybrid layout" in plan.describe()
    assert host_env({}, 2.0)[THREADS_ENV] == "2" and host_env({}, 1.5)[THREADS_ENV] == "2"
    assert host_env({THREADS_ENV: "1"}, 2.0)[THREADS_ENV] == "1"  # a run's own thread count wins


def test_hybrid_layout_keeps_named_colocation_groups_apart():
    cfg = PlacementConfig(layout="hybrid", actor=RolePlacement(colocate="policy"),
                          reference=RolePlacement(colocate="policy"), critic=RolePlacement(), reward=RolePlacement())
    plan = plan_placement(cfg, ROLES, cluster=[NodeSpec(gpus=2, cpus=8)])
    assert {g.name: g.roles for g in plan.groups} == {"policy": ("actor", "reference"),
                                                       "hybrid": ("critic", "reward")}
    assert all(plan.hosted_together(g) for g in plan.groups)
    separate = plan_placement(PlacementConfig(), ROLES, cluster=[NodeSpec(gpus=4, cpus=8)])
    assert not any(separate.hosted_together(g) for g in separate.groups)
    alone = plan_placement(PlacementConfig(layout="hybrid", actor=RolePlacement(colocate="a")), ["actor"])
    assert not alone.hosted_together(alone.groups[0])  # one role: a process of its own either way


def test_layout_is_validated():
    with pytest.raises(ValueError, match="placement.layout='fused' is invalid"):
        PlacementConfig(layout="fused")
