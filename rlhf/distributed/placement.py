"""Placement planning: which role's ranks go on which node and device — decided before any actor starts.

A *device group* is a set of roles that share devices: a role alone, or the roles with the same
`colocate` name. Each device group spans `num_nodes` node slots of `devices_per_node` devices; a node
slot becomes one Ray placement group with the STRICT_PACK strategy (all its bundles on one node, as
DeepSpeed's intra-node ranks expect). One bundle holds one device; every role of the group puts one
rank in every bundle with a fractional device share (1/number of roles). Roles of different device
groups never share a bundle, hence never a device.

`plan_placement` is pure (no Ray): it builds the plan and checks it against a cluster description,
refusing a plan that cannot fit with a message naming what is missing. `create_placement_groups`
turns a plan into Ray placement groups.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from rlhf.config.placement import HYBRID_GROUP, NodeSpec, PlacementConfig, RolePlacement


class PlanError(ValueError):
    """The placement cannot work: inconsistent colocation or not enough resources."""


@dataclass(frozen=True)
class RankSlot:
    """Where one rank of one role runs."""

    role: str
    rank: int
    group: str  # device group name
    node_slot: int  # which node slot (placement group) of the device group
    bundle: int  # bundle index inside that placement group
    num_gpus: float  # device share requested by this rank
    num_cpus: float  # CPU share requested by this rank


@dataclass
class DeviceGroup:
    """Roles sharing devices, and the resources of each of their bundles."""

    name: str
    roles: tuple[str, ...]
    num_nodes: int
    devices_per_node: int
    bundle_resources: dict[str, float]
    assigned_nodes: tuple[int, ...] = ()  # planned node index per node slot (from the fit check)
    idle_offload: dict[str, str] = field(default_factory=dict)  # role → offload_when_idle (hybrid hosts)


@dataclass
class PlacementPlan:
    groups: list[DeviceGroup]
    slots: list[RankSlot]
    use_gpu: bool
    layout: str = "separate"  # "hybrid": the roles of a device group share one process per rank

    def hosted_together(self, group: DeviceGroup) -> bool:
        """Whether `group`'s roles live in one process per rank (the hybrid layout, several roles)."""
        return self.layout == "hybrid" and len(group.roles) > 1

    def role_slots(self, role: str) -> list[RankSlot]:
        """The slots of `role` ordered by rank."""
        return sorted((s for s in self.slots if s.role == role), key=lambda s: s.rank)

    def group_of(self, role: str) -> DeviceGroup:
        return next(g for g in self.groups if role in g.roles)

    def describe(self) -> str:
        """A human-readable table: role → ranks, nodes, device shares."""
        device = "GPU" if self.use_gpu else "CPU-rank"
        lines = []
        for g in self.groups:
            nodes = ", ".join(f"node{n}" for n in g.assigned_nodes) or "unplanned"
            share = f"{1 / len(g.roles):.2f} {device} share" if len(g.roles) > 1 else f"1 {device}"
            if self.hosted_together(g):
                share = (f"one process hosting all {len(g.roles)} roles (hybrid layout: they run in turn, "
                         f"each with the whole {device} and {g.bundle_resources['CPU']:g} CPU)")
            lines.append(f"[{g.name}] roles={'+'.join(g.roles)}  {g.num_nodes} node(s) × "
                         f"{g.devices_per_node} {device}(s) on {nodes}; each rank: {share}")
        return "\n".join(lines)


def plan_placement(config: PlacementConfig, roles: list[str] | tuple[str, ...],
                   cluster: list[NodeSpec] | None = None) -> PlacementPlan:
    """Build the plan for the active PPO `roles` and, if `cluster` is given, check that it fits. In the
    hybrid layout the roles without a colocate name share the device group "hybrid"."""
    placements = {role: config.role(role) for role in roles}
    if config.layout == "hybrid":
        placements = {role: p if p.colocate else replace(p, colocate=HYBRID_GROUP) for role, p in placements.items()}
    return plan_roles(placements, config.use_gpu, cluster, layout=config.layout)


def plan_roles(roles: dict[str, RolePlacement], use_gpu: bool, cluster: list[NodeSpec] | None = None,
               layout: str = "separate") -> PlacementPlan:
    """Plan any named roles (e.g. the single "sft" or "rm" role of a supervised stage)."""
    groups = _device_groups(roles, use_gpu)
    slots = [slot for g in groups for slot in _group_slots(roles, g, use_gpu)]
    plan = PlacementPlan(groups=groups, slots=slots, use_gpu=use_gpu, layout=layout)
    if cluster:
        _fit(plan, cluster)
    return plan


def _device_groups(roles: dict[str, RolePlacement], use_gpu: bool) -> list[DeviceGroup]:
    by_name: dict[str, list[str]] = {}
    for role, placement in roles.items():
        by_name.setdefault(placement.colocate or role, []).append(role)
    groups = []
    for name, members in by_name.items():
        layouts = {(roles[r].num_nodes, roles[r].devices_per_node) for r in members}
        if len(layouts) > 1:
            detail = ", ".join(f"{r}: {roles[r].num_nodes}×{roles[r].devices_per_node}" for r in members)
            raise PlanError(f"colocated roles must have the same num_nodes × devices_per_node; "
                            f"colocate group {name!r} has {detail}")
        num_nodes, per_node = layouts.pop()
        resources = {"CPU": sum(roles[r].cpus_per_rank for r in members)}
        if use_gpu:
            resources["GPU"] = 1.0
        idle = {r: getattr(roles[r], "offload_when_idle", "none") for r in members}
        groups.append(DeviceGroup(name, tuple(members), num_nodes, per_node, resources, idle_offload=idle))
    return groups


def _group_slots(roles: dict[str, RolePlacement], group: DeviceGroup, use_gpu: bool) -> list[RankSlot]:
    share = 1.0 / len(group.roles) if use_gpu else 0.0
    return [
        RankSlot(role=role, rank=node * group.devices_per_node + b, group=group.name, node_slot=node,
                 bundle=b, num_gpus=share, num_cpus=roles[role].cpus_per_rank)
        for role in group.roles for node in range(group.num_nodes) for b in range(group.devices_per_node)
    ]


def _fit(plan: PlacementPlan, cluster: list[NodeSpec]) -> None:
    """First-fit-decreasing of node slots onto nodes; raise PlanError saying what is missing."""
    free = [{"GPU": float(n.gpus), "CPU": float(n.cpus)} for n in cluster]
    demands = [(g, slot, {k: v * g.devices_per_node for k, v in g.bundle_resources.items()})
               for g in plan.groups for slot in range(g.num_nodes)]
    demands.sort(key=lambda d: (d[2].get("GPU", 0.0), d[2]["CPU"]), reverse=True)
    assigned: dict[str, dict[int, int]] = {g.name: {} for g in plan.groups}
    for group, slot, need in demands:
        node = next((i for i, f in enumerate(free) if all(f.get(k, 0.0) >= v - 1e-9 for k, v in need.items())),
                    None)
        if node is None:
            raise PlanError(_missing_message(plan, group, need, free, cluster))
        for k, v in need.items():
            free[node][k] -= v
        assigned[group.name][slot] = node
    for g in plan.groups:
        g.assigned_nodes = tuple(assigned[g.name][s] for s in range(g.num_nodes))


def _missing_message(plan, group, need, free, cluster) -> str:
    total_need = {k: sum(v * g.devices_per_node * g.num_nodes for g in plan.groups
                         for kk, v in g.bundle_resources.items() if kk == k) for k in need}
    total_have = {k: sum(getattr(n, "gpus" if k == "GPU" else "cpus") for n in cluster) for k in need}
    need_text = " + ".join(f"{v:g} {k}" for k, v in need.items())
    free_text = "; ".join(f"node{i}: " + ", ".join(f"{v:g} {k}" for k, v in f.items()) for i, f in enumerate(free))
    totals = ", ".join(f"{k}: plan needs {total_need[k]:g}, cluster has {total_have[k]:g}" for k in need)
    return (f"placement does not fit the cluster: device group {group.name!r} (roles "
            f"{'+'.join(group.roles)}) needs one node with {need_text} for each of its {group.num_nodes} "
            f"node slot(s), but no node has that free (free after earlier groups: {free_text}). Totals — "
            f"{totals}. To fit: colocate roles (placement.<role>.colocate=NAME), lower "
            f"devices_per_node/num_nodes, lower cpus_per_rank, or add nodes.")


def cluster_from_ray() -> list[NodeSpec]:
    """The alive nodes of the connected Ray cluster as NodeSpecs (total resources)."""
    import ray

    return [NodeSpec(gpus=int(n["Resources"].get("GPU", 0)), cpus=float(n["Resources"].get("CPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


def create_placement_groups(plan: PlacementPlan, timeout_s: float = 60.0, name_prefix: str = "rlhf"):
    """One STRICT_PACK placement group per node slot of every device group; waits until all are placed.

    Returns {group name: [PlacementGroup per node slot]}. Raises PlanError naming the group that Ray
    could not place within `timeout_s` (after removing everything created here).
    """
    import ray
    from ray.util import placement_group, remove_placement_group

    created: dict[str, list] = {}
    for g in plan.groups:
        created[g.name] = [placement_group([dict(g.bundle_resources)] * g.devices_per_node,
                                           strategy="STRICT_PACK", name=f"{name_prefix}-{g.name}-{slot}")
                           for slot in range(g.num_nodes)]
    for g in plan.groups:
        pgs = created[g.name]
        ready, _ = ray.wait([pg.ready() for pg in pgs], num_returns=len(pgs), timeout=timeout_s)
        if len(ready) < len(pgs):
            for pg in (pg for group_pgs in created.values() for pg in group_pgs):
                remove_placement_group(pg)
            raise PlanError(f"Ray could not place device group {g.name!r} ({g.num_nodes} node slot(s) of "
                            f"{g.devices_per_node} × {g.bundle_resources}) within {timeout_s:g} s: "
                            f"the cluster lacks these resources")
    return created
