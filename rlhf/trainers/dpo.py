"""The DPO stage: preference optimisation of the policy against a frozen reference, no reward model.

    summary = run_dpo(cfg, run_dir)   # → run_dir/dpo/final (HF causal LM + tokenizer)

The loop, checkpoints and exact resume are the supervised stages' (rlhf/trainers/supervised.py). The
held-out pairs give the metrics users know from other DPO trainers (eval/loss, eval/rewards/chosen,
…/rejected, …/margins, …/accuracies); with `gold_eval` the policy's greedy gold accuracy on held-out
prompts is measured before the first update and at the end (summary.json dpo.gold_accuracy_initial,
dpo.gold_accuracy, dpo.gold_accuracy_gain): the stage's own measure of success.
"""
from __future__ import annotations

from pathlib import Path

from rlhf.algorithms.preference import dpo_loss
from rlhf.config.supervised import DPOConfig
from rlhf.data.preferences import PreferenceDataset
from rlhf.trainers.supervised import GoldBeforeAfter, GoldEval, SupervisedTrainer, _datasets, gold_eval


class DPOTrainer(GoldBeforeAfter, SupervisedTrainer):
    stage = "dpo"
    plot_keys = ["loss", "rewards/margins", "rewards/accuracies", "eval/rewards/accuracies", "eval/loss"]

    def __init__(self, *args, gold: GoldEval | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gold = gold

    def train_step(self, examples: list) -> dict[str, float]:
        c = self.cfg
        return self.group.call("train_step", examples, c.beta, c.loss_type, c.label_smoothing)

    def evaluate(self) -> dict[str, float]:
        if not self.eval_set:
            return {}
        lp = self.group.call("pair_logprobs", list(self.eval_set))
        loss, metrics = dpo_loss(lp["chosen_B"], lp["rejected_B"], lp["ref_chosen_B"], lp["ref_rejected_B"],
                                 beta=self.cfg.beta, loss_type=self.cfg.loss_type,
                                 label_smoothing=self.cfg.label_smoothing)
        out = {"eval/loss": float(loss), **{f"eval/{k}": float(v) for k, v in metrics.items()}}
        right_B = (lp["chosen_B"] - lp["ref_chosen_B"]) > (lp["rejected_B"] - lp["ref_rejected_B"])
        tags = [e.tag for e in self.eval_set]
        for tag in sorted({t for t in tags if t is not None}):  # which near misses it still prefers (as rm.*)
            rows = [i for i, t in enumerate(tags) if t == tag]
            out[f"eval/accuracy/{tag}"] = float(right_B[rows].float().mean())
        return out

    def final_summary(self, history: list[dict]) -> dict[str, float]:
        last = history[-1] if history else {}
        summary = {"steps": self.state.step, "train_loss": last.get("loss")}
        summary.update({f"train_{k.replace('/', '_')}": last[k] for k in ("rewards/margins", "rewards/accuracies")
                        if k in last})
        summary.update({k.replace("/", "_"): v for k, v in last.items() if k.startswith("eval/")})  # eval_rewards_*
        summary.update(self.gold_summary())
        return summary


def run_dpo(cfg: DPOConfig, run_dir: str | Path, resume: bool = False, stage: str = "dpo") -> dict[str, float]:
    """DPO of `cfg.model` on preference pairs against the frozen `cfg.reference` (default: the same model)."""
    from rlhf.trainers.supervised import _start_group
    from rlhf.workers.dpo import DPOWorker

    cfg.validate()
    d = cfg.data
    train, evaluation = _datasets(cfg, PreferenceDataset, prompt_key=d.prompt_key, chosen_key=d.chosen_key,
                                  rejected_key=d.rejected_key, tag_key=d.tag_key)
    gold = gold_eval(cfg)
    groups = _start_group(cfg, stage, DPOWorker, reference_path=cfg.reference_path(),
                          reference_options=cfg.reference.options if cfg.reference.path else None)
    try:
        return DPOTrainer(cfg, groups[stage], train, evaluation, run_dir=run_dir, stage=stage, gold=gold).fit(resume)
    finally:
        groups.shutdown()
