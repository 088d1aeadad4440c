"""Environments: what a multi-turn episode talks to.

An episode starts from a prompt of the dataset (the first observation, already in the policy's tokens).
The policy's turn ends at its end-of-sequence token (or its per-turn token limit); the environment then
`step`s on the decoded text of that turn and answers with the next observation (text, appended in the
policy's tokens and never trained on), the reward for that turn, whether the episode is done, and
metrics. `gold` in the metrics of the last step is the episode's gold signal (e.g. 1 = the task was
solved), reported like a task verifier's.

    class Guess(Env):
        def __init__(self, prompt: str, reference, seed: int): ...
        def reset(self) -> str | None: ...            # text appended after the prompt, or None
        def step(self, action: str) -> StepResult: ...

An environment class is built once per episode as `cls(prompt=..., reference=..., seed=..., **kwargs)`;
the G episodes of one prompt (a GRPO group) get the same prompt and reference and seeds of their own.
To make a group's G environments together instead (one maze, one opponent, one sandbox shared by the
episodes whose advantages are compared), name an `EnvGroup` subclass where an environment goes.
Built-ins register by name (`register_env`); a user's class is given by dotted path
(`ppo.env.name=my_pkg.envs:MyEnv`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from rlhf.envs.imports import import_object


@dataclass
class StepResult:
    observation: str | None  # the environment's next message; None = nothing to add
    reward: float = 0.0  # this turn's reward, placed at the turn's last sampled token
    done: bool = False
    metrics: dict[str, float] = field(default_factory=dict)  # "gold" on the last step = the episode's gold

    def __post_init__(self) -> None:
        if not isinstance(self.reward, (int, float)) or not math.isfinite(float(self.reward)):
            raise ValueError(f"StepResult.reward must be a finite number, got {self.reward!r}")


@runtime_checkable
class Env(Protocol):
    def reset(self) -> str | None: ...

    def step(self, action: str) -> StepResult: ...


_ENVS: dict[str, Callable[..., Env]] = {}


def register_env(name: str):
    """Class decorator: register an environment class under `name`."""
    def add(cls):
        if name in _ENVS and _ENVS[name] is not cls:
            raise ValueError(f"environment {name!r} is already registered (by {_ENVS[name]!r})")
        _ENVS[name] = cls
        return cls

    return add


def available_envs() -> list[str]:
    return sorted(_ENVS)


def env_class(name: str) -> Callable[..., Env]:
    """The class registered as `name`, or at the dotted path `module:Class`."""
    if name in _ENVS:
        return _ENVS[name]
    if ":" in name:
        return import_object(name, "environment")
    raise ValueError(f"unknown environment {name!r}; valid: {available_envs()}, or a dotted path 'package.module:Class'")


class EnvGroup:
    """The G environments of one prompt (a GRPO group: `rollout.samples_per_prompt` episodes), made together.

    Name a subclass where an environment goes (registered, or `ppo.env.name=my_pkg.envs:SameMaze`); it is
    built once per prompt as `cls(**ppo.env.kwargs)` and `make` returns one environment per seed:

        class SameMaze(EnvGroup):
            def make(self, prompt, reference, seeds):
                maze = generate_maze(reference, seeds[0])      # one maze for the whole group
                return [MazeEnv(maze, seed) for seed in seeds]

    Without one, each episode's environment is built alone (`make_env`), with the prompt's reference and a
    seed of its own: what is shared is what the reference determines.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def make(self, prompt: str, reference: Any, seeds: list[int]) -> list[Env]:
        raise NotImplementedError(f"{type(self).__name__}.make(prompt, reference, seeds) must return the group's "
                                  "environments")


def is_env_group(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, EnvGroup)


def make_env(name: str, prompt: str, reference: Any, seed: int, **kwargs: Any) -> Env:
    """One episode's environment; an environment that cannot be built raises naming it."""
    cls = env_class(name)
    if is_env_group(cls):
        return make_env_group(name, prompt, reference, [seed], **kwargs)[0]
    try:
        env = cls(prompt=prompt, reference=reference, seed=seed, **kwargs)
    except TypeError as exc:
        raise ValueError(f"environment {name!r} could not be built with prompt, reference, seed and kwargs "
                         f"{sorted(kwargs)}: {exc}") from exc
    return _checked(name, env)


def make_env_group(name: str, prompt: str, reference: Any, seeds: list[int], **kwargs: Any) -> list[Env]:
    """The environments of one prompt's group, one per seed: made by the EnvGroup `name` names, or each
    alone by `make_env`. A group that cannot be built, or makes another number of environments, raises
    naming it."""
    cls = env_class(name)
    if not is_env_group(cls):
        return [make_env(name, prompt, reference, seed, **kwargs) for seed in seeds]
    try:
        group = cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"environment group {name!r} could not be built with kwargs {sorted(kwargs)}: {exc}") from exc
    envs = list(group.make(prompt=prompt, reference=reference, seeds=list(seeds)))
    if len(envs) != len(seeds):
        raise ValueError(f"environment group {name!r} made {len(envs)} environments for {len(seeds)} seeds "
                         f"(one per episode of the prompt {prompt!r})")
    return [_checked(name, env) for env in envs]


def _checked(name: str, env: Any) -> Env:
    if not callable(getattr(env, "step", None)) or not callable(getattr(env, "reset", None)):
        raise ValueError(f"environment {name!r} ({type(env).__name__}) needs reset() and step(action) methods")
    return env
