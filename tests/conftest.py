"""Test-session conventions shared by every test file.

- CPU is the default. Files named `*_gpu.py` get the `gpu` marker and are skipped without CUDA.
- Nothing may reach a model/data hub: offline flags are set before transformers/datasets import.
- wandb logs offline; Ray keeps every listener on loopback.
- No test may leave a rank's rendezvous environment (RANK, MASTER_PORT, RLHF_DIST_INIT_METHOD, the
  socket interfaces, ...) behind: every later rank process would inherit it (see `_rank_env_guard`).
"""
import os

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}.items():
    os.environ.setdefault(_key, _value)

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would warn while probing for CUDA


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing means no GPU either
        return False


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (file ends in _gpu.py)")
    has_gpu = None
    for item in items:
        if item.fspath.basename.endswith("_gpu.py"):
            item.add_marker(pytest.mark.gpu)
            if has_gpu is None:
                has_gpu = _cuda_available()
            if not has_gpu:
                item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ray_cluster():
    """One simulated 2-node Ray cluster for the whole test session (Ray starts once, ≈ 10 s).

    Each fake node declares 4 GPUs (Ray hands out CUDA_VISIBLE_DEVICES; torch stays on CPU) and 4
    logical CPUs (actors ask for fractional shares of the 2 real cores). Every listener is on loopback.
    """
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 4})
    cluster.add_node(num_cpus=4, num_gpus=4)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


# What a process reads to join a process group, and the socket interfaces its sockets bind to.
_RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "RLHF_DIST_INIT_METHOD",
             "RLHF_DIST_BACKEND", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


@pytest.fixture(autouse=True)
def _rank_env_guard(request):
    """Fail (and undo) a test that changes the rendezvous environment of the test process for good.

    A leaked RLHF_DIST_INIT_METHOD once made every later world of ranks share one stale rendezvous
    file: gloo connected to dead peers ("Connection refused") and DeepSpeed jobs hung, far from the
    test that caused it. Fixtures of a wider scope set up before this snapshot, so they may keep
    variables for their module or session.
    """
    before = {key: os.environ.get(key) for key in _RANK_ENV}
    yield
    leaked = {key: os.environ.get(key) for key in _RANK_ENV if os.environ.get(key) != before[key]}
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if leaked:
        pytest.fail(f"{request.node.nodeid} left the rank environment changed: {leaked} "
                    "(set it with monkeypatch, or in a launched process's own env)", pytrace=False)
