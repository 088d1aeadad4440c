"""Atomic, pruned checkpoints: a crash at any moment leaves the last complete checkpoint intact.

Layout under `root`:
    step_00000010/            a complete checkpoint (its COMPLETE marker was the last file written)
    .tmp-step_00000012-<id>/  one being written (or left by a crash): ignored and removed at start-up

`save` writes everything into the temp directory, writes COMPLETE, then renames the directory into
place (`os.replace` is atomic on POSIX), and only then deletes checkpoints beyond `keep_last`. Workers
on other nodes write into the same paths, so multi-node runs need `root` on a shared filesystem.

COMPLETE is also a manifest: every file's size, and the SHA-256 of those up to `HASH_LIMIT_BYTES`
(the controller's JSON state, configs, small shards; hashing multi-GB optimizer shards at every save
would cost minutes). `latest_valid` checks it: a checkpoint with a missing, truncated or altered file
(a disk that filled, a bad copy, a bit flip in a state file) is skipped with a warning naming the file,
and the previous complete one is used, instead of a run that dies on load although an older
checkpoint is fine. Checkpoints written before manifests existed are trusted as they are.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

COMPLETE = "COMPLETE"
PREFIX = "step_"
HASH_LIMIT_BYTES = 64 * 2 ** 20

logger = logging.getLogger(__name__)


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

    def latest_valid(self) -> Path | None:
        """The newest complete checkpoint whose files match its manifest; newer broken ones are skipped
        with a warning naming what is wrong (they stay on disk for inspection)."""
        for path in reversed(self.complete_checkpoints()):
            problem = verify(path)
            if problem is None:
                return path
            logger.warning("checkpoint %s is damaged (%s): falling back to the previous complete one", path, problem)
        return None

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
        marker.write_text(json.dumps({"step": step, "time": time.time(), "files": _manifest(temp)}))
        _fsync_tree(temp)
        if final.exists():  # re-saving a step after a resume: the new one replaces it whole
            shutil.rmtree(final)
        os.replace(temp, final)
        self._prune()
        return final

    def _prune(self) -> None:
        for old in self.complete_checkpoints()[:-self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def _manifest(root: Path) -> dict[str, dict]:
    """{relative path: {"size": bytes, "sha256": hex (files up to HASH_LIMIT_BYTES only)}}."""
    files = {}
    for file in sorted(root.rglob("*")):
        if file.is_file() and file.name != COMPLETE:
            entry = {"size": file.stat().st_size}
            if entry["size"] <= HASH_LIMIT_BYTES:
                entry["sha256"] = sha256_file(file)
            files[file.relative_to(root).as_posix()] = entry
    return files


def sha256_file(file: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(2 ** 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(checkpoint: Path) -> str | None:
    """What is wrong with `checkpoint` against its manifest (None: nothing, or no manifest to check)."""
    try:
        files = json.loads((checkpoint / COMPLETE).read_text()).get("files")
    except (OSError, ValueError) as exc:
        return f"unreadable {COMPLETE} marker: {exc}"
    if files is None:
        return None
    for name, entry in files.items():
        file = checkpoint / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != entry["size"]:
            return f"{name} has {size} bytes, {entry['size']} were written"
        if "sha256" in entry and sha256_file(file) != entry["sha256"]:
            return f"{name} does not match the checksum it was written with"
    return None


def _fsync_tree(path: Path) -> None:
    """Flush file contents to disk before the rename publishes them (power loss, not just crashes)."""
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
