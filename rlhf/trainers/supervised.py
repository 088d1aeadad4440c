"""Controllers of the supervised stages (SFT, reward model): one worker group, a resumable data stream.

    summary = run_sft(cfg, run_dir)   # → run_dir/sft/final (HF causal LM + tokenizer)
    summary = run_rm(cfg, run_dir)    # → run_dir/rm/final  (HF sequence classifier + tokenizer)

Each step sends one global batch of examples to the group (the workers split it over ranks);
evaluation, atomic checkpoints (engine state + data position) and exact resume work as in PPO.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlhf.config.supervised import RMConfig, SFTConfig
from rlhf.data.preferences import PreferenceDataset
from rlhf.data.sampler import ResumableSampler
from rlhf.data.sft import SFTDataset
from rlhf.models import load_tokenizer
from rlhf.trainers import preemption
from rlhf.trainers.checkpoint import CheckpointManager
from rlhf.workers.faults import maybe_crash
from rlhf.trainers.non_finite import stop_named_on_non_finite
from rlhf.trainers.metrics import MetricsLogger, plot_curves, read_jsonl, summary_table, write_summary
from rlhf.trainers.rm_eval import reward_model_report

logger = logging.getLogger(__name__)


@dataclass
class SupervisedState:
    step: int = 0
    sampler: dict = field(default_factory=dict)


class SupervisedTrainer:
    """The loop shared by SFT and reward-model training; subclasses say how to step and evaluate."""

    stage = "supervised"
    plot_keys: list[str] = []
    state_cls = SupervisedState  # what controller.json holds (a subclass may add fields)

    def __init__(self, cfg, group, train_set, eval_set, *, run_dir: str | Path, stage: str | None = None) -> None:
        self.cfg, self.group = cfg, group
        self.train_set, self.eval_set = train_set, eval_set
        self.stage = stage or self.stage
        self.run_dir = Path(run_dir)
        self.stage_dir = self.run_dir / self.stage
        trainer = cfg.trainer
        self.checkpoints = CheckpointManager(self.stage_dir / "checkpoints", trainer.keep_last)
        self.sampler = ResumableSampler(len(train_set), trainer.batch_size, seed=trainer.seed, drop_last=True)
        self.state = self.state_cls()

    def fit(self, resume: bool = False) -> dict[str, float]:
        trainer = self.cfg.trainer
        resume_step = (self.state.step if self.restore_latest() else -1) if resume else None
        metrics = MetricsLogger(self.run_dir, self.stage, tensorboard=trainer.tensorboard, wandb=trainer.wandb,
                                wandb_project=trainer.wandb_project, total_steps=trainer.total_steps,
                                progress=trainer.progress, resume_step=resume_step,
                                progress_keys=("loss", "accuracy", "eval/loss"),
                                console_every=max(1, trainer.total_steps // 20))
        self.on_start()
        with metrics, preemption.handling():
            while self.state.step < trainer.total_steps:
                step = self.state.step + 1
                with stop_named_on_non_finite(self.stage, self.checkpoints):  # raised before it was applied
                    values = self.train_step([self.train_set[i] for i in self.sampler.next_batch()])
                if self._due(step, trainer.eval_every):
                    values.update(self.evaluate())
                metrics.log(step, values)
                self.state.step = step
                maybe_crash("after_step", step)
                saved = self.save_checkpoint() if self._due(step, trainer.save_every) else None
                if preemption.requested() and step < trainer.total_steps:  # rlhf/trainers/preemption.py
                    raise preemption.Preempted(self.stage, step, saved or self.save_checkpoint())
        return self.finish()

    def on_start(self) -> None:
        """Called once the run is restored (or fresh), before its first step of this invocation."""

    def _due(self, step: int, every: int) -> bool:
        return step == self.cfg.trainer.total_steps or (every > 0 and step % every == 0)

    def train_step(self, examples: list) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def final_summary(self, history: list[dict]) -> dict[str, float]:
        raise NotImplementedError

    def save_checkpoint(self) -> Path:
        self.state.sampler = self.sampler.state_dict()

        def write(directory: Path) -> None:
            self.group.call("save_checkpoint", str(directory / "model"))
            maybe_crash("checkpoint_write", self.state.step)
            (directory / "controller.json").write_text(json.dumps(asdict(self.state)))

        return self.checkpoints.save(self.state.step, write)

    def restore_latest(self) -> bool:
        self.checkpoints.remove_partial()
        latest = self.checkpoints.latest_valid()
        if latest is None:
            return False
        self.group.call("load_checkpoint", str(latest / "model"))
        self.state = self.state_cls(**json.loads((latest / "controller.json").read_text()))
        self.sampler.load_state_dict(self.state.sampler)
        return True

    def finish(self) -> dict[str, float]:
        self.group.call("export_hf", str(self.stage_dir / "final"))
        history = read_jsonl(self.run_dir / "metrics.jsonl", stage=self.stage)
        summary = self.final_summary(history)
        counts = self.group.call("parameter_counts")
        summary.update(trainable_parameters=counts["trainable"], parameters=counts["total"])
        plot_curves(history, self.plot_keys, self.stage_dir / "curves.png")
        write_summary(self.run_dir / "summary.json", self.stage, summary)
        print(summary_table(summary, title=f"{self.stage} summary"))
        return summary


class SFTTrainer(SupervisedTrainer):
    """SFT; with `gold` (prompts with references and a verifier) the summary also holds the final
    model's greedy gold accuracy on them (`gold_accuracy`), the stage's own measure of success."""

    stage = "sft"
    plot_keys = ["loss", "eval/loss", "grad_norm", "lr"]

    def __init__(self, *args, gold: GoldEval | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gold = gold

    def train_step(self, examples: list) -> dict[str, float]:
        return self.group.call("train_step", examples)

    def evaluate(self) -> dict[str, float]:
        if not self.eval_set:
            return {}
        return self.group.call("eval_loss", list(self.eval_set))

    def final_summary(self, history: list[dict]) -> dict[str, float]:
        last = history[-1] if history else {}
        summary = {"steps": self.state.step, "train_loss": last.get("loss")}
        if "eval/loss" in last:
            summary.update(eval_loss=last["eval/loss"], eval_perplexity=last["eval/perplexity"])
        if self.gold is not None:
            summary.update(self.gold.evaluate(self.group))
        return summary


class RewardModelTrainer(SupervisedTrainer):
    stage = "rm"
    plot_keys = ["loss", "accuracy", "eval/accuracy", "eval/ece", "eval/margin_mean"]

    def train_step(self, examples: list) -> dict[str, float]:
        return self.group.call("train_step", examples, self.cfg.margin)

    def evaluate(self) -> dict[str, float]:
        if not self.eval_set:
            return {}
        scores = self.group.call("score_pairs", list(self.eval_set))
        tags = [e.tag for e in self.eval_set]
        report = reward_model_report(scores["chosen_B"], scores["rejected_B"], tags, self.cfg.calibration_bins)
        return {f"eval/{k}": v for k, v in report.items()}

    def final_summary(self, history: list[dict]) -> dict[str, float]:
        last = history[-1] if history else {}
        summary = {"steps": self.state.step, "train_loss": last.get("loss"), "train_accuracy": last.get("accuracy")}
        summary.update({k[len("eval/"):] if k.startswith("eval/") else k: v for k, v in last.items()
                        if k.startswith("eval/")})
        if "accuracy" in summary:  # the name recipes and users read: rm.eval_accuracy
            summary["eval_accuracy"] = summary.pop("accuracy")
        return summary


@dataclass
class GoldState(SupervisedState):
    gold_initial: dict | None = None  # the gold evaluation before the first update (kept across resumes)


class GoldBeforeAfter:
    """For a SupervisedTrainer with `self.gold` (a GoldEval or None): the policy's gold accuracy before its
    first update (`on_start`, once: a resumed run has it in its state) and, at the end, after it with the
    gains (`gold_summary`)."""

    state_cls = GoldState
    gold: "GoldEval | None" = None

    def on_start(self) -> None:
        if self.gold is not None and self.state.gold_initial is None and self.state.step == 0:
            self.state.gold_initial = self.gold.evaluate(self.group)

    def gold_summary(self) -> dict[str, float]:
        """The final evaluation, plus `<key>_initial` and `<key>_gain` of gold_accuracy (and of
        gold_accuracy_sampled when measured); {} without a gold evaluation."""
        if self.gold is None:
            return {}
        final, initial = self.gold.evaluate(self.group), self.state.gold_initial or {}
        summary = dict(final)
        for key in ("gold_accuracy", "gold_accuracy_sampled"):
            if key in initial and key in final:
                summary.update({f"{key}_initial": initial[key], f"{key}_gain": final[key] - initial[key]})
        return summary


@dataclass
class GoldEval:
    """Held-out prompts with references and the task verifier that scores greedy answers to them."""

    prompts: list  # PromptExample-like items (.input_ids, .reference)
    verifier: object  # callable (response text, reference) -> reward in [0, 1]; 1 = correct
    max_new_tokens: int
    sample_temperature: float | None = None  # also the sampled accuracy at this temperature; None = greedy only
    samples_per_prompt: int = 1

    def evaluate(self, group) -> dict[str, float]:
        """{"gold_accuracy", "gold_eval_prompts", "gold_response_length"} of the group's model, greedy; with
        `sample_temperature` also "gold_accuracy_sampled" (mean over `samples_per_prompt` seeded samples)."""
        from rlhf.models import SamplingParams

        items = [(list(e.input_ids), e.reference) for e in self.prompts]
        params = SamplingParams(max_new_tokens=self.max_new_tokens, greedy=True, n=1, seed=0)
        batch = group.call("generate", items, params)
        out = {"gold_accuracy": self._accuracy(batch), "gold_eval_prompts": len(items),
               "gold_response_length": float(batch.mask_BT.sum(-1).mean())}
        if self.sample_temperature is not None:
            params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.sample_temperature,
                                    n=self.samples_per_prompt, seed=0)
            out["gold_accuracy_sampled"] = self._accuracy(group.call("generate", items, params))
        return out

    def _accuracy(self, batch) -> float:
        gold = [float(self.verifier(text, ref)) for text, ref in zip(batch.responses, batch.references)]
        return sum(gold) / len(gold)


def gold_eval(cfg: SFTConfig) -> GoldEval | None:
    """The SFT (or DPO) stage's GoldEval from `cfg.gold_eval` (None when it names no prompts)."""
    return make_gold_eval(cfg.gold_eval, cfg.model.tokenizer_path or cfg.model.path, cfg.data.use_chat_template)


def make_gold_eval(g, tokenizer_path: str, use_chat_template: bool | None) -> GoldEval | None:
    """The GoldEval of a GoldEvalConfig `g` (None when it names no prompts); prompts rendered with
    `use_chat_template` as the stage's own rows are."""
    from rlhf.data.prompts import PromptDataset
    from rlhf.tasks import get_task

    if not g.prompts:
        return None
    tokenizer = load_tokenizer(tokenizer_path, padding_side="left")
    data = PromptDataset(g.prompts, tokenizer, split=g.split, prompt_key=g.prompt_key, reference_key=g.reference_key,
                         require_reference=True, max_prompt_len=g.max_prompt_len, overlong="error",
                         use_chat_template=use_chat_template)
    if len(data) == 0:
        raise ValueError(f"gold_eval.prompts={g.prompts!r} has no prompts")
    return GoldEval([data[i] for i in range(min(len(data), g.max_prompts))],
                    get_task(g.task, **dict(g.task_kwargs)).reward, g.max_new_tokens, g.sample_temperature,
                    g.samples_per_prompt)


# --- stage entry points ----------------------------------------------------------------------------
def _datasets(cfg, dataset_cls, **keys):
    tokenizer = load_tokenizer(cfg.model.tokenizer_path or cfg.model.path, padding_side="right")
    data = cfg.data
    common = dict(max_len=data.max_len, overlong=data.overlong, use_chat_template=data.use_chat_template, **keys)
    train = dataset_cls(data.train, tokenizer, split=data.train_split, **common)
    if len(train) < cfg.trainer.batch_size:
        raise ValueError(f"data.train has {len(train)} usable rows, fewer than trainer.batch_size="
                         f"{cfg.trainer.batch_size}")
    evaluation = None
    if data.eval:
        full = dataset_cls(data.eval, tokenizer, split=data.eval_split, **common)
        evaluation = [full[i] for i in range(min(len(full), data.max_eval_rows))]
    return train, evaluation


def _start_group(cfg, role: str, worker_cls, **init_kwargs):
    from rlhf.distributed.placement import cluster_from_ray, plan_roles
    from rlhf.distributed.worker_group import RoleGroups
    from rlhf.trainers.ppo_stage import init_ray

    init_ray()
    plan = plan_roles({role: cfg.placement}, cfg.use_gpu, cluster=cluster_from_ray())
    groups = RoleGroups.create(plan, {role: worker_cls}, seed=cfg.trainer.seed,
                               call_timeout_s=cfg.trainer.call_timeout_s)
    try:
        accum = cfg.trainer.grad_accum_steps(cfg.placement.world_size)
        groups[role].call("init_model", cfg.model.path, cfg.model.options, cfg.engine,
                          cfg.trainer.micro_batch_size, accum, cfg.model.tokenizer_path, **init_kwargs)
    except BaseException:
        groups.shutdown()
        raise
    return groups


def run_sft(cfg: SFTConfig, run_dir: str | Path, resume: bool = False, stage: str = "sft") -> dict[str, float]:
    """Supervised fine-tuning of `cfg.model` on `cfg.data` (loss on response tokens only)."""
    from rlhf.workers.supervised import SFTWorker

    cfg.validate()
    d = cfg.data
    train, evaluation = _datasets(cfg, SFTDataset, prompt_key=d.prompt_key, response_key=d.response_key,
                                  messages_key=d.messages_key, train_on=d.train_on)
    gold = gold_eval(cfg)
    groups = _start_group(cfg, stage, SFTWorker)
    try:
        return SFTTrainer(cfg, groups[stage], train, evaluation, run_dir=run_dir, stage=stage, gold=gold).fit(resume)
    finally:
        groups.shutdown()


def run_rm(cfg: RMConfig, run_dir: str | Path, resume: bool = False, stage: str = "rm") -> dict[str, float]:
    """Bradley–Terry reward-model training of `cfg.model` on preference pairs, with held-out evaluation."""
    from rlhf.workers.supervised import RewardModelWorker

    cfg.validate()
    d = cfg.data
    train, evaluation = _datasets(cfg, PreferenceDataset, prompt_key=d.prompt_key, chosen_key=d.chosen_key,
                                  rejected_key=d.rejected_key, tag_key=d.tag_key)
    groups = _start_group(cfg, stage, RewardModelWorker)
    try:
        return RewardModelTrainer(cfg, groups[stage], train, evaluation, run_dir=run_dir, stage=stage).fit(resume)
    finally:
        groups.shutdown()
