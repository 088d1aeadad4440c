"""GPU failure classes reproduced on CPU (issue 11): every role's real worker code on 2 ranks.

1. Collectives on a device the backend accepts: NCCL takes only CUDA tensors, and the roles reduce
   CPU tensors (metrics, counts, normalisers). The job runs under a stand-in that gives the real
   gloo group the device rule of the backend our code asks for on a GPU machine
   (`backend_for(cuda=True)`); with an NCCL-only backend every reduction raises, as on a GPU.
2. ZeRO-3 forwards in lock-step: generation where one rank's rows end at their first token and the
   other's run on, and an evaluation where the ranks have 3 and 1 micro-batches. Unsynchronised, the
   ranks stop meeting in the parameter all-gathers: a hang, which the launcher's timeout fails.
"""
import ast
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhf.engine.distributed import GPU_BACKEND, backend_devices, backend_for, rank_environment

JOB = Path(__file__).with_name("_ranks_job.py")
PACKAGE = Path(__file__).resolve().parents[2] / "rlhf"
TINY = dict(num_layers=2, hidden_size=32, num_heads=2)
COLLECTIVES = {"all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
               "broadcast_object_list", "reduce", "reduce_scatter", "reduce_scatter_tensor", "all_to_all",
               "all_to_all_single", "barrier", "gather", "scatter", "send", "recv", "isend", "irecv"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from rlhf.models.tiny import build_tiny_model, build_tiny_reward_model, build_tiny_tokenizer
    from rlhf.tasks.arithmetic import ArithmeticTask

    root = tmp_path_factory.mktemp("ranks_models")
    build_tiny_tokenizer(root / "tok")
    build_tiny_model(root / "lm", root / "tok", seed=0, **TINY)
    build_tiny_reward_model(root / "rm", root / "tok", seed=1, **TINY)
    ArithmeticTask(num_train_prompts=50, num_eval_prompts=10, num_train_pairs=40, num_eval_pairs=10).write_files(
        root / "data")
    return root


def run_ranks(mode: str, models: Path, out: Path, world: int = 2, timeout_s: float = 420) -> list[dict]:
    """Start the ranks, wait; a rank that fails or is still running at the timeout fails the test."""
    out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(world):
        env = dict(rank_environment(rank, world, port, init_file=str(out / "rendezvous")), OMP_NUM_THREADS="1",
                   GLOO_SOCKET_IFNAME="lo", CUDA_VISIBLE_DEVICES="")
        log = open(out / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, str(JOB), mode, str(models), str(out)], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, cwd=JOB.parent))
    hung, deadline = False, time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            hung = True
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if hung or any(p.returncode for p in procs):
        tails = "\n".join(f"--- rank{r}\n" + (out / f"rank{r}.log").read_text()[-2500:] for r in range(world))
        raise AssertionError(f"{mode}: {'ranks still running after ' + str(timeout_s) + ' s (hang)' if hung else 'a rank failed'}"
                             f"\n{tails}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def test_a_new_world_never_inherits_a_rendezvous():
    """Two worlds meeting in one rendezvous read each other's keys (the CI failure of stop 20)."""
    leaked = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "5", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "1",
              "RLHF_DIST_INIT_METHOD": "file:///tmp/stale", "PATH": "/bin"}
    tcp = rank_environment(1, 2, 29511, base=leaked)
    assert tcp == {"PATH": "/bin", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": "29511"}
    assert rank_environment(0, 2, 29511, init_file="/tmp/fresh", base=leaked)["RLHF_DIST_INIT_METHOD"] == \
        "file:///tmp/fresh"


def test_the_gpu_backend_serves_cpu_tensors_beside_cuda_ones():
    assert backend_for(cuda=False) == "gloo"
    assert backend_for(cuda=True) == GPU_BACKEND
    assert backend_devices(GPU_BACKEND) == {"cpu", "cuda"}
    assert backend_devices("nccl") == {"cuda"} and backend_devices("gloo") == {"cpu"}  # what the rule guards


def test_a_tensor_moves_only_when_the_backend_cannot_take_it_where_it_is():
    import torch

    from rlhf.engine.collectives import communication_device

    cpu = torch.device("cpu")
    assert communication_device(cpu, GPU_BACKEND) == cpu  # gloo beside NCCL: CPU tensors stay put
    assert communication_device(cpu, "gloo") == cpu
    if torch.cuda.is_available():  # an NCCL-only group made by someone else: via the rank's GPU
        assert communication_device(cpu, "nccl").type == "cuda"


def test_every_role_reduces_only_tensors_the_gpu_backend_accepts(models, tmp_path):
    rank0, rank1 = run_ranks("gpu_rules", models, tmp_path)
    assert rank0["backend"] == GPU_BACKEND
    for key in ("sft_train", "sft_eval", "rm_train", "actor_update", "critic_update"):
        assert rank0[key] == rank1[key], key  # all-reduced: every rank reports the global metrics
    for key, value in rank0["actor_update"].items():
        assert value == value, key  # not NaN


def test_the_stand_in_rejects_what_nccl_rejects(models, tmp_path, monkeypatch):
    """Negative control: under an NCCL-only backend the stand-in raises NCCL's error on CPU tensors."""
    import rlhf.engine.distributed as distributed

    monkeypatch.setattr(distributed, "backend_for", lambda cuda: "nccl")
    sys.path.insert(0, str(JOB.parent))
    try:
        import _ranks_job
        import torch
        import torch.distributed as dist

        saved = {n: getattr(dist, n) for n in ("get_backend", "all_reduce")}
        try:
            assert _ranks_job.install_gpu_backend_rules() == "nccl"
            with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
                dist.all_reduce(torch.zeros(1))
        finally:
            for name, fn in saved.items():
                setattr(dist, name, fn)
    finally:
        sys.path.remove(str(JOB.parent))


def test_zero3_generation_and_evaluation_keep_the_ranks_in_lock_step(models, tmp_path):
    rank0, rank1 = run_ranks("zero3", models, tmp_path)
    assert rank0["lengths"] == [1.0, 1.0] and rank1["lengths"] == [8.0, 8.0]  # one rank ends 7 tokens early
    for rank in (rank0, rank1):
        assert rank["responses"] == rank["expected"]  # the same answers as one unsharded model
        assert rank["sft_generate"] == rank["expected"]
        assert rank["lora_responses"] == rank["expected"]  # peft under ZeRO-3 keeps lock-step too
        assert rank["logprob_gap"] < 1e-5 and rank["lora_logprob_gap"] < 1e-5
    assert rank0["sft_eval"] == rank1["sft_eval"]


def test_only_the_collectives_module_calls_torch_distributed_collectives():
    """One place owns the device rule: any other module calling a collective would bypass it."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).as_posix() == "engine/collectives.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in COLLECTIVES
                    and ast.unparse(node.func.value) in ("dist", "torch.distributed", "deepspeed.comm")):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(node.func)}")
    assert not found, found


def test_recomputed_old_logprobs_make_the_first_ratio_exactly_one(models, tmp_path):
    """fp32 sampling matches the training forward up to rounding; bf16 sampling does not, and PPO's
    first ratio is then off 1 unless the old log-probs are recomputed with the training forward."""
    (seen,) = run_ranks("recompute", models, tmp_path, world=1)
    assert seen["gap_fp32"] < 1e-6, seen
    assert seen["gap_bf16"] > 100 * max(seen["gap_fp32"], 1e-7)
    assert seen["ratio_recomputed"] == [1.0, 1.0]
    assert seen["ratio_sampler"] != [1.0, 1.0]


def test_padding_free_micro_batches_compute_the_same_values_and_updates(models, tmp_path):
    """Issue 17: micro-batches grouped by length and trimmed to their own width give every role the
    values the full-width batch gives (on valid tokens), and the same actor and critic updates — on
    ZeRO-3 ranks, where trimming must keep every rank's forwards in lock-step (a hang fails the test).
    Packed to a token budget (algorithm.update.max_tokens_per_micro_batch) the ranks' rows need different
    numbers of micro-batches; the update is still the padded one, and no rank waits forever."""
    results = run_ranks("padding_free", models, tmp_path)
    assert len({seen["budget_local_micro_batches"] for seen in results}) == 2, results[0]["budget_local_micro_batches"]
    for seen in results:
        mask = torch.tensor([[1.0] * int(n) + [0.0] * (seen["widths"][1] - int(n)) for n in seen["response_lengths"]])
        assert seen["widths"][1] - max(seen["response_lengths"]) >= 7  # there was padding to trim
        for key in ("logprobs", "ref", "values"):
            padded = torch.tensor(seen[f"padded_{key}"])
            for mode in ("free", "budget"):
                torch.testing.assert_close(torch.tensor(seen[f"{mode}_{key}"]) * mask, padded * mask, atol=1e-5,
                                           rtol=0, msg=f"{mode} {key}")
        for mode in ("free", "budget"):
            torch.testing.assert_close(torch.tensor(seen[f"{mode}_scores"]), torch.tensor(seen["padded_scores"]),
                                       atol=1e-5, rtol=0)
        for key in ("actor_loss", "critic_loss", "actor_after", "critic_after"):
            assert seen[f"free_{key}"] == pytest.approx(seen[f"padded_{key}"], abs=1e-4, rel=1e-5), key
            assert seen[f"budget_{key}"] == pytest.approx(seen[f"padded_{key}"], abs=1e-4, rel=1e-5), key
