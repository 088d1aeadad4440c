"""The `prepare` stage: the inputs an embedded-default recipe builds itself, fully offline and idempotently.

    made = prepare(cfg, run_dir)   # run_dir/data (a task's JSONL files), run_dir/base (a tiny model + tokenizer)

Each output is built into a temporary directory and renamed into place, with `prepare.json` (the settings
it was made with) beside it: a later run with the same settings reuses it, one with other settings is
refused (PipelineError), never silently rebuilt over.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from rlhf.config.run import RunConfig

logger = logging.getLogger(__name__)

PREPARE_SPEC = "prepare.json"  # written next to prepared outputs: the settings they were made with


def prepare(cfg: RunConfig, run_dir: Path) -> dict:
    """Write the task's data files to run_dir/data and build the tiny model into run_dir/base (idempotent)."""
    from rlhf.tasks import get_task

    made = {}
    spec = cfg.prepare
    if spec.task:
        kwargs = dict(spec.task_kwargs)
        made["data"] = _build_once(run_dir / "data", {"task": spec.task, "kwargs": kwargs},
                                   lambda out: get_task(spec.task, **kwargs).write_files(out))
    if spec.tiny_model is not None:
        model = asdict(spec.tiny_model)
        settings = dict(model) if model["tokenizer"] != "char" else {k: v for k, v in model.items() if k != "tokenizer"}
        made["base"] = _build_once(run_dir / "base", settings, lambda out: _build_base(out, dict(model)))
        made["base_spec"] = asdict(spec.tiny_model)
    return made


def _build_base(out: Path, model: dict) -> Path:
    """The tiny model of a `prepare.tiny_model` spec (as a dict) and its tokenizer, into `out`."""
    from rlhf.models.tiny import build_tiny_model

    overrides, tokenizer = model.pop("config_overrides"), model.pop("tokenizer")
    tokenizer_dir = None  # the character-level tokenizer, built beside the model
    if tokenizer == "mistral":
        from rlhf.models.public_vocab import build_mistral_tokenizer

        build_mistral_tokenizer(out)
        tokenizer_dir = out
    elif tokenizer == "code":
        from rlhf.models.tiny import CODE_ALPHABET, build_tiny_tokenizer

        build_tiny_tokenizer(out, alphabet=CODE_ALPHABET)
        tokenizer_dir = out
    return build_tiny_model(out, tokenizer_dir=tokenizer_dir, **model, **overrides)


def _build_once(out: Path, settings: dict, build) -> str:
    """Build `out` with `build(tmp_dir)` unless it exists with the same settings; atomic (rename)."""
    from rlhf.trainers.pipeline import PipelineError

    marker = out / PREPARE_SPEC
    if marker.exists():
        previous = json.loads(marker.read_text(encoding="utf-8"))
        if previous != settings:
            raise PipelineError(f"{out} was prepared with different settings ({previous}) than this run asks "
                                f"({settings}): use another run_dir, or delete {out}")
        logger.info("prepare: %s exists (same settings): reused", out)
        return str(out)
    if out.exists():
        raise PipelineError(f"{out} exists but was not made by the prepare stage (no {PREPARE_SPEC}): "
                            f"use another run_dir, or delete {out}")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    build(tmp)
    _write_json(tmp / PREPARE_SPEC, settings)
    os.replace(tmp, out)
    logger.info("prepare: wrote %s", out)
    return str(out)


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
