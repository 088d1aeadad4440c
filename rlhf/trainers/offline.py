"""The offline stage: the actor trained on stored rollouts with a policy loss, no sampling at all.

    summary = run_offline(cfg, run_dir)   # → run_dir/offline/final (HF causal LM + tokenizer)

Each step draws `trainer.batch_size` rows (rlhf/data/offline.py: token ids, trained-token mask, behaviour
log-probs, advantages computed once over the dataset's groups), asks the reference for its log-probs
where they are used, and makes one optimizer update of the actor with the configured policy loss
(rlhf/algorithms/losses.py), through the same `ActorWorker.update` PPO uses. Per trained token t of a
row with advantage A and behaviour log-prob b_t (the weights that sampled it):

    r_t = exp(log π(t) − b_t)
    importance_sampling   l = −r_t·A
    ppo                   l = max(−r_t·A, −clip(r_t, 1 − ε_low, 1 + ε_high)·A)
    cispo                 l = −sg(clip(r_t, 1 − ε_low, 1 + ε_high))·A·log π(t)
    dro                   l = −(A·log π(t) − ½·β·(log π(t) − b_t)²)

plus kl_loss_coef·KL(π‖π_ref) (policy_loss.kl_loss_estimator) when set, normalised by the GLOBAL count of
trained tokens (token-mean) or rows, so neither ranks nor micro-batches change the update. The loop,
checkpoints and exact resume are the supervised stages' (rlhf/trainers/supervised.py); with `gold_eval`
the policy's gold accuracy on held-out prompts is measured before the first update and at the end
(summary.json offline.gold_accuracy_initial / gold_accuracy / gold_accuracy_gain, and the sampled ones
with gold_eval.sample_temperature), next to the data's own gold mean (offline.data_gold_mean): the
accuracy of the policies that sampled it.
"""
from __future__ import annotations

from pathlib import Path

from rlhf.config.algorithm import UpdateSchedule
from rlhf.config.offline import OfflineConfig
from rlhf.data.offline import OfflineDataset, offline_batch
from rlhf.trainers.supervised import GoldBeforeAfter, GoldEval, SupervisedTrainer, make_gold_eval


class OfflineTrainer(GoldBeforeAfter, SupervisedTrainer):
    stage = "offline"
    plot_keys = ["actor/loss", "actor/approx_kl", "actor/ratio_mean", "actor/entropy", "eval/gold_accuracy"]

    def __init__(self, cfg: OfflineConfig, groups, train_set: OfflineDataset, *, run_dir: str | Path,
                 stage: str = "offline", gold: GoldEval | None = None, pad_token_id: int = 0) -> None:
        super().__init__(cfg, groups["actor"], train_set, None, run_dir=run_dir, stage=stage)
        self.groups, self.gold, self.pad_token_id = groups, gold, pad_token_id
        self.schedule = UpdateSchedule(epochs=1, num_minibatches=1, micro_batch_size=cfg.trainer.micro_batch_size,
                                       shuffle=False, padding_free=cfg.algorithm.padding_free)

    def train_step(self, examples: list) -> dict[str, float]:
        c = self.cfg
        batch = offline_batch(examples, self.pad_token_id)
        if "reference" in self.groups:
            ref_BT = self.groups["reference"].call("logprobs", batch, c.algorithm.temperature)
            batch.ref_logprobs_BT = ref_BT * batch.mask_BT
            if c.data.behaviour == "reference":
                batch.old_logprobs_BT = batch.ref_logprobs_BT
        step = self.state.step + 1
        metrics = self.group.call("update", batch, c.algorithm.policy_loss, self.schedule, step,
                                  c.algorithm.temperature)
        mask_BT = batch.mask_BT
        metrics.update({"data/reward_mean": float(batch.scores_B.mean()),
                        "data/advantage_abs_mean": float((batch.advantages_BT.abs() * mask_BT).sum() / mask_BT.sum()),
                        "data/trained_tokens": float(mask_BT.sum())})
        return metrics

    def evaluate(self) -> dict[str, float]:
        if self.gold is None or self.state.step + 1 == self.cfg.trainer.total_steps:
            return {}  # the last step's evaluation is the final one (final_summary)
        return {f"eval/{k}": v for k, v in self.gold.evaluate(self.group).items()
                if k.startswith("gold_accuracy")}

    def final_summary(self, history: list[dict]) -> dict[str, float]:
        last = history[-1] if history else {}
        return {"steps": self.state.step, "train_loss": last.get("actor/loss"),
                "approx_kl": last.get("actor/approx_kl"), **self.train_set.report(), **self.gold_summary()}


def run_offline(cfg: OfflineConfig, run_dir: str | Path, resume: bool = False,
                stage: str = "offline") -> dict[str, float]:
    """Offline RL of `cfg.actor` on `cfg.data` (see the module docstring)."""
    from rlhf.models import load_tokenizer

    cfg.validate()
    tokenizer_path = cfg.actor.tokenizer_path or cfg.actor.path
    tokenizer = load_tokenizer(tokenizer_path, padding_side="left")
    data = OfflineDataset(cfg.data, tokenizer, advantage=cfg.algorithm.advantage, eps=cfg.algorithm.eps)
    if len(data) < cfg.trainer.batch_size:
        raise ValueError(f"offline.data.train has {len(data)} usable rows, fewer than offline.trainer.batch_size="
                         f"{cfg.trainer.batch_size}")
    gold = make_gold_eval(cfg.gold_eval, tokenizer_path, cfg.data.use_chat_template)
    groups = start_offline_groups(cfg)
    try:
        trainer = OfflineTrainer(cfg, groups, data, run_dir=run_dir, stage=stage, gold=gold,
                                 pad_token_id=tokenizer.pad_token_id)
        return trainer.fit(resume)
    finally:
        groups.shutdown()


def start_offline_groups(cfg: OfflineConfig):
    """The actor (and, where used, the reference) worker groups with their models loaded."""
    from rlhf.distributed.placement import cluster_from_ray, plan_placement
    from rlhf.distributed.worker_group import RoleGroups
    from rlhf.trainers.ppo_stage import init_ray
    from rlhf.workers.actor import ActorWorker
    from rlhf.workers.reference import ReferenceWorker

    init_ray()
    roles = cfg.roles()
    plan = plan_placement(cfg.placement, roles, cluster=cfg.placement.cluster or cluster_from_ray())
    classes = {"actor": ActorWorker, "reference": ReferenceWorker}
    groups = RoleGroups.create(plan, {r: classes[r] for r in roles}, seed=cfg.trainer.seed,
                               call_timeout_s=cfg.trainer.call_timeout_s)
    try:
        accum = cfg.trainer.grad_accum_steps(cfg.placement.actor.world_size)
        pending = [groups["actor"].call_async("init_model", cfg.actor.path, cfg.actor.options, cfg.engine,
                                              cfg.trainer.micro_batch_size, accum, cfg.actor.tokenizer_path)]
        if "reference" in groups:
            pending.append(groups["reference"].call_async("init_model", cfg.reference_path(), cfg.reference.options,
                                                          cfg.reference_engine, cfg.forward_micro_batch_size))
        for call in pending:
            call.result()
    except BaseException:
        groups.shutdown()
        raise
    return groups
