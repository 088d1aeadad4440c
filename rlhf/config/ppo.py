"""Everything one PPO run needs: models per role, prompts, sampling, algorithm, engines, placement, trainer.

The structured config behind `rlhf recipe=... ppo.<field>=...`. Cross-field checks (the estimator's
required roles, batch divisibility across data-parallel ranks) live in `PPOConfig.validate`, which
runs before any Ray actor starts; each error names the field, the value and what is allowed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.config.algorithm import AlgorithmConfig, invalid
from rlhf.config.engine import EngineConfig
from rlhf.config.expectations import Expectation
from rlhf.config.model import ModelConfig
from rlhf.config.placement import PlacementConfig

OVERLONG_POLICIES = ("error", "truncate", "drop")


@dataclass
class PromptDataConfig:
    """Where prompts come from (hub name, or local json/jsonl/parquet/csv file or directory)."""

    train: str = ""  # training prompts source (required)
    eval: str | None = None  # held-out prompts for evaluation; null = no evaluation
    train_split: str = "train"
    eval_split: str = "train"  # a local file is a single split; slices like "test[:200]" work
    prompt_key: str = "prompt"  # field holding the prompt text (or chat messages)
    reference_key: str | None = "answer"  # field holding the task's reference answer; null = none
    use_chat_template: bool | None = None  # null: only for chat-message rows; true: wrap plain prompts too
    max_prompt_len: int = 256  # tokens; longer prompts follow `overlong`
    overlong: str = "truncate"  # one of OVERLONG_POLICIES (prompts are truncated from the left)
    max_eval_prompts: int = 256  # evaluate on at most this many held-out prompts

    def __post_init__(self) -> None:
        if self.overlong not in OVERLONG_POLICIES:
            invalid("data", "overlong", self.overlong, f"one of {list(OVERLONG_POLICIES)}")
        if self.max_prompt_len < 1:
            invalid("data", "max_prompt_len", self.max_prompt_len, ">= 1")
        if self.max_eval_prompts < 1:
            invalid("data", "max_eval_prompts", self.max_eval_prompts, ">= 1")


ROLLOUT_DTYPES = (None, "fp32", "bf16", "fp16")
ROLLOUT_ENGINES = ("hf", "vllm")
VLLM_DTYPES = (None, "float32", "bfloat16", "float16")


@dataclass
class VLLMConfig:
    """vLLM rollout engines (`ppo.rollout.engine=vllm`; rlhf/rollout/vllm_engine.py).

    Layout: one engine per actor rank, in that rank's Ray actor and on its GPU (colocated; vLLM sleeps
    while the actor trains when `enable_sleep_mode`). After every actor update the weights are synced
    to every engine (gathered in buckets of `sync_bucket_mb` from any ZeRO stage) and versioned."""

    num_engines: int | None = None  # null = one per actor rank; only that (colocated) layout is built
    tensor_parallel_size: int = 1  # GPUs per engine; a colocated engine uses its rank's one GPU
    gpu_memory_utilization: float = 0.4  # GPU fraction for vLLM's weights + KV cache (the actor trains in the rest)
    max_model_len: int | None = None  # null = data.max_prompt_len + rollout.max_new_tokens
    enforce_eager: bool = False  # true: no CUDA graphs (faster start, slower decode); the CPU build needs it
    dtype: str | None = None  # null = the actor engine's dtype; else one of VLLM_DTYPES
    enable_sleep_mode: bool = False  # GPU: free the KV cache and offload weights while the actor trains
    cpu_kvcache_space_gib: int = 1  # vLLM's CPU build only: KV cache GiB (VLLM_CPU_KVCACHE_SPACE)
    sync_bucket_mb: int = 256  # a weight sync holds at most ~this many MB of gathered full tensors per rank
    # After each sync, score the rank's last rollout row with the engine and the actor (temperature 1):
    # `sync/probe_max_abs_diff` shows the weights arrived (~1e-6 in fp32; bf16 is looser). A tolerance
    # makes a larger gap a StaleWeightsError; null = only the metric.
    verify_sync: bool = False
    verify_sync_tolerance: float | None = None
    options: dict = field(default_factory=dict)  # further `vllm.LLM` keyword arguments

    def __post_init__(self) -> None:
        if self.tensor_parallel_size != 1:
            invalid("rollout.vllm", "tensor_parallel_size", self.tensor_parallel_size,
                    "1: colocated engines use their actor rank's one GPU (engines on their own GPUs are not built yet)")
        if not 0 < self.gpu_memory_utilization <= 1:
            invalid("rollout.vllm", "gpu_memory_utilization", self.gpu_memory_utilization, "in (0, 1]")
        if self.dtype not in VLLM_DTYPES:
            invalid("rollout.vllm", "dtype", self.dtype, f"one of {list(VLLM_DTYPES)} (null = the actor's)")
        for name in ("sync_bucket_mb", "cpu_kvcache_space_gib"):
            if getattr(self, name) < 1:
                invalid("rollout.vllm", name, getattr(self, name), "an int >= 1")
        if self.max_model_len is not None and self.max_model_len < 2:
            invalid("rollout.vllm", "max_model_len", self.max_model_len, ">= 2, or null")

    def llm_options(self, actor_dtype: str, max_model_len: int) -> dict:
        """Keyword arguments of `vllm.LLM` (besides model, seed and what the engine sets itself)."""
        dtype = self.dtype or {"bf16": "bfloat16", "fp16": "float16"}.get(actor_dtype, "float32")
        return dict(dtype=dtype, tensor_parallel_size=self.tensor_parallel_size,
                    gpu_memory_utilization=self.gpu_memory_utilization,
                    max_model_len=self.max_model_len or max_model_len, enforce_eager=self.enforce_eager,
                    enable_sleep_mode=self.enable_sleep_mode, **dict(self.options))


@dataclass
class RolloutConfig:
    """How many responses are sampled per step, and how."""

    prompts_per_step: int = 64  # P prompts per PPO step (rollout batch = P × samples_per_prompt rows)
    samples_per_prompt: int = 1  # G responses per prompt (group size for GRPO/RLOO; ≥ 2 for them)
    max_new_tokens: int = 64  # response length cap; responses hitting it without EOS count as truncated
    temperature: float = 1.0  # sampling temperature (also applied to all log-probs); > 0
    top_p: float = 1.0  # nucleus sampling; 1.0 = off
    top_k: int = 0  # top-k sampling; 0 = off
    stop_strings: list[str] = field(default_factory=list)  # end a response at any of these
    # Precision the actor SAMPLES in: null = its engine's own; "bf16"/"fp16" = autocast for generation
    # only (faster sampling on GPU; other numerics than the training forward).
    dtype: str | None = None
    # PPO's old log-probs from the actor's TRAINING forward (one extra forward per step) instead of the
    # sampler's. null = auto: on exactly when sampling is not bit-for-bit the training forward's
    # numerics, i.e. when the actor's engine dtype or `dtype` above is not fp32 (bf16 kernels round
    # differently in a KV-cached decode than in a full-sequence forward); a separate rollout engine
    # also needs it. With it, `rollout/logprob_abs_diff` and `rollout/kl_rollout_vs_train` measure the
    # sampler/trainer gap each step (the sampler's log-probs are only used for these).
    recompute_logprobs: bool | None = None
    engine: str = "hf"  # what samples: "hf" (the actor's own module, HF generate) or "vllm" (see VLLMConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)

    def __post_init__(self) -> None:
        for name in ("prompts_per_step", "samples_per_prompt", "max_new_tokens"):
            if getattr(self, name) < 1:
                invalid("rollout", name, getattr(self, name), "an int >= 1")
        if not self.temperature > 0:
            invalid("rollout", "temperature", self.temperature, "> 0")
        if not 0 < self.top_p <= 1:
            invalid("rollout", "top_p", self.top_p, "in (0, 1] (1 = off)")
        if self.top_k < 0:
            invalid("rollout", "top_k", self.top_k, "an int >= 0 (0 = off)")
        if self.dtype not in ROLLOUT_DTYPES:
            invalid("rollout", "dtype", self.dtype, f"one of {list(ROLLOUT_DTYPES)} (null = the engine's)")
        if self.engine not in ROLLOUT_ENGINES:
            invalid("rollout", "engine", self.engine, f"one of {list(ROLLOUT_ENGINES)}")

    def recompute(self, engine_dtype: str) -> bool:
        """Whether PPO recomputes old log-probs with the training forward (see `recompute_logprobs`)."""
        if self.recompute_logprobs is not None:
            return bool(self.recompute_logprobs)
        return self.engine != "hf" or engine_dtype != "fp32" or (self.dtype or "fp32") != "fp32"

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.samples_per_prompt


@dataclass
class RewardRoleConfig:
    """Where sequence scores come from."""

    use_task_reward: bool = False  # true: the task's rule-based reward (RLVR); false: the reward model
    fn_timeout_s: float = 10.0  # per-call timeout of a rule-based reward function; > 0
    fn_fallback: float = 0.0  # score given when the function raises, hangs or returns NaN
    # Limits of one call, in the function's child process: memory it may add (MiB; 0 = none) and CPU
    # seconds (null = none besides fn_timeout_s). Exceeding one is an error, counted (reward/fn_errors).
    fn_memory_mb: int = 2048
    fn_cpu_s: float | None = None
    # Stop the run (RewardFunctionError) when the task's reward function fails on more than this
    # fraction of a training batch's rows; failures are counted per step either way (reward/fn_*).
    max_fn_failure_frac: float = 0.5
    # A reward service instead of a reward model (rlhf/workers/reward_server.py has the JSON protocol):
    # POSTs of up to server_batch_size rows, server_concurrency at once, each with server_timeout_s;
    # transient failures retried server_max_retries times (backoff server_backoff_s, doubling); rows
    # left unscored get fn_fallback and are counted like reward-function failures (reward/fn_*).
    server_url: str | None = None
    server_timeout_s: float = 30.0
    server_max_retries: int = 3
    server_backoff_s: float = 0.5
    server_batch_size: int = 64
    server_concurrency: int = 4
    # A user's rule-based reward function by dotted path, `package.module:function`, called as
    # function(response_text, reference) -> float in a guarded child process like a task's reward (the
    # fn_* limits apply). Imported by the driver when the config is checked and by the reward workers;
    # the task (if any) still gives the gold metric.
    reward_fn: str | None = None

    @property
    def uses_model(self) -> bool:
        """Whether the scores come from a reward model (not a task's rule, a user function or a server)."""
        return not self.use_task_reward and not self.server_url and not self.reward_fn

    def __post_init__(self) -> None:
        if self.reward_fn is not None:
            if ":" not in str(self.reward_fn):
                invalid("reward_role", "reward_fn", self.reward_fn, "a dotted path 'package.module:function', or null")
            if self.use_task_reward or self.server_url:
                invalid("reward_role", "reward_fn", self.reward_fn,
                        "null when use_task_reward=true or server_url is set (one source of scores)")
        if self.server_url is not None:
            if not str(self.server_url).startswith(("http://", "https://")):
                invalid("reward_role", "server_url", self.server_url, "an http:// or https:// URL, or null")
            if self.use_task_reward:
                invalid("reward_role", "server_url", self.server_url,
                        "null when use_task_reward=true (one source of scores)")
        if not self.server_timeout_s > 0:
            invalid("reward_role", "server_timeout_s", self.server_timeout_s, "seconds > 0")
        if self.server_max_retries < 0:
            invalid("reward_role", "server_max_retries", self.server_max_retries, "an int >= 0")
        if not self.server_backoff_s >= 0:
            invalid("reward_role", "server_backoff_s", self.server_backoff_s, "seconds >= 0")
        for name in ("server_batch_size", "server_concurrency"):
            if getattr(self, name) < 1:
                invalid("reward_role", name, getattr(self, name), "an int >= 1")
        if not self.fn_timeout_s > 0:
            invalid("reward_role", "fn_timeout_s", self.fn_timeout_s, "> 0")
        if self.fn_memory_mb < 0:
            invalid("reward_role", "fn_memory_mb", self.fn_memory_mb, "MiB >= 0 (0 = no limit)")
        if self.fn_cpu_s is not None and not self.fn_cpu_s > 0:
            invalid("reward_role", "fn_cpu_s", self.fn_cpu_s, "seconds > 0, or null (no limit)")
        if not 0 <= self.max_fn_failure_frac <= 1:
            invalid("reward_role", "max_fn_failure_frac", self.max_fn_failure_frac, "in [0, 1] (1 = never stop)")


@dataclass
class EnvConfig:
    """Multi-turn episodes with an environment instead of single responses (rlhf/envs/base.py)."""

    name: str | None = None  # a registered environment or a dotted path 'package.module:Class'; null = none
    kwargs: dict = field(default_factory=dict)  # the environment's constructor arguments
    max_turns: int = 4  # policy turns per episode; >= 1
    # Response-block tokens (policy and environment) after which an episode ends; a policy turn is never
    # cut, so the block may reach max_tokens + rollout.max_new_tokens - 1.
    max_tokens: int = 256
    # An environment's step (all of a turn's run concurrently, one thread each) that takes longer ends its
    # episode ("env_timeout", reward 0 for that turn); its thread is abandoned, not killed.
    step_timeout_s: float = 60.0
    # How an observation joins the episode: "text" appends its text as is (tiny tokenizers, completion
    # models); "chat" renders it as a chat turn of `observation_role` with the actor's chat template — the
    # end of the policy's turn, the observation's turn and the next assistant header
    # (rlhf/data/encode.py `chat_observation`).
    observations: str = "text"
    observation_role: str = "user"  # "user", or "tool" / "ipython" where the model's template has such a role

    def __post_init__(self) -> None:
        if self.observations not in ("text", "chat"):
            invalid("env", "observations", self.observations, "'text' or 'chat'")
        for name in ("max_turns", "max_tokens"):
            if getattr(self, name) < 1:
                invalid("env", name, getattr(self, name), "an int >= 1")
        if not self.step_timeout_s > 0:
            invalid("env", "step_timeout_s", self.step_timeout_s, "seconds > 0")


@dataclass
class TaskConfig:
    """A built-in task (`rlhf.tasks`): its verifier gives the gold reward metric (and RLVR rewards)."""

    name: str | None = None  # e.g. "arithmetic"; null = no task (no gold metric)
    kwargs: dict = field(default_factory=dict)  # task constructor arguments (e.g. digits)


STALENESS_POLICIES = ("wait", "drop")


@dataclass
class TrainerConfig:
    """The run: length, evaluation, checkpoints, logging, fault handling."""

    total_steps: int = 100  # PPO steps (each: one rollout batch, then its updates)
    seed: int = 0  # seeds sampling, shuffling and init; a resumed run replays the same stream
    critic_warmup_steps: int = 0  # steps at the start in which only the critic is updated
    eval_every: int = 10  # evaluate every N steps (and before the first and after the last); 0 = only those
    eval_temperature: float | None = None  # sampled-eval temperature; null = rollout.temperature
    # Samples per held-out prompt in the sampled evaluation (its gold accuracy and RM score are means
    # over all of them): k samples cut the estimate's standard error by ~sqrt(k) at k times the cost.
    eval_samples_per_prompt: int = 1
    save_every: int = 10  # checkpoint every K steps (and at the end); 0 = only at the end
    keep_last: int = 2  # checkpoints kept; older ones are deleted after a new one is complete
    max_consecutive_bad_steps: int = 3  # stop after this many consecutive NaN/inf steps (each is skipped)
    call_timeout_s: float = 1800.0  # any worker call longer than this is reported as hung
    # Restart the worker groups from the last good checkpoint, in the same process, when a worker dies
    # or hangs (a raised error is not retried: it would recur); at most this many times per stage.
    max_restarts: int = 0
    tensorboard: bool = True
    wandb: bool = False  # Weights & Biases (offline unless WANDB_MODE/WANDB_API_KEY say otherwise)
    wandb_project: str = "rlhf"
    progress: bool = True  # tqdm progress bar
    # Reward-hacking monitor (needs a gold signal: a task verifier on the eval prompts). An evaluation
    # "diverges" when its sampled reward-model score rose and its sampled gold accuracy fell by more
    # than hacking_gold_tolerance since the previous one; after hacking_patience divergent evaluations
    # in a row the alarm is raised (logged, `hacking/alarm` metric, summary.json). 0 = monitor off.
    hacking_patience: int = 2
    hacking_gold_tolerance: float = 0.02  # a gold drop up to this is noise, not divergence; >= 0
    stop_on_reward_hacking: bool = False  # true: stop the run at the alarm, naming the last good checkpoint
    # Write each step's rollouts (token ids, masks, behaviour and reference log-probs, scores, gold, group
    # ids, weight version) as <stage>/rollouts/step_NNNNNN.parquet, atomically (rlhf/trainers/rollout_store.py)
    save_rollouts: bool = False
    # Asynchronous rollout (rlhf/trainers/async_rollout.py): the rollouts of steps k+1..k+max_staleness
    # are sampled before step k's update, with the weights of that moment, while step k is scored and
    # trained; each is trained on at most max_staleness actor updates after the weights that sampled it,
    # with the PPO ratio against its own behaviour log-probs. 0 = the synchronous loop, exactly.
    max_staleness: int = 0
    # A batch further behind than max_staleness when its step comes (the bound was lowered on resume):
    # "wait" re-samples its prompts with the current weights (no data lost, the wait is the cost);
    # "drop" discards it and samples the next prompts instead. Counted: async/waited, async/dropped.
    staleness_policy: str = "wait"

    def __post_init__(self) -> None:
        if self.max_staleness < 0:
            invalid("trainer", "max_staleness", self.max_staleness, "an int >= 0 (0 = synchronous)")
        if self.staleness_policy not in STALENESS_POLICIES:
            invalid("trainer", "staleness_policy", self.staleness_policy, f"one of {list(STALENESS_POLICIES)}")
        if self.hacking_patience < 0:
            invalid("trainer", "hacking_patience", self.hacking_patience, "an int >= 0 (0 = off)")
        if not self.hacking_gold_tolerance >= 0:
            invalid("trainer", "hacking_gold_tolerance", self.hacking_gold_tolerance, "a float >= 0")
        for name in ("total_steps", "keep_last", "max_consecutive_bad_steps", "eval_samples_per_prompt"):
            if getattr(self, name) < 1:
                invalid("trainer", name, getattr(self, name), "an int >= 1")
        for name in ("critic_warmup_steps", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                invalid("trainer", name, getattr(self, name), "an int >= 0")
        if not self.call_timeout_s > 0:
            invalid("trainer", "call_timeout_s", self.call_timeout_s, "a number of seconds > 0")
        if self.max_restarts < 0:
            invalid("trainer", "max_restarts", self.max_restarts, "an int >= 0 (0 = a dead worker ends the run)")
        if self.eval_temperature is not None and not self.eval_temperature > 0:
            invalid("trainer", "eval_temperature", self.eval_temperature, "> 0, or null for rollout.temperature")


@dataclass
class RoleEngines:
    actor: EngineConfig = field(default_factory=lambda: EngineConfig(lr=1e-6))
    critic: EngineConfig = field(default_factory=lambda: EngineConfig(lr=5e-6))
    reward: EngineConfig = field(default_factory=EngineConfig)
    reference: EngineConfig = field(default_factory=EngineConfig)
    forward_micro_batch_size: int = 16  # rows per forward for log-probs/values/scores (per rank)
    # Instead: forwards packed to this many padded tokens each (length-sorted rows, many short ones to a
    # pass); null = forward_micro_batch_size rows. The training counterpart: algorithm.update.max_tokens_per_micro_batch.
    forward_max_tokens_per_micro_batch: int | None = None

    def __post_init__(self) -> None:
        if self.forward_micro_batch_size < 1:
            invalid("engines", "forward_micro_batch_size", self.forward_micro_batch_size, "an int >= 1")
        if self.forward_max_tokens_per_micro_batch is not None and self.forward_max_tokens_per_micro_batch < 1:
            invalid("engines", "forward_max_tokens_per_micro_batch", self.forward_max_tokens_per_micro_batch,
                    "an int >= 1, or null")


@dataclass
class PPOConfig:
    actor: ModelConfig = field(default_factory=ModelConfig)  # also the reference unless reference.path is set
    critic: ModelConfig = field(default_factory=ModelConfig)  # null path = the reward model (or actor) dir
    reward: ModelConfig = field(default_factory=ModelConfig)
    reference: ModelConfig = field(default_factory=ModelConfig)
    reward_role: RewardRoleConfig = field(default_factory=RewardRoleConfig)
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    engines: RoleEngines = field(default_factory=RoleEngines)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # Bounds on this stage's summary.json values, checked when it ends (rlhf/config/expectations.py).
    expectations: dict[str, Expectation] = field(default_factory=dict)

    def roles(self) -> list[str]:
        """The worker groups this run creates: no critic for critic-free estimators."""
        roles = ["actor", "reference"] + ([] if self.env.name else ["reward"])  # an environment rewards itself
        if self.algorithm.advantage.needs_critic:
            roles.insert(1, "critic")
        return roles

    def response_tokens(self) -> int:
        """T, the longest response block: one response, or an episode's block (env.max_tokens, past which
        no observation is added, plus at most one more policy turn)."""
        if self.env.name:
            return self.env.max_tokens + self.rollout.max_new_tokens - 1
        return self.rollout.max_new_tokens

    def max_model_len(self) -> int:
        """The longest sequence the models see: the prompt and its response block."""
        return self.data.max_prompt_len + self.response_tokens()

    def critic_path(self) -> str:
        return self.critic.path or self.reward.path or self.actor.path

    def reference_path(self) -> str:
        return self.reference.path or self.actor.path

    def validate(self) -> None:
        """Cross-field checks, run before Ray starts."""
        if not self.actor.path:
            invalid("ppo", "actor.path", self.actor.path, "an HF model directory or hub name")
        if not self.data.train:
            invalid("ppo", "data.train", self.data.train, "a prompt dataset (hub name or local file)")
        if self.env.name:
            self._validate_env()
            if self.trainer.max_staleness:
                invalid("ppo", "trainer.max_staleness", self.trainer.max_staleness,
                        "0 with env.name set (episodes step their environments between the actor's turns in the "
                        "controller; sampling them ahead is not built)")
        elif self.reward_role.uses_model and not self.reward.path:
            invalid("ppo", "reward.path", self.reward.path, "a reward-model directory, or set "
                    "reward_role.use_task_reward=true with a task, reward_role.reward_fn or reward_role.server_url")
        if (self.reward_role.server_url or self.reward_role.reward_fn) and self.reward.path:
            invalid("ppo", "reward.path", self.reward.path,
                    "null when reward_role.server_url or reward_role.reward_fn is set (one source of scores)")
        if self.reward_role.use_task_reward and not self.task.name:
            invalid("ppo", "task.name", self.task.name, "a task name when reward_role.use_task_reward=true")
        estimator = self.algorithm.advantage.estimator
        if estimator in ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline") and self.rollout.samples_per_prompt < 2:
            invalid("ppo", "rollout.samples_per_prompt", self.rollout.samples_per_prompt,
                    f">= 2 for the group-baseline estimator {estimator!r}")
        self._validate_batch_split()
        self._validate_rollout_engine()
        self._validate_idle_offload()

    def _validate_idle_offload(self) -> None:
        """`placement.<role>.offload_when_idle` (hybrid layout): what each role's engine can release."""
        for role in self.roles():
            policy = self.placement.role(role).offload_when_idle
            if policy == "none":
                continue
            if getattr(self.engines, role).zero_stage == 3:
                invalid("ppo", f"placement.{role}.offload_when_idle", policy,
                        f"'none' with engines.{role}.zero_stage=3 (DeepSpeed moves ZeRO-3 states only with its "
                        f"FusedAdam): use engines.{role}.offload_optimizer / offload_params instead")
            if policy == "optimizer" and role in ("reference", "reward"):
                invalid("ppo", f"placement.{role}.offload_when_idle", policy,
                        "'none' or 'all' for a forward-only role (it has no optimizer)")

    def _validate_env(self) -> None:
        role = self.reward_role
        for name, value in (("reward.path", self.reward.path), ("reward_role.server_url", role.server_url),
                            ("reward_role.reward_fn", role.reward_fn)):
            if value:
                invalid("ppo", name, value, "null when env.name is set (the environment gives the rewards)")
        if role.use_task_reward:
            invalid("ppo", "reward_role.use_task_reward", True, "false when env.name is set (the environment "
                    "gives the rewards)")

    def _validate_rollout_engine(self) -> None:
        rollout, correction = self.rollout, self.algorithm.rollout_correction
        if rollout.engine == "vllm":
            engines = rollout.vllm.num_engines
            if engines is not None and engines != self.placement.actor.world_size:
                invalid("ppo", "rollout.vllm.num_engines", engines,
                        f"null or the actor's data-parallel size ({self.placement.actor.world_size}): one engine per "
                        "actor rank (engines on their own GPUs are not built yet)")
            if self.rollout.dtype is not None:
                invalid("ppo", "rollout.dtype", self.rollout.dtype, "null with rollout.engine=vllm (set rollout.vllm.dtype)")
        if correction.mode != "off":
            if not rollout.recompute(self.engines.actor.dtype):
                invalid("ppo", "algorithm.rollout_correction.mode", correction.mode,
                        "'off' unless old log-probs are recomputed (rollout.recompute_logprobs=true, or null with "
                        "a separate rollout engine or a non-fp32 actor): otherwise every weight is 1")
            if self.algorithm.policy_loss.name == "dro":
                invalid("ppo", "algorithm.rollout_correction.mode", correction.mode,
                        "'off' with policy_loss.name=dro (its penalty is not linear in the advantage)")

    def _validate_batch_split(self) -> None:
        schedule = self.algorithm.update
        for role in ("actor", "critic") if self.algorithm.advantage.needs_critic else ("actor",):
            world = self.placement.role(role).world_size
            if self.rollout.batch_size % world:
                invalid("ppo", "rollout.prompts_per_step", self.rollout.prompts_per_step,
                        f"such that prompts_per_step × samples_per_prompt ({self.rollout.batch_size}) is "
                        f"divisible by the {role}'s data-parallel size ({world})")
            schedule.grad_accum_steps(self.rollout.batch_size // world)
        if self.rollout.prompts_per_step < self.placement.actor.world_size:
            invalid("ppo", "rollout.prompts_per_step", self.rollout.prompts_per_step,
                    f">= the actor's data-parallel size ({self.placement.actor.world_size})")
