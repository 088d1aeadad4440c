"""User code by dotted path (`package.module:attribute`): tasks, reward functions, environments.

The path is imported where it is asked for: in the driver when the pipeline checks the config, and again
in each worker process that uses it. `import_object` makes that work for a module next to where the
command runs (the current directory is tried when the plain import fails) and records the directory it
came from in PYTHONPATH, which worker processes started afterwards (Ray actors, spawned children) inherit.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any


def import_object(path: str, what: str = "object") -> Any:
    """The object at `path` = "package.module:attribute" (attribute may be dotted). ValueError naming the
    path, what failed and where Python looked when the module cannot be imported or lacks the attribute.

    The current directory is tried when the plain import fails; the directory the module came from is
    then added to PYTHONPATH, so worker processes started afterwards import it the same way."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{what} {path!r}: expected a dotted path 'package.module:attribute'")
    module = _import_module(module_name, path, what)
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ValueError(f"{what} {path!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) has "
                             f"no attribute {attribute!r}")
        value = getattr(value, part)
    return value


def _import_module(module_name: str, path: str, what: str):
    cwd = os.getcwd()
    hint = (f"; it must be importable by the driver and every worker: install it, or put its directory on "
            f"PYTHONPATH (searched: the current directory {cwd} and sys.path)")
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name) or cwd in sys.path:
            raise ValueError(f"{what} {path!r}: importing {module_name!r} failed ({exc}){hint}") from exc
    except Exception as exc:  # the module exists but raised while importing
        raise ValueError(f"{what} {path!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        sys.path.remove(cwd)
        raise ValueError(f"{what} {path!r}: importing {module_name!r} failed ({type(exc).__name__}: {exc})"
                         f"{hint}") from exc
    entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    if cwd not in entries:  # worker processes (Ray actors, spawned children) inherit the environment
        os.environ["PYTHONPATH"] = os.pathsep.join([cwd, *entries])
    return module
