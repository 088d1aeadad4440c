"""The `rlhf` command.

Until the recipe stages land (Hydra recipes: sft → rm → ppo), the command checks that the
installation is complete — every runtime dependency imports and the math core runs — and says so.
Run `rlhf --help` for usage.
"""
from __future__ import annotations

import importlib
import sys

RUNTIME_MODULES = (
    "torch", "transformers", "datasets", "tokenizers", "safetensors", "ray", "deepspeed",
    "hydra", "omegaconf", "peft", "wandb", "tqdm", "matplotlib",
)

USAGE = """usage: rlhf [--help] [recipe=NAME ...]

RLHF orchestration: actor, critic, reward and reference models as Ray actors, trained with DeepSpeed.

No recipes are available yet in this version: `rlhf` with no arguments checks the installation
(every dependency imports, the PPO math runs on a toy batch) and exits 0 when it is complete.
"""


def check_installation() -> list[str]:
    """Import every runtime dependency; return the names that fail, each with its error."""
    import os

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would warn while probing for CUDA
    missing = []
    for name in RUNTIME_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any import failure is a broken install
            missing.append(f"{name}: {type(exc).__name__}: {exc}")
    return missing


def smoke_math() -> dict[str, float]:
    """One KL-penalized GAE + PPO-loss evaluation on a toy batch: proves the math core runs."""
    import torch

    from rlhf.algorithms import gae, kl_penalized_rewards, masked_whiten, ppo_policy_loss

    g = torch.Generator().manual_seed(0)
    logprobs_BT = -torch.rand(4, 6, generator=g)
    ref_logprobs_BT = -torch.rand(4, 6, generator=g)
    values_BT = torch.randn(4, 6, generator=g)
    mask_BT = torch.ones(4, 6)
    mask_BT[1, 3:] = 0
    scores_B = torch.tensor([1.0, -1.0, 0.5, 0.0])
    rewards_BT, _ = kl_penalized_rewards(scores_B, logprobs_BT, ref_logprobs_BT, mask_BT, kl_coef=0.05)
    advantages_BT, _ = gae(rewards_BT, values_BT, mask_BT, gamma=1.0, lam=0.95)
    advantages_BT = masked_whiten(advantages_BT, mask_BT)
    loss, metrics = ppo_policy_loss(logprobs_BT, logprobs_BT, advantages_BT, mask_BT)
    return {"policy_loss": float(loss), "clip_frac": float(metrics["clip_frac"])}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    if args:
        print(f"rlhf: no recipes are available yet in this version (got: {' '.join(args)}).\n"
              "Run `rlhf` with no arguments to check the installation.", file=sys.stderr)
        return 2
    missing = check_installation()
    if missing:
        print("rlhf: installation incomplete:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    result = smoke_math()
    import rlhf

    print(f"rlhf {rlhf.__version__}: installation OK ({len(RUNTIME_MODULES)} dependencies import; "
          f"PPO math smoke test: policy_loss={result['policy_loss']:.4f}).\n"
          "No recipes yet: see README.md for what is available.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
