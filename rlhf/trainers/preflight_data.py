"""Pre-flight checks of every selected stage's data, before the first stage trains (issue 16 §11).

A typo in the PPO prompts or the RM pairs used to be found only when that stage loaded them, after
SFT (and RM) had trained for minutes or hours. Here every local data file a selected stage reads is
opened before anything starts: it must parse (JSON errors name the line), hold the fields the stage
reads (named by their config field), and its first rows must have the types the stage's loader
accepts (text, or chat messages with known roles). Files that an earlier stage of the same run makes
(`data/` written by `prepare`) and hub datasets are checked by the stage's loader when it starts.

    check_stage_data(cfg, ["sft", "rm", "ppo"])   # raises PipelineError naming field, file, row
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

FIRST_ROWS = 16  # rows whose values are type-checked here; the loader checks every row when the stage starts


class DataPreflightError(ValueError):
    """A stage's data cannot be used as configured (caught and re-raised as PipelineError by the pipeline)."""


@dataclass(frozen=True)
class Field:
    """A column a stage reads: the config field that names it, its name, and how a value is checked."""

    config_field: str
    key: str
    kind: str  # "text" | "text_or_messages" | "messages" | "any"
    why: str = ""


@dataclass(frozen=True)
class Source:
    """One data source of a stage: the config field, the path or hub name, the split, what it must hold."""

    config_field: str
    path: str | None
    split: str
    fields: tuple[Field, ...] = ()
    alternatives: tuple[tuple[Field, ...], ...] = ()  # SFT: chat rows OR prompt + response rows


def stage_sources(cfg, stage: str) -> list[Source]:
    """The data sources `stage` of the RunConfig `cfg` reads, with the fields each must hold."""
    if stage == "sft":
        d, g = cfg.sft.data, cfg.sft.gold_eval
        chat = (Field("sft.data.messages_key", d.messages_key, "messages"),)
        plain = (Field("sft.data.prompt_key", d.prompt_key, "text_or_messages"),
                 Field("sft.data.response_key", d.response_key, "text"))
        sources = [Source(f"sft.data.{name}", path, split, alternatives=(chat, plain))
                   for name, path, split in (("train", d.train, d.train_split), ("eval", d.eval, d.eval_split))]
        return sources + _gold_sources("sft", g)
    if stage in ("rm", "dpo"):
        d = getattr(cfg, stage).data
        fields = (Field(f"{stage}.data.prompt_key", d.prompt_key, "text_or_messages"),
                  Field(f"{stage}.data.chosen_key", d.chosen_key, "text_or_messages"),
                  Field(f"{stage}.data.rejected_key", d.rejected_key, "text_or_messages"))
        sources = [Source(f"{stage}.data.{name}", path, split, fields=fields)
                   for name, path, split in (("train", d.train, d.train_split), ("eval", d.eval, d.eval_split))]
        return sources + (_gold_sources("dpo", cfg.dpo.gold_eval) if stage == "dpo" else [])
    if stage == "ppo":
        d = cfg.ppo.data
        fields = [Field("ppo.data.prompt_key", d.prompt_key, "text_or_messages")]
        if cfg.ppo.task.name:
            if d.reference_key is None:
                raise DataPreflightError(f"ppo.data.reference_key=null but ppo.task.name={cfg.ppo.task.name!r} "
                                         "scores each response against its row's reference: name the reference field")
            fields.append(Field("ppo.data.reference_key", d.reference_key, "any", " (the task's reward needs it)"))
        return [Source(f"ppo.data.{name}", path, split, fields=tuple(fields))
                for name, path, split in (("train", d.train, d.train_split), ("eval", d.eval, d.eval_split))]
    if stage == "offline":
        return _offline_sources(cfg.offline) + _gold_sources("offline", cfg.offline.gold_eval)
    return []


def _offline_sources(off) -> list[Source]:
    """The stored rollouts (token-id rows) or text rows of the offline stage; the loader
    (rlhf/data/offline.py) checks every row's lengths and values when the stage starts."""
    from rlhf.data.offline import BEHAVIOUR_KEY, ROLLOUT_KEYS

    d = off.data
    reward = Field("offline.data.reward_key", d.reward_key, "any", " (the row's reward)")
    rollout = tuple(Field("offline.data.train", key, "any", " (a saved rollout's tokens)") for key in ROLLOUT_KEYS)
    if d.behaviour == "dataset":
        rollout += (Field("offline.data.behaviour", BEHAVIOUR_KEY, "any",
                          " (or set offline.data.behaviour=reference)"),)
    text = (Field("offline.data.prompt_key", d.prompt_key, "text_or_messages"),
            Field("offline.data.response_key", d.response_key, "text"))
    options = (rollout + (reward,),) if d.behaviour == "dataset" else (rollout + (reward,), text + (reward,))
    return [Source("offline.data.train", d.train, d.split, alternatives=options)]


def _gold_sources(stage: str, g) -> list[Source]:
    """The held-out prompts of a stage's gold evaluation (`<stage>.gold_eval`, a GoldEvalConfig), if any."""
    if not g.prompts:
        return []
    return [Source(f"{stage}.gold_eval.prompts", g.prompts, g.split, fields=(
        Field(f"{stage}.gold_eval.prompt_key", g.prompt_key, "text_or_messages"),
        Field(f"{stage}.gold_eval.reference_key", g.reference_key, "any", " (the verifier scores against it)")))]


def check_stage_data(cfg, stages: list[str], made_by_this_run: Callable[[Path], bool] = lambda path: False) -> None:
    """Check every existing local data file of `stages`; files `made_by_this_run` (e.g. by `prepare`
    earlier in this invocation) and hub names are left to the stage's loader. Raises DataPreflightError."""
    for stage in stages:
        for source in stage_sources(cfg, stage):
            if not source.path:
                continue
            path = Path(source.path).expanduser()
            if made_by_this_run(path) or not path.exists():
                continue  # a hub name, or a file made later in this run (_check_inputs handles missing files)
            check_source(source)


def check_source(source: Source) -> None:
    """Load `source` and check its fields and first rows; DataPreflightError names field, file and row."""
    from rlhf.data.sources import DataError, load_rows

    try:
        rows = load_rows(source.path, source.split)
        fields = _fields_present(source, rows.columns)
        for i in range(min(FIRST_ROWS, len(rows))):
            for f in fields:
                _check_value(rows, i, f, rows.dataset[i][f.key])
    except DataError as exc:
        raise DataPreflightError(f"{source.config_field}: {exc}") from None
    if len(rows) == 0:
        raise DataPreflightError(f"{source.config_field}={source.path}: no rows; expected at least one")


def _fields_present(source: Source, columns: list[str]) -> tuple[Field, ...]:
    """The fields of `source` that its rows hold (for SFT: the chat option or the prompt/response one)."""
    options = source.alternatives or (source.fields,)
    for option in options:
        if all(f.key in columns for f in option):
            return option
    if len(options) == 1:
        missing = "; ".join(f"no field {f.key!r} ({f.config_field}){f.why}" for f in options[0] if f.key not in columns)
    else:
        missing = "no field " + ", or ".join(" and ".join(f"{f.key!r} ({f.config_field})" for f in option)
                                             for option in options)
    raise DataPreflightError(f"{source.config_field}={source.path}: {missing}; the rows have fields {columns}")


def _check_value(rows, i: int, f: Field, value) -> None:
    from rlhf.data.sources import expect_messages, expect_text, expect_text_or_messages

    if f.kind == "text":
        expect_text(rows, i, f.key, value)
    elif f.kind == "messages":
        expect_messages(rows, i, f.key, value)
    elif f.kind == "text_or_messages":
        expect_text_or_messages(rows, i, f.key, value)
    elif value is None:
        raise rows.error(i, f.key, f"expected a value{f.why}, got null")
