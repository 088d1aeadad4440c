"""Where each role's ranks run: structured config for placement, and the cluster it must fit.

A role (actor, critic, reward, reference) is a worker group of `num_nodes × devices_per_node` ranks —
the data-parallel ranks of one engine. Roles sharing a `colocate` name share the same devices (same
rank layout, fractional device shares); otherwise every role gets devices of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("actor", "critic", "reward", "reference")
LAYOUTS = ("separate", "hybrid")
IDLE_OFFLOAD = ("none", "optimizer", "all")  # RolePlacement.offload_when_idle
HYBRID_GROUP = "hybrid"  # the device group of the roles without a colocate name in the hybrid layout


def _require(condition: bool, field_name: str, value, allowed: str) -> None:
    if not condition:
        raise ValueError(f"{field_name}={value!r} is invalid: expected {allowed}")


@dataclass
class RolePlacement:
    """Placement of one role's worker group."""

    num_nodes: int = 1  # nodes the role spans (≥ 1)
    devices_per_node: int = 1  # ranks per node: GPUs per node with use_gpu, CPU ranks otherwise (≥ 1)
    colocate: str | None = None  # roles with the same name share devices; None = devices of its own
    cpus_per_rank: float = 0.25  # CPU share each rank reserves (fractional on small machines)
    # Hybrid layout: what this role moves off its device while another hosted role's call runs, back
    # before its own ("none"; "optimizer": optimizer states, fp32 master weights and gradients; "all":
    # those and the weights). rlhf/workers/hybrid.py; the memory planner counts per phase.
    offload_when_idle: str = "none"

    def validate(self, name: str) -> None:
        _require(self.num_nodes >= 1, f"{name}.num_nodes", self.num_nodes, "an integer >= 1")
        _require(self.devices_per_node >= 1, f"{name}.devices_per_node", self.devices_per_node,
                 "an integer >= 1")
        _require(self.cpus_per_rank > 0, f"{name}.cpus_per_rank", self.cpus_per_rank, "a number > 0")
        _require(self.offload_when_idle in IDLE_OFFLOAD, f"{name}.offload_when_idle", self.offload_when_idle,
                 f"one of {list(IDLE_OFFLOAD)}")

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.devices_per_node


@dataclass
class NodeSpec:
    """One node of a described cluster (for planning before Ray starts)."""

    gpus: int = 0  # GPUs on the node
    cpus: float = 2.0  # CPUs on the node
    gpu_memory_gb: float = 0.0  # memory per GPU (for the memory planner)


@dataclass
class PlacementConfig:
    """Placement of all roles. `use_gpu=False` places ranks by CPU share only (tests, laptops)."""

    use_gpu: bool = True  # one GPU (or a fractional share when colocated) per rank
    # "separate": every role's rank is a process of its own (colocated roles share devices, not processes).
    # "hybrid": the roles of a device group share one process per rank, hosting each role's engine and
    # running them in turn with all the rank's devices and threads; roles without a `colocate` name form
    # the group "hybrid" (so by default all roles share one process per rank). rlhf/workers/hybrid.py.
    layout: str = "separate"
    actor: RolePlacement = field(default_factory=RolePlacement)
    critic: RolePlacement = field(default_factory=RolePlacement)
    reward: RolePlacement = field(default_factory=RolePlacement)
    reference: RolePlacement = field(default_factory=RolePlacement)
    # The cluster to plan against when Ray is not running yet (dry run); empty = read it from Ray.
    cluster: list[NodeSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    def role(self, name: str) -> RolePlacement:
        _require(name in ROLES, "placement role", name, f"one of {ROLES}")
        return getattr(self, name)

    def validate(self) -> None:
        _require(self.layout in LAYOUTS, "placement.layout", self.layout, f"one of {list(LAYOUTS)}")
        for name in ROLES:
            self.role(name).validate(f"placement.{name}")
            offload = self.role(name).offload_when_idle
            _require(offload == "none" or self.layout == "hybrid", f"placement.{name}.offload_when_idle", offload,
                     "'none' unless placement.layout=hybrid (only roles sharing a process take turns)")
