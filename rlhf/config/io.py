"""Structured configs to and from YAML (validated on the way in, through the dataclasses)."""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf

T = TypeVar("T")


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_yaml(cfg, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(to_yaml(cfg))
    return path


def load_yaml(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """`cls` filled from the YAML file and `key=value` dotlist overrides; unknown keys are errors."""
    merged = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.load(path),
                             OmegaConf.from_dotlist(list(overrides or [])))
    return OmegaConf.to_object(merged)
