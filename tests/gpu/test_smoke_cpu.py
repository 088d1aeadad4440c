"""The CUDA-free parts of bench/gpu_smoke.py (issue 11 §4): arguments, the report, the planner
comparison, and the whole script's in-process path run on CPU with tiny sizes."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import gpu_smoke  # noqa: E402


def test_arguments_default_to_every_check_and_refuse_unknown_ones(capsys):
    args = gpu_smoke.parse_args([])
    assert args.checks == list(gpu_smoke.CHECKS) and args.device == "auto" and not args.quick
    assert gpu_smoke.parse_args(["--checks", "engines, rollout_throughput"]).checks == ["engines", "rollout_throughput"]
    with pytest.raises(SystemExit):
        gpu_smoke.parse_args(["--checks", "engines,warp_drive"])
    assert "warp_drive" in capsys.readouterr().err


def test_asking_for_cuda_without_it_is_a_named_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match="torch sees no CUDA device"):
        gpu_smoke.resolve_device("cuda")
    assert gpu_smoke.resolve_device("auto") == "cpu"


def test_failed_and_skipped_checks_are_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(ctx):
        raise gpu_smoke.CheckFailed("loss went NaN", {"loss": 123.0})

    def absent(ctx):
        gpu_smoke.need("surely_not_installed_pkg", "a test")

    monkeypatch.setitem(gpu_smoke.CHECK_FNS, "engines", broken)
    monkeypatch.setitem(gpu_smoke.CHECK_FNS, "ppo_steps", absent)
    ctx = gpu_smoke.Context("cpu", gpu_smoke.QUICK, tmp_path / "work", tmp_path)
    results = [gpu_smoke.run_check(name, ctx) for name in ("engines", "ppo_steps", "environment")]
    assert [r.status for r in results] == ["failed", "skipped", "passed"]
    assert "loss went NaN" in results[0].error and results[0].details == {"loss": 123.0}
    assert "surely_not_installed_pkg" in results[1].error
    json_path, md_path = gpu_smoke.write_report(results, tmp_path / "report", {"device": "cpu"})
    payload = json.loads(json_path.read_text())
    assert payload["passed"] is False and [r["status"] for r in payload["results"]] == ["failed", "skipped", "passed"]
    table = md_path.read_text().splitlines()
    assert table[0] == "| check | status | seconds | details |" and len(table) == 5
    assert "loss went NaN" in table[2] and not list((tmp_path / "report").glob("*.tmp"))


def test_planner_comparison_flags_a_role_above_its_estimate(tmp_path):
    ctx = gpu_smoke.Context("cpu", gpu_smoke.QUICK, tmp_path / "work", tmp_path)
    cfg = gpu_smoke.ppo_config(ctx, gpu_smoke.tiny_assets(ctx), steps=1)
    table = gpu_smoke.compare_with_planner(cfg, {"actor": 0.01, "critic": 1e6, "reference": None})
    assert set(table) == set(cfg.roles())
    assert table["actor"]["within_plan"] is True and table["critic"]["within_plan"] is False
    assert table["reference"]["within_plan"] is None and table["reward"]["measured_gib"] is None
    assert all(v["planned_gib"] > 0 for v in table.values())


def test_the_whole_smoke_runs_on_cpu_through_its_command(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_smoke.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads((out / "gpu_smoke.json").read_text())
    status = {r["name"]: r["status"] for r in payload["results"]}
    vllm = "passed" if importlib.util.find_spec("vllm") else "skipped"  # the default environment has no vLLM
    assert status == {**{c: "passed" for c in gpu_smoke.CHECKS}, "quickstart_ray": "skipped", "vllm_rollout": vllm}
    details = {r["name"]: r["details"] for r in payload["results"]}
    assert details["engines"]["zero3_resume_gap"] == 0.0
    assert details["recompute_logprobs"]["ratio_max"] == 1.0
    assert details["rollout_throughput"]["generated_tokens"] == 4 * 8
    assert set(details["ppo_steps"]["memory"]) == {"actor", "critic", "reference", "reward"}


def test_the_quickstart_gpu_overrides_make_a_valid_one_gpu_plan(tmp_path):
    """The Ray part's overrides, checked by the real command's dry run against a described 1-GPU node."""
    rlhf = Path(sys.executable).with_name("rlhf")
    proc = subprocess.run([str(rlhf), "recipe=quickstart", "dry_run=true", f"run_dir={tmp_path}",
                           *gpu_smoke.QUICKSTART_GPU_OVERRIDES,
                           "ppo.placement.cluster=[{gpus: 1, cpus: 16, gpu_memory_gb: 139}]"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "roles=actor+critic+reference+reward  1 node(s) × 1 GPU(s)" in proc.stdout
    assert "0.25 GPU share" in proc.stdout
