"""Start `_job.py` as `world` local processes with the torch.distributed environment (loopback only)."""
import socket
import subprocess
import sys
from pathlib import Path

from rlhf.engine.distributed import rank_environment

JOB = Path(__file__).with_name("_job.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(mode: str, stage: int, world: int, out: Path) -> list[subprocess.Popen]:
    """Launch the ranks; their stdout+stderr go to `out/rank<r>.log`."""
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    for rank in range(world):
        # TCP rendezvous, as under torchrun; nothing inherited from this process's environment
        env = dict(rank_environment(rank, world, port), OMP_NUM_THREADS="1")
        log = open(out / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, str(JOB), mode, str(stage), str(out)], env=env,
                                      stdout=log, stderr=subprocess.STDOUT, cwd=JOB.parent))
    return procs


def wait(procs: list[subprocess.Popen], out: Path, timeout: float = 600) -> None:
    """Wait for all ranks; on failure or timeout kill the rest and raise with the logs' tails."""
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    failed = [p for p in procs if p.returncode != 0]
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if failed:
        tails = "\n".join(f"--- {log.name}\n" + log.read_text()[-3000:] for log in sorted(out.glob("rank*.log")))
        raise RuntimeError(f"engine job in {out} failed:\n{tails}")
