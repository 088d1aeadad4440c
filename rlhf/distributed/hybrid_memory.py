"""GPU memory of a hybrid host per phase: the active role whole, the others what they keep resident.

In the hybrid layout (rlhf/workers/hybrid.py) a device group's roles share one process per rank and run
in turn; before a role's call, every other role releases what its `placement.<role>.offload_when_idle`
names (rlhf/engine/idle.py). So the device's peak is not the sum of the roles' totals (what colocated
processes need, all resident at once) but the largest phase:

    peak(r) = total(r) + Σ_{o ≠ r} resident(o)
    resident(o) = overhead + { weights + grads + optimizer   offload_when_idle = none
                             { weights                        optimizer
                             { 0                              all

Activations and the KV cache of HF generation exist only during their own role's call. A vLLM engine
("rollout" estimate) stays resident in every phase: its memory is reserved at start-up.
"""
from __future__ import annotations

from typing import Sequence


def resident_gib(estimate, policy: str) -> float:
    """What an idle role keeps on the device under `policy` (GiB per GPU)."""
    if estimate.role == "rollout":
        return estimate.total_gib
    kept = {"none": estimate.weights_gib + estimate.grads_gib + estimate.optimizer_gib,
            "optimizer": estimate.weights_gib, "all": 0.0}[policy]
    return kept + estimate.overhead_gib


def hybrid_phase_peaks(estimates: Sequence, offload: dict[str, str]) -> dict[str, float]:
    """{active role: GiB per GPU while it runs} for the roles one process hosts (a vLLM engine's
    estimate, role "rollout", is never active on its own: it runs inside the actor's calls)."""
    peaks = {}
    for active in estimates:
        if active.role == "rollout":
            continue
        others = sum(resident_gib(e, offload.get(e.role, "none")) for e in estimates if e is not active)
        peaks[active.role] = active.total_gib + others
    return peaks
