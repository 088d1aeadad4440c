"""The `rlhf` command: run a recipe's stages (prepare → sft → rm → dpo → ppo → offline) from one Hydra config.

    rlhf recipe=quickstart                    # run the recipe's stages in order
    rlhf recipe=quickstart stages=[rm,ppo]    # only some stages (earlier outputs reused from run_dir)
    rlhf recipe=quickstart run_dir=DIR        # where everything goes (default: outputs/<recipe>/<time>)
    rlhf recipe=quickstart resume=true        # continue DIR from its last good checkpoint
    rlhf recipe=quickstart dry_run=true       # validate and print the placement plan; start nothing
    rlhf recipe=quickstart ppo.<field>=...    # override any field (likewise sft.*, rm.*, prepare.*)
    rlhf --help                               # usage, the recipes, the main fields
    rlhf                                      # check the installation

How it departs from a plain `@hydra.main` app: the command composes with Hydra's Compose API inside
`main(argv)`, so the working directory never changes, `--help` is ours, and there is no Hydra output
directory (run_dir is). `recipe=NAME` picks `recipes/NAME.yaml` as the primary config; `configs/`
holds the groups it composes (both at the repository's top level, found next to the package). Every
other argument is a Hydra override (`key=value`, `+key=value`, `group@package=option`).

Exit codes: 0 done; 2 the configuration (a field, the placement, a missing input) or the input data
(a file, row and field: also when a stage finds it while loading) is refused, with a one-paragraph
message and no traceback (RLHF_DEBUG=1 adds it); 1 a crash while running (full traceback); 3, 4, 5 below.
"""
from __future__ import annotations

import importlib
import logging
import sys
from datetime import datetime
from pathlib import Path

RUNTIME_MODULES = (
    "torch", "transformers", "datasets", "tokenizers", "safetensors", "ray", "deepspeed",
    "hydra", "omegaconf", "peft", "wandb", "tqdm", "matplotlib",
)
SCHEMA_NAME = "rlhf_run"  # RunConfig in Hydra's ConfigStore; every recipe's defaults list starts with it
EXIT_CONFIG_ERROR = 2
EXIT_EXPECTATIONS = 3  # a stage missed its recipe's expectations and strict_expectations=true
EXIT_REWARD_HACKING = 4  # the reward-hacking alarm stopped PPO (ppo.trainer.stop_on_reward_hacking=true)
EXIT_PREEMPTED = 5  # SIGTERM/SIGUSR1: stopped after a step with a checkpoint; requeue with resume=true

logger = logging.getLogger("rlhf")


class UsageError(ValueError):
    """A command-line problem (no recipe, unknown recipe, missing configs/ or recipes/)."""


# --- where the configs live ----------------------------------------------------------------------------
def config_roots() -> tuple[Path, Path]:
    """(configs/, recipes/) at the repository's top level, next to the `rlhf` package."""
    import rlhf

    top = Path(rlhf.__file__).resolve().parents[1]
    configs, recipes = top / "configs", top / "recipes"
    for path in (configs, recipes):
        if not path.is_dir():
            raise UsageError(f"{path} not found: `rlhf` reads its Hydra groups from configs/ and its recipes from "
                             f"recipes/ beside the package ({top}); install from a source checkout "
                             f"(pip install -e .)")
    return configs, recipes


def available_recipes(recipes: Path) -> dict[str, str]:
    """Recipe name → the first line of its README (recipes/<name>.md)."""
    found = {}
    for path in sorted(recipes.glob("*.yaml")):
        readme = path.with_suffix(".md")
        title = readme.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip() if readme.exists() else ""
        found[path.stem] = title
    return found


# --- composing the run config ---------------------------------------------------------------------------
def compose(recipe: str, overrides: list[str]):
    """The recipe composed with its groups and the overrides (a DictConfig, interpolations unresolved)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra

    from rlhf.config.run import RunConfig

    configs, recipes = config_roots()
    names = available_recipes(recipes)
    if recipe not in names:
        raise UsageError(f"recipe={recipe!r} is invalid: must be one of {sorted(names)} (files recipes/<name>.yaml)")
    ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfig)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(recipes), version_base="1.3", job_name="rlhf"):
        return hydra_compose(config_name=recipe,
                             overrides=[*overrides, f"hydra.searchpath=[file://{configs}]"])


def build_config(recipe: str, overrides: list[str], now: datetime | None = None):
    """The validated RunConfig: composed, run_dir defaulted and made absolute, converted (so every
    dataclass's `__post_init__` runs)."""
    from omegaconf import OmegaConf

    cfg = compose(recipe, overrides)
    cfg.recipe = recipe
    if cfg.run_dir is None:  # must be set before `${run_dir}` interpolations resolve
        cfg.run_dir = str(Path("outputs") / recipe / (now or datetime.now()).strftime("%Y%m%d-%H%M%S"))
    cfg.run_dir = str(Path(cfg.run_dir).expanduser().resolve())  # Ray workers may not share our cwd
    try:
        return OmegaConf.to_object(cfg)
    except ValueError as exc:  # a dataclass's __post_init__ refused a value: say which section
        where = _failing_section(cfg)
        if where is None:
            raise
        raise ValueError(f"in {where}: {exc}") from None


def _failing_section(node, prefix: str = "") -> str | None:
    """The dotted path of the deepest structured section whose conversion fails (None: not below `node`)."""
    from dataclasses import is_dataclass

    from omegaconf import DictConfig, OmegaConf

    for key in node.keys():
        child = node._get_node(key)
        if not isinstance(child, DictConfig) or child._is_none() or not is_dataclass(OmegaConf.get_type(child)):
            continue
        path = f"{prefix}{key}"
        try:
            OmegaConf.to_object(child)
        except ValueError:
            return _failing_section(child, path + ".") or path
    return None


# --- the command ---------------------------------------------------------------------------------------
def usage() -> str:
    lines = ["usage: rlhf recipe=NAME [stages=[a,b]] [run_dir=DIR] [resume=true] [dry_run=true] "
             "[section.field=value ...]", "       rlhf --help | rlhf  (no arguments: check the installation)", "",
             "RLHF orchestration: actor, critic, reward and reference models as Ray actors, trained with DeepSpeed;",
             "a recipe runs its stages in order: prepare → sft → rm → dpo → ppo → offline.", ""]
    try:
        configs, recipes = config_roots()
        names = available_recipes(recipes)
        lines.append(f"recipes ({recipes}):")
        lines += [f"  {name:<18} {title}" for name, title in names.items()] or ["  (none)"]
        groups = sorted(p.name for p in configs.iterdir() if p.is_dir())
        lines += ["", f"config groups ({configs}): " + ", ".join(groups),
                  "  swap one as the recipe places it, e.g. engine@ppo.engines.actor=zero3_bf16 or logging=quiet"]
    except UsageError as exc:
        lines.append(f"recipes: unavailable ({exc})")
    lines += ["", "main fields (rlhf/config/run.py):",
              "  recipe=NAME            which recipes/NAME.yaml to run (required)",
              "  stages=[rm,ppo]        run only these of the recipe's stages (default: all); earlier stages'",
              "                         outputs must already be in run_dir",
              "  run_dir=DIR            outputs: summary.json, metrics.jsonl, config.yaml, <stage>/final",
              "                         (default: outputs/<recipe>/<YYYYmmdd-HHMMSS>)",
              "  resume=true            skip finished stages, continue the first unfinished one from its checkpoint",
              "  resume_allow_changes=[F,...]  accept these config/input changes on resume (others are refused)",
              "  overwrite=true         let a fresh stage discard its previous outputs in run_dir",
              "  dry_run=true           validate, print the placement/ZeRO/memory plan; start no Ray, no actors",
              "  ppo_reward_norm_from_rm=true  normalise PPO rewards by the RM's held-out score mean/std",
              "  seed=N                 the run's seed (recipes pass it to every stage)",
              "  torch_threads=N        torch threads per worker (default: the CPU share Ray gives it)",
              "  strict_expectations=true  exit 3 when a stage misses its recipe's expectations",
              "sections (any field overridable):",
              "  prepare.*   task data and tiny model built into run_dir (embedded default)",
              "  sft.*       SFTConfig: model, data, engine, placement, use_gpu, trainer (rlhf/config/supervised.py)",
              "  rm.*        RMConfig: as sft, plus margin, calibration_bins",
              "  dpo.*       DPOConfig: as sft, plus reference, beta, loss_type, label_smoothing",
              "  ppo.*       PPOConfig: actor, critic, reward, reference, reward_role, data, task, rollout,",
              "              algorithm, engines, placement, trainer (rlhf/config/ppo.py)",
              "  offline.*   OfflineConfig: actor, reference, data (stored rollouts), algorithm (advantage,",
              "              policy_loss), engine, placement, trainer, gold_eval (rlhf/config/offline.py)",
              "", "examples:",
              "  rlhf recipe=quickstart",
              "  rlhf recipe=quickstart run_dir=outputs/q1 stages=[ppo] resume=true ppo.trainer.total_steps=80",
              "  rlhf recipe=hh_rlhf_llama8b dry_run=true",
              "", "exit codes: 0 done; 2 configuration refused (message names the field); 1 crash (traceback);",
              "            3 a stage missed its recipe's expectations with strict_expectations=true;",
              "            4 the reward-hacking alarm stopped PPO (ppo.trainer.stop_on_reward_hacking=true);",
              "            5 preempted (SIGTERM/SIGUSR1): stopped after a step with a checkpoint; requeue with resume=true"]
    return "\n".join(lines)


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


def _installation_report() -> int:
    missing = check_installation()
    if missing:
        print("rlhf: installation incomplete:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    result = smoke_math()
    import rlhf

    print(f"rlhf {rlhf.__version__}: installation OK ({len(RUNTIME_MODULES)} dependencies import; "
          f"PPO math smoke test: policy_loss={result['policy_loss']:.4f}).\n"
          "Run a recipe with `rlhf recipe=quickstart`; `rlhf --help` lists the recipes and fields.")
    return 0


def _refuse(exc: BaseException) -> int:
    """Print a configuration or data error as one paragraph (the traceback only with RLHF_DEBUG=1)
    and return the exit code."""
    import os

    if os.environ.get("RLHF_DEBUG") == "1":
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    print(f"rlhf: error: {error_text(exc)}", file=sys.stderr)
    return EXIT_CONFIG_ERROR


def _bad_input(exc: BaseException) -> bool:
    """A DataError (rlhf.data.sources) raised by a stage while loading its data, here or in a worker."""
    from rlhf.data.sources import DataError

    return isinstance(exc, DataError) or isinstance(exc.__cause__, DataError)


def error_text(exc: BaseException) -> str:
    """One paragraph: the message and its causes (OmegaConf's carry the full key), without Hydra's
    config search path or OmegaConf's type bookkeeping."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        lines = []
        for line in (str(exc).strip() or type(exc).__name__).splitlines():
            line = line.strip()
            if line.startswith("Config search path"):
                break
            if line and not line.startswith(("reference_type=", "object_type=", "provider=")):
                lines.append(line)
        text = " ".join(lines)
        if text and text not in parts:
            parts.append(text)
        exc = exc.__cause__
    return " — ".join(parts)


def _config_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (ValueError, TypeError, HydraException, OmegaConfBaseException)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in args):
        print(usage())
        return 0
    if not args:
        return _installation_report()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    recipes = [a.split("=", 1)[1] for a in args if a.startswith("recipe=")]
    overrides = [a for a in args if not a.startswith("recipe=")]
    if len(recipes) != 1:
        return _refuse(UsageError(
            f"give exactly one recipe=NAME (got {len(recipes)}); recipes: {sorted(_recipe_names())}. "
            f"See `rlhf --help`."))

    # Phase 1: everything that can be checked before Ray or any actor starts. Errors here are the
    # user's configuration: one paragraph, exit 2.
    from rlhf.trainers.pipeline import preflight, run_pipeline
    from rlhf.trainers.plan_text import describe_plan

    try:
        cfg = build_config(recipes[0], overrides)
        report = preflight(cfg)
        if cfg.dry_run:
            print(describe_plan(cfg, report))
            print("\ndry run: configuration valid, placement fits; nothing was started.")
            return 0
    except _config_errors() as exc:
        return _refuse(exc)

    # Phase 2: the stages. A failure here is a crash: the full traceback goes to stderr. A stage that
    # missed its recipe's expectations under strict_expectations=true ends the run with exit 3.
    from rlhf.trainers.expectations import ExpectationsNotMet, unmet_expectations
    from rlhf.trainers.ppo import RewardHackingError
    from rlhf.trainers.preemption import Preempted
    from rlhf.trainers.run_lock import RunDirLocked

    try:
        summary = run_pipeline(cfg, report)
    except RunDirLocked as exc:  # another process runs in run_dir: refused like a bad configuration
        return _refuse(exc)
    except Preempted as exc:
        print(f"rlhf: {exc}\nrun_dir: {report.run_dir}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (ExpectationsNotMet, RewardHackingError) as exc:
        print(f"rlhf: {exc}\nrun_dir: {report.run_dir}", file=sys.stderr)
        return EXIT_EXPECTATIONS if isinstance(exc, ExpectationsNotMet) else EXIT_REWARD_HACKING
    except Exception as exc:
        if not _bad_input(exc):  # a crash: the traceback is what a bug report needs
            raise
        return _refuse(exc.__cause__ if exc.__cause__ is not None else exc)
    print(f"\nrun_dir: {report.run_dir}\nsummary.json: " + ", ".join(
        f"{stage}: {len(values)} values" for stage, values in summary.items()))
    unmet = unmet_expectations(summary)
    if unmet:
        print("\nWARNING: this run did NOT meet its recipe's expectations (summary.json <stage>.expectations):\n"
              + "\n".join(f"  {stage}.{metric} = {r.get('value')}, expected {r.get('expected')}"
                          for stage, failed in unmet.items() for metric, r in failed.items())
              + "\n(strict_expectations=true makes this exit with status 3)", file=sys.stderr)
    return 0


def _recipe_names() -> list[str]:
    try:
        return list(available_recipes(config_roots()[1]))
    except UsageError:
        return []


if __name__ == "__main__":
    sys.exit(main())
