"""Atomic, pruned checkpoints: a crash at any moment leaves the last complete checkpoint intact.

Layout under `root`:
    step_00000010/            a complete checkpoint (its COMPLETE marker was the last file written)
    .tmp-step_00000012-<id>/  one being written (or left by a crash): ignored and removed at start-up

`save` writes everything into the temp directory, writes COMPLETE, then renames the directory into
place (`os.replace` is atomic on POSIX), and only then deletes checkpoints beyond `keep_last`. Workers
on other nodes write into the same paths, so multi-node runs need `root` on a shared filesystem.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

COMPLETE = "COMPLETE"
PREFIX = "step_"


class CheckpointManager:
    def __init__(self, root: str | Path, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root, self.keep_last = Path(root), keep_last
        self.root.mkdir(parents=True, exist_ok=True)

    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        found = [p for p in self.root.glob(f"{PREFIX}*") if p.is_dir() and (p / COMPLETE).is_file()]
        return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))

    def latest(self) -> Path | None:
        checkpoints = self.complete_checkpoints()
        return checkpoints[-1] if checkpoints else None

    @staticmethod
    def step_of(path: Path) -> int:
        return int(path.name[len(PREFIX):])

    def remove_partial(self) -> list[Path]:
        """Delete temp directories left by an interrupted save (and step dirs without COMPLETE)."""
        removed = [p for p in self.root.iterdir()
                   if p.is_dir() and (p.name.startswith(".tmp-") or
                                      (p.name.startswith(PREFIX) and not (p / COMPLETE).is_file()))]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Run `write(temp_dir)`, mark it complete, move it to `step_<step>`, prune old ones."""
        final = self.root / f"{PREFIX}{step:08d}"
        temp = self.root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        temp.mkdir(parents=True)
        write(temp)
        marker = temp / COMPLETE
        marker.write_text(json.dumps({"step": step, "time": time.time()}))
        _fsync_tree(temp)
        if final.exists():  # re-saving a step after a resume: the new one replaces it whole
            shutil.rmtree(final)
        os.replace(temp, final)
        self._prune()
        return final

    def _prune(self) -> None:
        for old in self.complete_checkpoints()[:-self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    """Flush file contents to disk before the rename publishes them (power loss, not just crashes)."""
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
