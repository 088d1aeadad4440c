"""Issue 16 §6: a damaged latest checkpoint falls back to the previous complete one, with a warning
naming the file; the marker alone is not trusted."""
import json
import logging

import pytest

from rlhf.trainers.checkpoint import COMPLETE, HASH_LIMIT_BYTES, CheckpointManager, verify


def _save(manager, step):
    def write(d):
        (d / "controller.json").write_text(json.dumps({"step": step}))
        (d / "actor").mkdir()
        (d / "actor" / "weights.bin").write_bytes(bytes([step]) * 1000)
    return manager.save(step, write)


@pytest.fixture
def manager(tmp_path):
    m = CheckpointManager(tmp_path / "ckpt", keep_last=3)
    for step in (1, 2, 3):
        _save(m, step)
    return m


def test_an_intact_checkpoint_verifies_and_its_manifest_lists_every_file(manager):
    latest = manager.latest_valid()
    assert latest.name == "step_00000003" and verify(latest) is None
    files = json.loads((latest / COMPLETE).read_text())["files"]
    assert set(files) == {"controller.json", "actor/weights.bin"}
    assert files["actor/weights.bin"]["size"] == 1000 and len(files["controller.json"]["sha256"]) == 64


@pytest.mark.parametrize("damage, says", [
    (lambda d: (d / "actor" / "weights.bin").write_bytes(b"\x03" * 10), "actor/weights.bin has 10 bytes, 1000 were"),
    (lambda d: (d / "actor" / "weights.bin").unlink(), "actor/weights.bin is missing"),
    (lambda d: (d / "controller.json").write_text(json.dumps({"step": 9})), "controller.json does not match the checksum"),
    (lambda d: (d / COMPLETE).write_text("{not json"), "unreadable COMPLETE marker"),
])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(manager, caplog, damage, says):
    damage(manager.latest())
    with caplog.at_level(logging.WARNING, logger="rlhf.trainers.checkpoint"):
        assert manager.latest_valid().name == "step_00000002"
    assert "step_00000003 is damaged" in caplog.text and says in caplog.text
    assert manager.latest().name == "step_00000003"  # left on disk for inspection


def test_every_checkpoint_damaged_means_none_and_old_markers_are_trusted(manager):
    for path in manager.complete_checkpoints():
        (path / "actor" / "weights.bin").unlink()
    assert manager.latest_valid() is None
    old = manager.complete_checkpoints()[0]
    (old / COMPLETE).write_text(json.dumps({"step": 1, "time": 0}))  # a checkpoint from before manifests
    assert manager.latest_valid() == old


def test_large_files_are_sized_not_hashed(tmp_path, monkeypatch):
    monkeypatch.setattr("rlhf.trainers.checkpoint.HASH_LIMIT_BYTES", 100)
    m = CheckpointManager(tmp_path, keep_last=1)
    path = _save(m, 1)
    files = json.loads((path / COMPLETE).read_text())["files"]
    assert "sha256" not in files["actor/weights.bin"] and "sha256" in files["controller.json"]
    assert HASH_LIMIT_BYTES == 64 * 2 ** 20
