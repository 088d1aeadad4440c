"""DESIGN.md §2: dependencies point one way. Scan every module's imports (static, via ast).

- `rlhf/algorithms`, `rlhf/envs` and `rlhf/tasks` import only torch and the standard library (and rlhf);
- `rlhf/config` only omegaconf/hydra; `rlhf/data` only torch, datasets, transformers;
- `ray` only in workers, distributed, trainers and the entry point (cli/launch);
- `deepspeed` only in the engine; `vllm` only in rlhf/rollout/vllm_engine.py;
- no layer imports a layer above it.
"""
import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rlhf"
LAYERS = ["algorithms", "config", "data", "envs", "tasks", "models", "engine", "rollout", "workers", "distributed",
          "trainers", "cli"]
RAY_ALLOWED = {"workers", "distributed", "trainers", "cli"}
# Third-party packages each lower layer may import (stdlib and rlhf are always allowed).
THIRD_PARTY_ALLOWED = {
    "algorithms": {"torch"},
    "config": {"omegaconf", "hydra"},
    "envs": {"torch"},
    "tasks": {"torch"},
    "data": {"torch", "datasets", "transformers", "pyarrow"},
}
VLLM_MODULE = "rollout/vllm_engine.py"
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_modules(path: Path) -> list[str]:
    """Absolute module names imported anywhere in the file (including inside functions)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: use absolute imports (rlhf.<layer>...), found a relative import")
    return names


def violations(path: Path) -> list[str]:
    layer = layer_of(path)
    found = []
    for module in imported_modules(path):
        top = module.split(".")[0]
        allowed = THIRD_PARTY_ALLOWED.get(layer)
        if allowed is not None and top not in STDLIB | allowed | {"rlhf"}:
            found.append(f"{path}: {layer} may import only {sorted(allowed)} and the stdlib, imports {module}")
        if top == "ray" and layer not in RAY_ALLOWED:
            found.append(f"{path}: ray is allowed only in {sorted(RAY_ALLOWED)}, imported in {layer}")
        if top == "deepspeed" and layer != "engine":
            found.append(f"{path}: deepspeed is allowed only in rlhf/engine, imported in {layer}")
        if top == "vllm" and path.relative_to(PACKAGE).as_posix() != VLLM_MODULE:
            found.append(f"{path}: vllm is allowed only in rlhf/{VLLM_MODULE}, imported here")
        if top == "rlhf" and module.count(".") >= 1 and layer in LAYERS:
            target = module.split(".")[1]
            if target in LAYERS and LAYERS.index(target) > LAYERS.index(layer):
                found.append(f"{path}: layer {layer} imports the higher layer {target} ({module})")
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_respects_layering(path):
    assert violations(path) == []


def test_scanner_catches_violations(tmp_path, monkeypatch):
    """The scanner itself must flag bad imports, or the test above proves nothing."""
    fake = tmp_path / "rlhf"
    (fake / "algorithms").mkdir(parents=True)
    (fake / "data").mkdir()
    bad_math = fake / "algorithms" / "bad.py"
    bad_math.write_text("import numpy\nfrom ray import remote\n")
    bad_data = fake / "data" / "bad.py"
    bad_data.write_text("def f():\n    import deepspeed\n    from rlhf.trainers import ppo\n    import vllm\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert len(violations(bad_math)) == 3  # numpy; ray (not torch); ray (wrong layer)
    assert len(violations(bad_data)) == 5  # deepspeed (not in data); deepspeed (wrong layer); trainers; vllm twice
