"""PPO's roles that read the actor's token ids must share its tokenizer (checked before Ray starts).

The critic's values and the reference's log-probs are per ACTOR token, so a critic or reference with
another tokenizer would be silently wrong; the reward model may differ (its rows are re-encoded,
rlhf/data/retokenize.py). Ray-free: the pipeline's pre-flight (and the dry run) call it.
"""
from __future__ import annotations

from pathlib import Path

from rlhf.config.ppo import PPOConfig


def check_role_tokenizers(cfg: PPOConfig, local_only: bool = False) -> None:
    """The critic and the reference read the actor's token ids (values and log-probs per actor token), so
    their tokenizers must be the actor's: a DataError naming both when one is not. `local_only` (pre-flight):
    compare only tokenizers that are local directories already (hub names are compared when the stage starts).
    The reward model may differ: its rows are re-encoded (rlhf/data/retokenize.py)."""
    from rlhf.data.retokenize import tokenizer_difference
    from rlhf.data.sources import DataError
    from rlhf.models import load_tokenizer

    actor = cfg.actor.tokenizer_path or cfg.actor.path
    roles = {"reference": (cfg.reference.tokenizer_path or cfg.reference_path(),
                           "ppo.reference.path is null, so it is the actor's" if not cfg.reference.path else "")}
    if "critic" in cfg.roles():
        why = "" if cfg.critic.path else ("ppo.critic.path is null, so the critic starts from "
                                          + ("ppo.reward.path" if cfg.reward.path else "ppo.actor.path"))
        roles["critic"] = (cfg.critic.tokenizer_path or cfg.critic_path(), why)
    loaded = {}

    def tokenizer(path: str):
        if path not in loaded:
            loaded[path] = load_tokenizer(path)
        return loaded[path]

    for role, (path, why) in roles.items():
        if path == actor or (local_only and not (Path(path).is_dir() and Path(actor).is_dir())):
            continue
        difference = tokenizer_difference(tokenizer(actor), tokenizer(path))
        if difference:
            raise DataError(f"ppo.{role}", f"its tokenizer ({path}) is not the actor's ({actor}): {difference}. The "
                            f"{role} reads the actor's token ids, so give it a model with the actor's tokenizer "
                            f"(ppo.{role}.path){'; ' + why if why else ''}")
