"""The stage pipeline behind `rlhf recipe=...`: prepare → sft → rm → dpo → ppo → offline, each stage's output feeding the next.

    cfg = <a validated RunConfig>          # rlhf.cli composes it from the recipe and the overrides
    report = preflight(cfg)                # every check that needs no Ray; raises PipelineError / PlanError
    print(describe_plan(cfg, report))      # what dry_run=true prints (rlhf.trainers.plan_text)
    summary = run_pipeline(cfg, report)    # runs the stages; returns summary.json's content

Stages and what they leave in run_dir (the next stage's inputs, wired by interpolation in the recipe,
e.g. `ppo.actor.path: ${run_dir}/sft/final`):
    prepare  data/ (a task's JSONL files) and base/ (a tiny model + tokenizer), when the recipe asks
             (rlhf.trainers.prepare_stage.prepare)
    sft      sft/final/   HF causal LM + tokenizer          (rlhf.trainers.supervised.run_sft)
    rm       rm/final/    HF sequence classifier + tokenizer (run_rm); summary.json rm.score_mean/std
    dpo      dpo/final/   HF causal LM + tokenizer          (rlhf.trainers.dpo.run_dpo)
    ppo      ppo/final/   HF causal LM + tokenizer          (rlhf.trainers.ppo_stage.run_ppo);
             ppo/rollouts/ with ppo.trainer.save_rollouts       (rlhf.trainers.rollout_store)
    offline  offline/final/ HF causal LM + tokenizer        (rlhf.trainers.offline.run_offline)
Every trainer stage appends to run_dir/metrics.jsonl and merges its entry into run_dir/summary.json.

Decisions per stage (`StageDecision`), made before anything starts:
- not selected (`stages=[...]` leaves it out): its outputs that a selected stage reads must exist,
  or the error names the missing path, the field that reads it and the stage that makes it;
- resume=true on a run_dir that does not exist or holds no earlier run is refused (PipelineError):
  a mistyped path must not quietly become a fresh run.
- resume=true: a stage is *done* when its summary entry, its final/ and `steps >= total_steps` are
  all there — it is skipped; the first unfinished stage continues from its last checkpoint; later
  stages start fresh (stale leftovers of theirs are removed, with a warning);
- resume=false: a stage starts fresh; if run_dir already holds its outputs, the run is refused unless
  overwrite=true (then they are removed: its directory, metrics records and summary entry).

`ppo_reward_norm_from_rm=true` sets ppo.algorithm.reward.normalize_mean/std to the reward model's
held-out score mean/std (summary.json rm.score_mean / rm.score_std) just before PPO starts.

Nothing here imports Ray: the dry run stays Ray-free, and the stage entry points start Ray themselves.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from rlhf.config.io import save_yaml
from rlhf.config.placement import NodeSpec
from rlhf.config.run import RunConfig
from rlhf.distributed.placement import PlacementPlan, plan_placement, plan_roles

logger = logging.getLogger(__name__)

TRAINER_STAGES = ("sft", "rm", "dpo", "ppo", "offline")


class PipelineError(ValueError):
    """The run cannot start as configured (missing inputs, conflicting outputs, bad values)."""


@dataclass
class StageDecision:
    stage: str
    action: str  # "run" (fresh), "resume" (from its last checkpoint), "skip" (done), "not selected"
    reason: str = ""
    clear: bool = False  # remove this stage's previous outputs before it starts


@dataclass
class Preflight:
    """Everything decided and checked before a stage starts."""

    run_dir: Path
    decisions: list[StageDecision]
    plans: dict[str, PlacementPlan] = field(default_factory=dict)
    cluster: list[NodeSpec] = field(default_factory=list)
    cluster_source: str = ""

    def to_run(self) -> list[StageDecision]:
        return [d for d in self.decisions if d.action in ("run", "resume")]


# --- what each stage makes ---------------------------------------------------------------------------
def stage_outputs(cfg: RunConfig, run_dir: Path) -> dict[str, list[Path]]:
    """The paths each stage of the recipe writes (the ones later stages may read)."""
    outputs: dict[str, list[Path]] = {s: [] for s in cfg.recipe_stages}
    if "prepare" in outputs:
        if cfg.prepare.task:
            outputs["prepare"].append(run_dir / "data")
        if cfg.prepare.tiny_model is not None:
            outputs["prepare"].append(run_dir / "base")
    for stage in TRAINER_STAGES:
        if stage in outputs:
            outputs[stage].append(run_dir / stage / "final")
    if "ppo" in outputs and cfg.ppo.trainer.save_rollouts:
        from rlhf.trainers.rollout_store import ROLLOUT_DIR

        outputs["ppo"].append(run_dir / "ppo" / ROLLOUT_DIR)
    return outputs


def stage_inputs(cfg: RunConfig, stage: str) -> dict[str, str]:
    """Field name → path (or hub name) of every model and data source `stage` reads."""
    if stage == "prepare":
        return {}
    if stage in ("sft", "rm", "dpo"):
        section = getattr(cfg, stage)
        fields = {"model.path": section.model.path, "model.tokenizer_path": section.model.tokenizer_path,
                  "data.train": section.data.train, "data.eval": section.data.eval}
        if stage in ("sft", "dpo"):
            fields["gold_eval.prompts"] = section.gold_eval.prompts
        if stage == "dpo":
            fields["reference.path"] = section.reference.path
    elif stage == "offline":
        off = cfg.offline
        fields = {"actor.path": off.actor.path, "actor.tokenizer_path": off.actor.tokenizer_path,
                  "reference.path": off.reference_path() if "reference" in off.roles() else None,
                  "data.train": off.data.train, "gold_eval.prompts": off.gold_eval.prompts}
    else:
        ppo = cfg.ppo
        fields = {"actor.path": ppo.actor.path, "actor.tokenizer_path": ppo.actor.tokenizer_path,
                  "reference.path": ppo.reference_path(), "critic.path": ppo.critic_path() if "critic" in ppo.roles()
                  else None, "data.train": ppo.data.train, "data.eval": ppo.data.eval}
        if ppo.reward_role.uses_model:
            fields["reward.path"] = ppo.reward.path
    return {f"{stage}.{k}": v for k, v in fields.items() if v}


def _is_local_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or Path(value).suffix.lower() in (".json", ".jsonl",
                                                                                      ".parquet", ".csv")


# --- resume bookkeeping ---------------------------------------------------------------------------------
def read_summary(run_dir: Path) -> dict:
    from rlhf.trainers.metrics import read_summary as read_summary_file

    return read_summary_file(run_dir / "summary.json")


def _total_steps(cfg: RunConfig, stage: str) -> int:
    return getattr(cfg, stage).trainer.total_steps


def stage_done(cfg: RunConfig, stage: str, run_dir: Path, summary: dict) -> tuple[bool, str]:
    """(finished?, why) for one stage of a run_dir."""
    if stage == "prepare":
        from rlhf.trainers.prepare_stage import PREPARE_SPEC

        missing = [p for p in stage_outputs(cfg, run_dir)["prepare"] if not (p / PREPARE_SPEC).exists()]
        return (not missing, "outputs present" if not missing else f"{missing[0]} missing")
    entry, final = summary.get(stage), run_dir / stage / "final"
    if entry is None:
        return False, "no summary entry"
    if not final.is_dir():
        return False, f"{final} missing"
    steps, total = entry.get("steps") or 0, _total_steps(cfg, stage)
    if steps < total:
        return False, f"finished {steps} of {total} steps"
    return True, f"finished ({steps} steps)"


def _has_outputs(stage: str, run_dir: Path, summary: dict) -> bool:
    return stage in summary or (run_dir / stage).exists()


def holds_a_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds anything an earlier invocation wrote (summary, metrics, a stage's dir)."""
    if not run_dir.is_dir():
        return False
    marks = ["summary.json", "metrics.jsonl", "data", "base", *TRAINER_STAGES]
    return any((run_dir / name).exists() for name in marks)


def decide(cfg: RunConfig, run_dir: Path) -> list[StageDecision]:
    """What happens to each stage of the recipe in this invocation (see the module doc)."""
    if cfg.resume and not holds_a_run(run_dir):
        state = "does not exist" if not run_dir.exists() else "holds no earlier run (no summary.json, metrics.jsonl or stage outputs)"
        raise PipelineError(f"resume=true but run_dir {run_dir} {state}: nothing to continue. Check the path "
                            "(a typo starts nothing now, rather than a fresh run that looks resumed); to start "
                            "fresh, leave out resume=true")
    summary = read_summary(run_dir)
    selected = cfg.selected_stages
    decisions, resumed = [], False
    for stage in cfg.recipe_stages:
        if stage not in selected:
            decisions.append(StageDecision(stage, "not selected"))
        elif stage == "prepare":  # idempotent: it reuses what is there and refuses different settings
            decisions.append(StageDecision(stage, "run", "idempotent: reuses outputs made with the same settings"))
        elif cfg.resume:
            done, why = stage_done(cfg, stage, run_dir, summary)
            if done:
                decisions.append(StageDecision(stage, "skip", why))
            elif not resumed:
                resumed = True
                decisions.append(StageDecision(stage, "resume", f"{why}: continues from its last checkpoint"))
            else:
                stale = _has_outputs(stage, run_dir, summary)
                decisions.append(StageDecision(stage, "run", "after a resumed stage: starts fresh"
                                               + (" (removing stale outputs)" if stale else ""), clear=stale))
        elif _has_outputs(stage, run_dir, summary):
            if not cfg.overwrite:
                raise PipelineError(
                    f"run_dir {run_dir} already holds outputs of stage {stage!r} ({run_dir / stage}"
                    f"{', summary.json entry' if stage in summary else ''}) and resume=false: pass resume=true "
                    f"to continue or skip it, overwrite=true to discard them and start the stage fresh, "
                    f"or choose another run_dir")
            decisions.append(StageDecision(stage, "run", "overwrite=true: previous outputs removed", clear=True))
        else:
            decisions.append(StageDecision(stage, "run", "fresh"))
    return decisions


def clear_stage(run_dir: Path, stage: str) -> None:
    """Remove one stage's outputs: its directory, TensorBoard run, metrics records and summary entry."""
    from rlhf.trainers.metrics import drop_summary_stage, truncate_after

    logger.warning("stage %s: removing its previous outputs in %s", stage, run_dir)
    for path in (run_dir / stage, run_dir / "tensorboard" / stage):
        if path.exists():
            shutil.rmtree(path)
    truncate_after(run_dir / "metrics.jsonl", stage, -(2**62))
    drop_summary_stage(run_dir / "summary.json", stage)


# --- pre-flight: every check before Ray ------------------------------------------------------------
def local_cluster() -> list[NodeSpec]:
    """This machine as one node (CPU count, visible CUDA GPUs and their memory)."""
    import torch

    gpus = torch.cuda.device_count()
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30 if gpus else 0.0
    return [NodeSpec(gpus=gpus, cpus=float(os.cpu_count() or 1), gpu_memory_gb=memory)]


def preflight(cfg: RunConfig) -> Preflight:
    """Validate the selected stages, their inputs and their placement plans. Raises PipelineError
    (or PlanError for a placement that cannot fit); starts nothing."""
    if not cfg.run_dir:
        raise PipelineError("run_dir is not set (the command line sets a default before validation)")
    run_dir = Path(cfg.run_dir)
    decisions = decide(cfg, run_dir)
    report = Preflight(run_dir=run_dir, decisions=decisions)
    to_run = [d.stage for d in report.to_run()]
    for stage in to_run:
        _validate_stage(cfg, stage)
    _check_inputs(cfg, run_dir, decisions)
    if cfg.resume and not cfg.dry_run:
        _check_resume(cfg, run_dir, to_run)
    _check_data(cfg, run_dir, decisions)
    if "ppo" in to_run:
        _check_tokenizers(cfg)
    _check_reward_norm(cfg, run_dir, to_run)
    if cfg.ppo.placement.cluster:
        report.cluster, report.cluster_source = list(cfg.ppo.placement.cluster), "described (ppo.placement.cluster)"
    elif os.environ.get("RAY_ADDRESS"):
        report.cluster, report.cluster_source = [], "the Ray cluster at RAY_ADDRESS (checked when it is joined)"
    else:
        report.cluster, report.cluster_source = local_cluster(), "this machine"
    cluster = report.cluster or None
    for stage in to_run:
        if stage in ("sft", "rm", "dpo"):
            section = getattr(cfg, stage)
            report.plans[stage] = plan_roles({stage: section.placement}, section.use_gpu, cluster)
        elif stage == "ppo":
            report.plans[stage] = plan_placement(cfg.ppo.placement, cfg.ppo.roles(), cluster)
        elif stage == "offline":
            report.plans[stage] = plan_placement(cfg.offline.placement, cfg.offline.roles(), cluster)
    return report


def _validate_stage(cfg: RunConfig, stage: str) -> None:
    from rlhf.tasks import get_task

    if stage == "prepare":
        if cfg.prepare.task:
            get_task(cfg.prepare.task, **dict(cfg.prepare.task_kwargs))  # unknown task / bad kwargs raise
        return
    section = getattr(cfg, stage)
    try:
        section.validate()
    except ValueError as exc:
        raise PipelineError(f"{stage}: {exc}") from None
    tasks = []  # (field of the task name, field of its kwargs, name, kwargs)
    if stage == "ppo":
        tasks.append(("ppo.task.name", "ppo.task.kwargs", cfg.ppo.task.name, cfg.ppo.task.kwargs))
    if stage in ("sft", "dpo", "offline") and getattr(cfg, stage).gold_eval.prompts:
        g = getattr(cfg, stage).gold_eval
        tasks.append((f"{stage}.gold_eval.task", f"{stage}.gold_eval.task_kwargs", g.task, g.task_kwargs))
    for name_field, kwargs_field, name, kwargs in tasks:
        if name:
            try:
                get_task(name, **dict(kwargs))
            except (ValueError, TypeError) as exc:
                raise PipelineError(f"{name_field}={name!r} / {kwargs_field}: {exc}") from None
    if stage == "ppo" and cfg.ppo.env.name:  # a registered name, or a dotted path imported here first
        from rlhf.envs import env_class

        try:
            env_class(cfg.ppo.env.name)
        except ValueError as exc:
            raise PipelineError(f"ppo.env.name: {exc}") from None
    if stage == "ppo" and cfg.ppo.reward_role.reward_fn:  # imported here first: a bad path fails before Ray starts
        from rlhf.tasks.registry import import_object

        try:
            fn = import_object(cfg.ppo.reward_role.reward_fn, "reward function")
        except ValueError as exc:
            raise PipelineError(f"ppo.reward_role.reward_fn: {exc}") from None
        if not callable(fn):
            raise PipelineError(f"ppo.reward_role.reward_fn={cfg.ppo.reward_role.reward_fn!r} is a "
                                f"{type(fn).__name__}, not a function (response, reference) -> float")


def _check_inputs(cfg: RunConfig, run_dir: Path, decisions: list[StageDecision]) -> None:
    """Every path a running stage reads must exist, or be made by a stage that runs before it."""
    producers = {p: s for s, paths in stage_outputs(cfg, run_dir).items() for p in paths}
    runs = {d.stage for d in decisions if d.action in ("run", "resume")}
    order = list(cfg.recipe_stages)
    for decision in decisions:
        if decision.stage not in runs:
            continue
        for name, value in stage_inputs(cfg, decision.stage).items():
            path = Path(value).expanduser()
            producer = next((s for p, s in producers.items() if path == p or p in path.parents), None)
            if producer is not None and producer in runs and order.index(producer) < order.index(decision.stage):
                continue  # made earlier in this invocation
            if producer is None and not (path.is_absolute() and run_dir in path.parents) and not _is_local_path(value):
                continue  # a hub name: resolved (or refused) by the loader
            if path.exists() or (glob.has_magic(value) and glob.glob(str(path))):
                continue
            made_by = (f"it is made by stage {producer!r}, which is not selected in this run (stages="
                       f"{cfg.selected_stages}): run it first or add it to stages" if producer else
                       "no stage of this recipe makes it")
            raise PipelineError(f"{name}={value} does not exist: {made_by}")


def _check_resume(cfg: RunConfig, run_dir: Path, to_run: list[str]) -> None:
    """A resumed run must be the run it continues: same configuration (but SAFE_CHANGES and
    `resume_allow_changes`) and same input files (rlhf/trainers/resume_check.py)."""
    from omegaconf import OmegaConf

    from rlhf.config.io import to_yaml
    from rlhf.trainers.resume_check import config_changes, input_changes

    changes = []
    saved = run_dir / "config.yaml"
    if saved.is_file():
        changes += config_changes(OmegaConf.to_container(OmegaConf.load(saved)),
                                  OmegaConf.to_container(OmegaConf.create(to_yaml(cfg))), cfg.resume_allow_changes)
    inputs = {name: value for stage in to_run for name, value in stage_inputs(cfg, stage).items()}
    changes += input_changes(inputs, run_dir, cfg.resume_allow_changes)
    if changes:
        listed = "; ".join(changes)
        fields = ",".join(c.split(":")[0] for c in changes)
        raise PipelineError(f"resume=true, but this would not continue the run in {run_dir} exactly: {listed}. "
                            f"Accept the change(s) with resume_allow_changes=[{fields}], or start a fresh run_dir")


def _check_tokenizers(cfg: RunConfig) -> None:
    """PPO's critic and reference share the actor's tokenizer (those that exist already are compared)."""
    from rlhf.data.sources import DataError
    from rlhf.trainers.role_tokenizers import check_role_tokenizers

    try:
        check_role_tokenizers(cfg.ppo, local_only=True)
    except DataError as exc:
        raise PipelineError(str(exc)) from None


def _check_data(cfg: RunConfig, run_dir: Path, decisions: list[StageDecision]) -> None:
    """Every selected stage's local data files parse and hold the fields the stage reads
    (rlhf/trainers/preflight_data.py); files a stage of this invocation writes first are left to it."""
    from rlhf.trainers.preflight_data import DataPreflightError, check_stage_data

    runs = [d.stage for d in decisions if d.action in ("run", "resume")]
    made = [p for stage, paths in stage_outputs(cfg, run_dir).items() if stage in runs for p in paths]
    try:
        check_stage_data(cfg, [s for s in runs if s in TRAINER_STAGES],
                         made_by_this_run=lambda path: any(path == p or p in path.parents for p in made))
    except DataPreflightError as exc:
        raise PipelineError(str(exc)) from None


def _check_reward_norm(cfg: RunConfig, run_dir: Path, to_run: list[str]) -> None:
    if not cfg.ppo_reward_norm_from_rm or "ppo" not in to_run or "rm" in to_run:
        return
    rm = read_summary(run_dir).get("rm", {})
    if rm.get("score_mean") is None or not rm.get("score_std"):
        raise PipelineError(f"ppo_reward_norm_from_rm=true needs rm.score_mean and rm.score_std in "
                            f"{run_dir / 'summary.json'} (written by the rm stage with rm.data.eval set); found "
                            f"{ {k: rm.get(k) for k in ('score_mean', 'score_std')} }: run the rm stage first")


def reward_norm_from_rm(cfg: RunConfig, run_dir: Path) -> None:
    """Fill ppo.algorithm.reward.normalize_mean/std from summary.json's rm entry (validated)."""
    rm = read_summary(run_dir).get("rm", {})
    mean, std = rm.get("score_mean"), rm.get("score_std")
    if mean is None or not std:
        raise PipelineError(f"ppo_reward_norm_from_rm=true but summary.json has rm.score_mean={mean}, "
                            f"rm.score_std={std}: the rm stage needs held-out pairs (rm.data.eval)")
    algorithm = cfg.ppo.algorithm
    algorithm.reward = replace(algorithm.reward, normalize_mean=float(mean), normalize_std=float(std))
    logger.info("ppo: reward normalised by the reward model's held-out scores: mean=%.4f std=%.4f "
                "(ppo_reward_norm_from_rm=true)", mean, std)


# --- running -----------------------------------------------------------------------------------------------
def run_pipeline(cfg: RunConfig, report: Preflight) -> dict:
    """Run the stages `report` selected, in order, holding run_dir's lock (rlhf/trainers/run_lock.py);
    returns the run's summary.json content."""
    from rlhf.trainers.run_lock import run_dir_lock

    with run_dir_lock(report.run_dir):
        return _run_stages(cfg, report)


def _run_stages(cfg: RunConfig, report: Preflight) -> dict:
    from rlhf.trainers.expectations import check_stage, refuse_unmet

    from rlhf.trainers.resume_check import input_changes

    run_dir = report.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run_dir / "config.yaml")
    inputs = {n: v for d in report.to_run() for n, v in stage_inputs(cfg, d.stage).items()}
    input_changes(inputs, run_dir, [], refresh=True)  # what a later resume must find unchanged
    if cfg.torch_threads is not None:
        set_torch_threads(cfg.torch_threads)
    logger.info("run_dir %s (resolved config: config.yaml)", run_dir)
    for decision in report.decisions:
        if decision.action in ("skip", "not selected"):
            logger.info("stage %s: %s%s", decision.stage, decision.action,
                        f" ({decision.reason})" if decision.reason else "")
            if decision.action == "skip" and cfg.strict_expectations:
                refuse_unmet(decision.stage, read_summary(run_dir))  # a finished stage that missed them
            continue
        if decision.clear:
            clear_stage(run_dir, decision.stage)
        resume = decision.action == "resume"
        logger.info("stage %s: %s", decision.stage, "resuming" if resume else "starting")
        run_stage(cfg, decision.stage, run_dir, resume)
        if decision.stage in TRAINER_STAGES:
            check_stage(decision.stage, getattr(cfg, decision.stage).expectations, run_dir / "summary.json",
                        strict=cfg.strict_expectations)
    return read_summary(run_dir)


def set_torch_threads(threads: int) -> None:
    """torch's intra-op threads here and, through the environment, in every worker this run starts."""
    import torch

    from rlhf.workers.base import THREADS_ENV

    os.environ[THREADS_ENV] = str(threads)
    torch.set_num_threads(threads)
    logger.info("torch_threads=%d in the driver and every worker", threads)


def run_stage(cfg: RunConfig, stage: str, run_dir: Path, resume: bool) -> dict:
    if stage == "prepare":
        from rlhf.trainers.prepare_stage import prepare

        return prepare(cfg, run_dir)
    if stage == "sft":
        from rlhf.trainers.supervised import run_sft

        return run_sft(cfg.sft, run_dir, resume=resume)
    if stage == "rm":
        from rlhf.trainers.supervised import run_rm

        return run_rm(cfg.rm, run_dir, resume=resume)
    if stage == "dpo":
        from rlhf.trainers.dpo import run_dpo

        return run_dpo(cfg.dpo, run_dir, resume=resume)
    if stage == "offline":
        from rlhf.trainers.offline import run_offline

        return run_offline(cfg.offline, run_dir, resume=resume)
    from rlhf.trainers.ppo_stage import run_ppo

    if cfg.ppo_reward_norm_from_rm:
        reward_norm_from_rm(cfg, run_dir)
    return run_ppo(cfg.ppo, run_dir, resume=resume)
