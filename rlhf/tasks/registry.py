"""The task registry: built-in tasks looked up by name, so new ones (verifiable math, code) plug in alike.

A task is anything with this interface (`Task`):
- `name`: its registry name;
- `reward(response, reference) -> float`: the gold verifier — never raises on a malformed response;
- `write_files(out_dir) -> dict[str, Path]`: its data as JSONL files whose field names are the
  defaults of the `rlhf.data` loaders, so task data goes through the same loaders as real data.

    register_task("arithmetic", ArithmeticTask)      # or @register_task("arithmetic") on the class
    task = get_task("arithmetic", digits=3, seed=1)  # kwargs go to the factory
    task = get_task("my_pkg.tasks:MyTask", level=2)  # a user's task by dotted path, no registration

A dotted path `module:attribute` is imported where it is asked for: in the driver when the pipeline
checks the config, and again in each worker process that scores with it (`rlhf.envs.imports`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

from rlhf.envs.imports import import_object  # noqa: F401  (a user's task by dotted path; re-exported)


@runtime_checkable
class Task(Protocol):
    name: str

    def reward(self, response: str, reference: Any) -> float: ...

    def write_files(self, out_dir: str | Path) -> dict[str, Path]: ...


_TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task] | None = None):
    """Register `factory` (a class or function returning a Task) under `name`; usable as a decorator."""
    def add(f: Callable[..., Task]) -> Callable[..., Task]:
        if name in _TASKS and _TASKS[name] is not f:
            raise ValueError(f"task {name!r} is already registered (by {_TASKS[name]!r})")
        _TASKS[name] = f
        return f

    return add(factory) if factory is not None else add


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str, **kwargs: Any) -> Task:
    """Build the task registered as `name`, or the factory at the dotted path `module:attribute`; an
    unknown name raises listing the valid ones, an import that fails says why."""
    if name in _TASKS:
        return _TASKS[name](**kwargs)
    if ":" in name:
        return import_object(name, "task")(**kwargs)
    raise ValueError(f"unknown task {name!r}; valid tasks: {available_tasks()}, or a dotted path "
                     f"'package.module:TaskClass'")


def task_config(config_cls: type, task_name: str, config: Any = None, overrides: dict | None = None) -> Any:
    """`config_cls(**fields)`: the fields of `config` (a `config_cls` or None) updated by `overrides`; an
    override that is not a field raises listing the valid ones."""
    from dataclasses import asdict, fields

    overrides = dict(overrides or {})
    valid = {f.name for f in fields(config_cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown {task_name} task option(s) {unknown}; valid: {sorted(valid)}")
    return config_cls(**{**(asdict(config) if config is not None else {}), **overrides})


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write `manifest.json` (sorted keys, indented) to `out_dir` via a temp file renamed into place."""
    path = Path(out_dir) / "manifest.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write `rows` as JSON lines (UTF-8, one object per line) via a temp file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
