"""Resume continues the run it resumes (issue 16 §7): a changed configuration or input file is refused.

A resumed run replays the interrupted one exactly only if what it was started with still holds: the
same models, data, seeds, world sizes and algorithm. `check_resume` compares the configuration with
the run's saved `config.yaml` and every local input file with the SHA-256 recorded in
`run_dir/inputs.json` when it was first seen, and refuses (PipelineError) listing each changed field
(`old → new`). Fields that only say how long or how visibly to run (`SAFE_CHANGES`: more total steps,
evaluation and checkpoint cadence, logging, expectations, the placement layout and CPU shares) may change; anything else needs
`resume_allow_changes=[field, ...]` (a field, a parent such as `ppo.algorithm`, or a glob).
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from rlhf.trainers.checkpoint import sha256_file

INPUTS_FILE = "inputs.json"
SAFE_CHANGES = ("resume", "dry_run", "overwrite", "stages", "strict_expectations", "resume_allow_changes",
                "run_dir", "*.trainer.total_steps", "*.engine.total_steps", "*.engines.*.total_steps",
                "*.trainer.eval_every", "*.trainer.save_every", "*.trainer.keep_last", "*.trainer.call_timeout_s",
                "*.trainer.progress", "*.trainer.tensorboard", "*.trainer.wandb", "*.trainer.wandb_project",
                "*.expectations", "*.expectations.*",
                # where the same ranks run, not what they compute: a run resumes in either layout
                "*.placement.layout", "*.placement.*.colocate", "*.placement.*.cpus_per_rank",
                "*.placement.*.offload_when_idle")


def config_changes(saved: dict, current: dict, allowed: list[str]) -> list[str]:
    """`field: old → new` for every leaf that differs, except SAFE_CHANGES and `allowed`. Paths inside
    the saved run_dir count as unchanged when the run directory was moved or copied elsewhere."""
    old, new = _flatten(saved), _flatten(current)
    before, after = old.get("run_dir"), new.get("run_dir")
    if isinstance(before, str) and isinstance(after, str) and before != after:
        old = {k: _rebase(v, before, after) for k, v in old.items()}
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<absent>") == new.get(key, "<absent>") or _matches(key, [*SAFE_CHANGES, *allowed]):
            continue
        changes.append(f"{key}: {old.get(key, '<absent>')!r} → {new.get(key, '<absent>')!r}")
    return changes


def input_changes(inputs: dict[str, str], run_dir: Path, allowed: list[str], refresh: bool = False) -> list[str]:
    """Local input files (field → path) whose content differs from what `run_dir/inputs.json` recorded.
    Files seen for the first time are recorded; `refresh` records every file as it is now (a run
    starting, after the check passed)."""
    path = Path(run_dir) / INPUTS_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    changes = []
    for name, file in sorted(inputs.items()):
        file_path = Path(file).expanduser()
        if not file_path.is_file():
            continue
        digest = sha256_file(file_path)
        before = recorded.get(name)
        if refresh or before is None or before["path"] != str(file_path.resolve()):
            recorded[name] = {"path": str(file_path.resolve()), "sha256": digest}
        elif before["sha256"] != digest and not _matches(name, allowed):
            changes.append(f"{name}: the file {file} changed since the run started "
                           f"(sha256 {before['sha256'][:12]}… → {digest[:12]}…)")
    if recorded:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(recorded, indent=1))
    return changes


def _rebase(value: Any, old_root: str, new_root: str) -> Any:
    """`value` with the prefix `old_root` (a path) replaced by `new_root`."""
    if isinstance(value, str) and (value == old_root or value.startswith(old_root.rstrip("/") + "/")):
        return new_root + value[len(old_root):]
    return value


def _matches(key: str, patterns: list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") or fnmatch.fnmatchcase(key, p) for p in patterns)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: value}

