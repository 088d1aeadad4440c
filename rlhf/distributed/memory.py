"""Memory planner: estimated GPU memory per rank of every role of a PPO run, checked before Ray starts.

The dry run (DESIGN.md §4) prints the placement plan with these numbers and refuses a plan whose
devices would run out of memory, saying what to change. Pure Python on `transformers` configs: no
weights are loaded, no Ray, no GPU. Every number is per rank (= per GPU) and in GiB (2**30 bytes);
`gpu_memory_gb` / `NodeSpec.gpu_memory_gb` is read as GiB too: pass the MiB `nvidia-smi` reports
divided by 1024 (an "80 GB" H100 reports 81559 MiB: 79.6).

What one rank of a role holds (Ψ parameters, Ψ_t of them trained, dp = the role's data-parallel size,
b = bytes of the engine dtype: 4 fp32, 2 bf16/fp16). The bytes/param follow the ZeRO paper
(Rajbhandari et al. 2020, §3: mixed-precision Adam holds 2Ψ + 2Ψ + 12Ψ bytes):
- weights     Ψ·b, divided by dp under ZeRO-3; 0 on the GPU with `offload_params` (host RAM instead).
- gradients   Ψ_t·b (trained roles only), divided by dp under ZeRO-2/3.
- optimizer   AdamW: Ψ_t·12 with 16-bit training (fp32 master copy + 2 fp32 moments), Ψ_t·8 with fp32
              training (the parameters are the master copy); divided by dp under ZeRO-1/2/3; 0 on the
              GPU with `offload_optimizer` (host RAM instead).
- activations the largest of the role's passes (they run one after the other):
              training micro-batch (actor, critic): micro × S tokens × L layers × ACT per token and
              layer (below); with gradient checkpointing only each layer's input (H values per token
              and layer) plus one layer being recomputed. Plus, for the actor, the logits:
              micro × S × V × b (HF output) + micro × T × V × 8 (fp32 log-softmax and its gradient).
              forward-only pass (reference, reward; actor/critic log-probs/values): fwd_micro × S ×
              FWD (one layer's tensors alive at once, below) plus, for LM heads, the logits
              (fwd_micro × S × V × b + fwd_micro × T × V × 4: an fp32 copy of the response part).
- KV cache    the actor's generation: 2 × L × kv_heads × head_dim × S × rows per rank × b, with all
              of the rank's rows generated at once (rows = P·G / dp), plus the per-step fp32 logits
              (3 copies of rows × V: raw, tapped, sampling) and the prefill's rows × P × FWD.
- overhead    CUDA_OVERHEAD_GIB per rank process (below), plus ZeRO communication buffers: stage 1/2
              reduce + all-gather buckets; stage 3 the prefetch bucket and the largest parameter
              (the embedding) gathered whole.
A role's peak = weights + gradients + optimizer + max(activations, KV cache) + overhead: generation
and training never run at the same time inside one process. Colocated roles are separate processes
on the same GPU with their own caching allocators, so their peaks add up.

ACT (bytes saved for backward per token and layer of a pre-norm decoder layer with SDPA attention):
b·(10·H + 4·I), plus 2·H fp32 values (the RMSNorm upcast) when b is 16-bit. 10·H: norm inputs, q/k/v
and attention input/output, residuals; 4·I: the MLP's gate, up, act(gate) and their product.
Measured on tiny Llamas on CPU (saved-tensor hooks; tests/launch/test_memory_planner.py): in fp32
the formula is 1–2 % above the measurement, in bf16 7–9 % above — an upper bound, as it should be.
Non-gated MLPs (GPT-2) use the same count: it overestimates them slightly.

FWD (no-grad forward, bytes alive at once per token inside one layer): b·(4·H + 3·I), plus 2·H fp32
values in 16-bit — the residual stream and norm output, then the MLP's gate, up and act(gate) outputs.
Not measured (CPU peak memory is not observable per tensor): a reasoned upper bound of the layer's
largest simultaneous tensors.

CUDA_OVERHEAD_GIB = 1.5 per rank process: the CUDA context with its kernels (0.5–0.8 GiB on
A100/H100 with torch 2.x), cuBLAS/NCCL workspaces (~0.3 GiB) and allocator fragmentation slack
(~0.5 GiB). It is the same on every rank and is why a "fits exactly" plan is not a good plan.

    configs = load_model_configs(cfg)                  # AutoConfig per role, no weights
    print(describe_memory(cfg, configs, gpu_memory_gb=80))
    check_memory(cfg, configs, gpu_memory_gb=80)       # raises PlanError: role, estimate, what to change
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from rlhf.config.ppo import PPOConfig
from rlhf.distributed.hybrid_memory import hybrid_phase_peaks
from rlhf.distributed.placement import DeviceGroup, PlanError, plan_placement

if TYPE_CHECKING:  # transformers is imported lazily: this module is imported by the dry run
    from transformers import PretrainedConfig

GIB = 2**30
CUDA_OVERHEAD_GIB = 1.5  # per rank process: CUDA context + workspaces + fragmentation (see module doc)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
TRAINED_ROLES = ("actor", "critic")
LM_HEAD_ROLES = ("actor", "reference")  # causal LMs; critic and reward are scalar-head models

# Architectures whose parameter count has a closed form here (checked against meta-device construction
# in the tests). Any other model type is counted exactly by building it on the meta device.
_LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3"}
_FORMULA_TYPES = _LLAMA_LIKE | {"gpt2"}


# ---------------------------------------------------------------------------------------------------
# Model shapes and parameter counts


@dataclass(frozen=True)
class ModelShape:
    """The hyper-parameters of a decoder-only transformer that memory depends on."""

    model_type: str
    vocab_size: int  # V
    hidden_size: int  # H
    intermediate_size: int  # I (MLP width)
    num_layers: int  # L
    num_heads: int
    num_kv_heads: int  # < num_heads with grouped-query attention
    head_dim: int
    tie_word_embeddings: bool  # the LM head reuses the input embedding
    gated_mlp: bool = True  # SwiGLU (gate, up, down) vs GPT-2's (fc, proj)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    layer_norm_bias: bool = False  # LayerNorm (weight + bias) vs RMSNorm (weight)
    qk_norm: bool = False  # Qwen3: RMSNorm over q and k heads (head_dim weights each)
    position_embeddings: int = 0  # learned absolute positions (GPT-2); 0 = rotary
    exact_parameters: int | None = None  # counted on the meta device (architectures without a formula)

    def num_parameters(self, head: str = "lm") -> int:
        """Parameters of the causal LM (`head="lm"`) or of the sequence classifier with one label
        (`head="scalar"`: the critic / reward model — no LM head, an H→1 score)."""
        if head not in ("lm", "scalar"):
            raise ValueError(f"head={head!r}: expected 'lm' or 'scalar'")
        V, H = self.vocab_size, self.hidden_size
        lm_head = 0 if self.tie_word_embeddings else V * H
        if self.exact_parameters is not None:
            return self.exact_parameters if head == "lm" else self.exact_parameters - lm_head + H
        norm = 2 * H if self.layer_norm_bias else H
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = H * q + 2 * H * kv + q * H
        attention += (q + 2 * kv) * self.qkv_bias + H * self.o_bias
        attention += 2 * self.head_dim * self.qk_norm
        n_mlp = 3 if self.gated_mlp else 2
        mlp = n_mlp * H * self.intermediate_size
        if self.mlp_bias:
            mlp += (n_mlp - 1) * self.intermediate_size + H
        layer = attention + mlp + 2 * norm
        embeddings = V * H + self.position_embeddings * H
        body = embeddings + self.num_layers * layer + norm
        return body + (lm_head if head == "lm" else H)

    def lora_parameters(self, rank: int) -> int:
        """Trainable parameters of LoRA rank `rank` on every linear layer of the decoder (peft's
        "all-linear"; the output head excluded): rank × (in + out) per linear."""
        H, I = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        linears = [(H, q), (H, kv), (H, kv), (q, H)] + ([(H, I), (H, I), (I, H)] if self.gated_mlp else
                                                          [(H, I), (I, H)])
        if not self.gated_mlp and self.model_type == "gpt2":  # fused c_attn: one H→3H linear
            linears = [(H, 3 * H), (H, H), (H, I), (I, H)]
        return self.num_layers * rank * sum(i + o for i, o in linears)

    def activation_bytes_per_token_layer(self, dtype_bytes: int) -> int:
        """Bytes saved for backward per token and layer (the ACT of the module doc)."""
        H, I = self.hidden_size, self.intermediate_size
        fp32_norm_upcast = 4 * 2 * H if dtype_bytes < 4 else 0
        return dtype_bytes * (10 * H + 4 * I) + fp32_norm_upcast

    def forward_bytes_per_token_layer(self, dtype_bytes: int) -> int:
        """Peak bytes alive at once per token inside one layer of a no-grad forward (FWD of the
        module doc): residual stream and norm output (+ their fp32 upcast in 16-bit), and the MLP's
        gate, up and act(gate) outputs."""
        H, I = self.hidden_size, self.intermediate_size
        fp32_norm_upcast = 4 * 2 * H if dtype_bytes < 4 else 0
        return dtype_bytes * (4 * H + 3 * I) + fp32_norm_upcast

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """KV-cache bytes per token of one sequence: keys and values of every layer."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    @property
    def largest_tensor(self) -> int:
        """Elements of the largest parameter (the embedding / LM head), gathered whole by ZeRO-3."""
        return max(self.vocab_size * self.hidden_size, self.hidden_size * self.intermediate_size)


def model_shape(config: "PretrainedConfig | str") -> ModelShape:
    """The `ModelShape` of a transformers config object, or of the config.json in a local dir / hub
    name (`AutoConfig.from_pretrained`; offline flags are honoured)."""
    if isinstance(config, str):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(config)
    model_type = getattr(config, "model_type", "")
    H = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or H // heads
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * H
    common = dict(model_type=model_type, vocab_size=config.vocab_size, hidden_size=H,
                  intermediate_size=intermediate, num_layers=config.num_hidden_layers, num_heads=heads,
                  num_kv_heads=kv_heads, head_dim=head_dim,
                  tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)))
    if model_type == "gpt2":
        return ModelShape(**common, gated_mlp=False, qkv_bias=True, o_bias=True, mlp_bias=True,
                          layer_norm_bias=True, position_embeddings=config.n_positions)
    if model_type in _LLAMA_LIKE:
        attention_bias = bool(getattr(config, "attention_bias", False))
        return ModelShape(**common, qkv_bias=attention_bias or model_type == "qwen2",
                          o_bias=attention_bias and model_type != "qwen2",
                          mlp_bias=bool(getattr(config, "mlp_bias", False)), qk_norm=model_type == "qwen3")
    return ModelShape(**common, exact_parameters=count_parameters_on_meta(config))


def count_parameters(config: "PretrainedConfig | str", head: str = "lm") -> int:
    """Parameters of the model `config` describes (closed form for Llama/Mistral/Qwen2/Qwen3/GPT-2,
    exact meta-device count otherwise)."""
    return model_shape(config).num_parameters(head)


def count_parameters_on_meta(config: "PretrainedConfig") -> int:
    """Exact parameter count of the causal LM, built on the meta device (shapes only, no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
# Per-role estimates


@dataclass
class MemoryEstimate:
    """Estimated memory of one rank of one role (GiB; see the module doc for each term)."""

    role: str
    num_nodes: int
    devices_per_node: int
    zero_stage: int
    offload: str  # "none", "optimizer", "params" or "optimizer+params"
    dtype: str  # engine dtype
    parameters: int  # model parameters (count)
    trainable_parameters: int  # 0 for forward-only roles; LoRA adapter size with lora_rank > 0
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float  # peak of the training micro-batch and the forward passes
    kv_cache_gib: float  # actor generation (KV cache + per-step logits + prefill)
    overhead_gib: float  # CUDA context/fragmentation + ZeRO buffers
    cpu_gib: float  # host memory per rank for offloaded weights/optimizer state
    total_gib: float  # weights + grads + optimizer + max(activations, kv_cache) + overhead

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.devices_per_node


def _gib(n_bytes: float) -> float:
    return n_bytes / GIB


def _role_model(cfg: PPOConfig, role: str):
    return {"actor": cfg.actor, "critic": cfg.critic, "reward": cfg.reward, "reference": cfg.reference}[role]


def _config_for(role: str, model_configs: dict[str, Any]):
    """The model config of `role`, with the fallbacks PPOConfig uses for paths: the reference
    defaults to the actor, the critic to the reward model, then to the actor."""
    chain = {"actor": ("actor",), "reference": ("reference", "actor"), "reward": ("reward",),
             "critic": ("critic", "reward", "actor")}[role]
    for name in chain:
        if model_configs.get(name) is not None:
            return model_configs[name]
    raise ValueError(f"no model config for role {role!r}: pass model_configs[{chain[0]!r}] "
                     f"(an HF config object or a local model directory)")


def estimate_role_memory(cfg: PPOConfig, role: str, model_config: "PretrainedConfig | str | ModelShape",
                         ) -> MemoryEstimate:
    """Memory of one rank of `role` under `cfg` (its engine, placement, batch and sequence settings)."""
    shape = model_config if isinstance(model_config, ModelShape) else model_shape(model_config)
    place, engine = cfg.placement.role(role), getattr(cfg.engines, role)
    options = _role_model(cfg, role).options
    b = DTYPE_BYTES[engine.dtype]
    dp = place.world_size
    trained = role in TRAINED_ROLES
    lm_head = role in LM_HEAD_ROLES
    params = shape.num_parameters("lm" if lm_head else "scalar")
    trainable = 0
    if trained and options.lora_rank:  # the adapter, plus the scalar head of a critic (trained whole)
        trainable = shape.lora_parameters(options.lora_rank) + (0 if lm_head else shape.hidden_size)
    elif trained:
        trainable = params

    weights = params * b / (dp if engine.zero_stage == 3 else 1)
    grads = trainable * b / (dp if engine.zero_stage >= 2 else 1)
    optimizer = trainable * (12 if b < 4 else 8) / (dp if engine.zero_stage >= 1 else 1)
    cpu = 0.0
    if engine.offload_params:
        cpu, weights = cpu + weights, 0.0
    if trained and engine.offload_optimizer:
        cpu, optimizer = cpu + optimizer, 0.0

    P, T = cfg.data.max_prompt_len, cfg.response_tokens()
    S = P + T
    V, H, L = shape.vocab_size, shape.hidden_size, shape.num_layers
    act = shape.activation_bytes_per_token_layer(b)
    fwd = shape.forward_bytes_per_token_layer(b)
    micro = cfg.algorithm.update.micro_batch_size
    # The actor and critic score rollouts in chunks of their training micro-batch; the reference and
    # the reward model use engines.forward_micro_batch_size (rlhf.trainers.ppo_setup.init_models).
    fwd_micro = micro if trained else cfg.engines.forward_micro_batch_size
    forward = fwd_micro * S * fwd + (fwd_micro * S * V * b + fwd_micro * T * V * 4 if lm_head else 0)
    activations = forward
    if trained:
        per_token = L * H * b + act if options.gradient_checkpointing else L * act
        train = micro * S * per_token + (micro * S * V * b + micro * T * V * 8 if lm_head else 0)
        activations = max(activations, train)
    kv = 0.0
    if role == "actor" and cfg.rollout.engine == "hf":  # a vLLM engine holds its own (rlhf/distributed/rollout_memory.py)
        rows = math.ceil(cfg.rollout.batch_size / dp)
        kv = rows * S * shape.kv_bytes_per_token(b) + rows * V * 4 * 3 + rows * P * fwd

    buffers = 0.0
    if engine.zero_stage == 3:
        buffers = (engine.zero_bucket_size + shape.largest_tensor) * b
    elif trained and engine.zero_stage in (1, 2):
        buffers = 2 * engine.zero_bucket_size * b
    overhead = CUDA_OVERHEAD_GIB * GIB + buffers

    if role == "reward" and not cfg.reward_role.uses_model:  # rule-based or server reward: no model here
        params = trainable = 0
        weights = grads = optimizer = activations = kv = overhead = cpu = 0.0
    offload = "+".join(name for name, on in (("optimizer", trained and engine.offload_optimizer),
                                               ("params", engine.offload_params)) if on) or "none"
    total = weights + grads + optimizer + max(activations, kv) + overhead
    return MemoryEstimate(
        role=role, num_nodes=place.num_nodes, devices_per_node=place.devices_per_node,
        zero_stage=engine.zero_stage, offload=offload, dtype=engine.dtype, parameters=params,
        trainable_parameters=trainable, weights_gib=_gib(weights), grads_gib=_gib(grads),
        optimizer_gib=_gib(optimizer), activations_gib=_gib(activations), kv_cache_gib=_gib(kv),
        overhead_gib=_gib(overhead), cpu_gib=_gib(cpu), total_gib=_gib(total))


def estimate_memory(cfg: PPOConfig, model_configs: dict[str, Any]) -> dict[str, MemoryEstimate]:
    """`MemoryEstimate` of every active role (`cfg.roles()`). `model_configs` maps role → HF config,
    local model dir or `ModelShape`; missing roles fall back like PPOConfig's paths (reference →
    actor; critic → reward → actor). With a rule-based reward the reward role needs no config."""
    shapes: dict[int, ModelShape] = {}  # one parse per distinct config object
    estimates = {}
    for role in cfg.roles():
        if role == "reward" and not cfg.reward_role.uses_model:
            source = ModelShape("none", 1, 1, 1, 1, 1, 1, 1, True)
        else:
            source = _config_for(role, model_configs)
        if not isinstance(source, ModelShape):
            source = shapes.setdefault(id(source), model_shape(source))
        estimates[role] = estimate_role_memory(cfg, role, source)
    return estimates


# Published configs of the hub models the recipes use, so that a dry run plans memory offline (no hub
# access, nothing cached). Only the fields memory depends on; values from each model's config.json.
PUBLISHED_CONFIGS: dict[str, dict] = {
    "meta-llama/Llama-3.1-8B-Instruct": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "Qwen/Qwen2.5-0.5B-Instruct": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
}
PUBLISHED_CONFIGS["meta-llama/Meta-Llama-3-8B"] = PUBLISHED_CONFIGS["meta-llama/Llama-3.1-8B-Instruct"]
PUBLISHED_CONFIGS["Qwen/Qwen2.5-0.5B"] = PUBLISHED_CONFIGS["Qwen/Qwen2.5-0.5B-Instruct"]


def _auto_config(path: str, trust_remote_code: bool):
    """AutoConfig of `path`; for a hub name it cannot reach (offline), the published config above."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError:
        if path not in PUBLISHED_CONFIGS:
            raise
        fields = dict(PUBLISHED_CONFIGS[path])
        return AutoConfig.for_model(fields.pop("model_type"), **fields)


def load_model_configs(cfg: PPOConfig) -> dict[str, "PretrainedConfig"]:
    """`AutoConfig` of every role's model path (config.json only: no weights are read). Hub models
    the recipes use fall back to their published config when the hub is out of reach."""
    paths = {"actor": cfg.actor.path, "reference": cfg.reference_path(), "critic": cfg.critic_path(),
             "reward": cfg.reward.path if cfg.reward_role.uses_model else None}
    loaded: dict[str, Any] = {}
    configs = {}
    for role in cfg.roles():
        path = paths[role]
        if path:
            if path not in loaded:
                trust = _role_model(cfg, role).options.trust_remote_code
                loaded[path] = _auto_config(path, trust)
            configs[role] = loaded[path]
    return configs


# ---------------------------------------------------------------------------------------------------
# Plan-level check


@dataclass
class DeviceMemory:
    """Memory of every device of one device group (all of a group's devices carry the same load)."""

    group: str
    roles: tuple[str, ...]
    num_devices: int  # num_nodes × devices_per_node
    estimates: list[MemoryEstimate]  # one per role of the group
    total_gib: float  # per device: the colocated roles add up (hybrid host: the largest phase)
    gpu_memory_gib: float
    # hybrid host (one process running its roles in turn): active role → GiB per GPU while it runs
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.gpu_memory_gib


@dataclass(frozen=True)
class Remedy:
    """One change to the config and how much it saves on a device group that does not fit."""

    change: str  # override(s) to apply, e.g. "engines.actor.offload_optimizer=true"
    why: str
    saving_gib: float
    enough: bool  # the group fits with this change alone


def _group_totals(cfg: PPOConfig, model_configs, gpu_memory_gb: float | None) -> list[DeviceMemory]:
    cluster = cfg.placement.cluster or None
    plan = plan_placement(cfg.placement, cfg.roles(), cluster=cluster if gpu_memory_gb is None else None)
    from rlhf.distributed.rollout_memory import rollout_estimate

    estimates = estimate_memory(cfg, model_configs)
    groups = []
    for g in plan.groups:
        gpu_memory = _gpu_memory(cfg, g, gpu_memory_gb)
        members = [estimates[r] for r in g.roles]
        if "actor" in g.roles and cfg.rollout.engine == "vllm":  # colocated engines share the actor's GPUs
            members.append(rollout_estimate(cfg, estimates["actor"], gpu_memory))
        phases = hybrid_phase_peaks(members, g.idle_offload) if plan.hosted_together(g) else {}
        groups.append(DeviceMemory(group=g.name, roles=tuple(e.role for e in members),
                                   num_devices=g.num_nodes * g.devices_per_node, estimates=members,
                                   total_gib=max(phases.values()) if phases else sum(e.total_gib for e in members),
                                   gpu_memory_gib=gpu_memory, phases=phases))
    return groups


def _gpu_memory(cfg: PPOConfig, group: DeviceGroup, gpu_memory_gb: float | None) -> float:
    if gpu_memory_gb is not None:
        return float(gpu_memory_gb)
    nodes = [cfg.placement.cluster[i] for i in group.assigned_nodes] or cfg.placement.cluster
    sizes = [n.gpu_memory_gb for n in nodes if n.gpus > 0 and n.gpu_memory_gb > 0]
    if not sizes:
        raise ValueError("check_memory needs the GPU memory: pass gpu_memory_gb, or describe the cluster "
                         "with placement.cluster=[{gpus: 8, gpu_memory_gb: 80}, ...]")
    return float(min(sizes))


def check_memory(cfg: PPOConfig, model_configs: dict[str, Any],
                 gpu_memory_gb: float | None = None) -> list[DeviceMemory]:
    """Per-device memory of every device group; raises PlanError if any group exceeds the GPU memory.

    `gpu_memory_gb` (GiB per GPU) defaults to the smallest `gpu_memory_gb` of the nodes the plan puts
    each group on (`cfg.placement.cluster`, which must then be given). The error names the roles, the
    estimate against the GPU memory and the changes that would help, largest saving first.
    """
    groups = _group_totals(cfg, model_configs, gpu_memory_gb)
    failing = [g for g in groups if not g.fits]
    if failing:
        raise PlanError("\n\n".join(_refusal(cfg, model_configs, g) for g in failing))
    return groups


def _refusal(cfg: PPOConfig, model_configs, group: DeviceMemory) -> str:
    layout = f"{group.estimates[0].num_nodes} node(s) × {group.estimates[0].devices_per_node} GPU(s)"
    lines = [f"estimated GPU memory does not fit: device group {group.group!r} (roles {'+'.join(group.roles)}, "
             f"{layout}) needs {group.total_gib:.1f} GiB per GPU, the GPU has {group.gpu_memory_gib:g} GiB "
             f"(over by {group.total_gib - group.gpu_memory_gib:.1f} GiB).", "Per role (GiB per GPU):"]
    for e in group.estimates:
        lines.append(f"  {e.role}: {e.total_gib:.1f} = weights {e.weights_gib:.1f} + grads {e.grads_gib:.1f} + "
                     f"optimizer {e.optimizer_gib:.1f} + max(activations {e.activations_gib:.1f}, "
                     f"KV cache {e.kv_cache_gib:.1f}) + overhead {e.overhead_gib:.1f}  "
                     f"[ZeRO-{e.zero_stage}, offload {e.offload}, {e.dtype}, dp {e.world_size}]")
    remedies = suggest_remedies(cfg, model_configs, group)
    if remedies:
        lines.append("What to change (estimated saving per GPU, largest first; '(enough alone)' = fits "
                     "with that change only):")
        lines += [f"  - {r.change}: {r.why}: -{r.saving_gib:.1f} GiB{' (enough alone)' if r.enough else ''}"
                  for r in remedies]
    if not any(r.enough for r in remedies):
        lines.append("No single change is enough: combine several, or add GPUs "
                     "(placement.<role>.num_nodes / devices_per_node with ZeRO-3).")
    return "\n".join(lines)


def suggest_remedies(cfg: PPOConfig, model_configs, group: DeviceMemory) -> list[Remedy]:
    """Changes that lower `group`'s memory per GPU, each re-estimated on a modified copy of `cfg`,
    ranked by saving (largest first); changes that save nothing are left out."""
    remedies = []
    for change, why, edit, without in _candidate_changes(cfg, group):
        new_cfg = copy.deepcopy(cfg)
        try:
            edit(new_cfg)
        except ValueError:  # the change is not valid for this config (e.g. an engine constraint)
            continue
        estimates = estimate_memory(new_cfg, model_configs)
        members = [estimates.get(r, e) for r, e in zip(group.roles, group.estimates) if r != without]
        if group.phases:  # a hybrid host: its largest phase under the changed policies
            offload = {e.role: new_cfg.placement.role(e.role).offload_when_idle for e in members if e.role != "rollout"}
            new_total = max(hybrid_phase_peaks(members, offload).values())
        else:
            new_total = sum(e.total_gib for e in members)
        saving = group.total_gib - new_total
        if saving > 0.05:
            remedies.append(Remedy(change, why, saving, new_total <= group.gpu_memory_gib))
    return sorted(remedies, key=lambda r: -r.saving_gib)


def _set_engine(role: str, **changes):
    def edit(cfg: PPOConfig) -> None:
        setattr(cfg.engines, role, replace(getattr(cfg.engines, role), **changes))
    return edit


def _set(path: str, value):
    def edit(cfg: PPOConfig) -> None:
        *parents, name = path.split(".")
        target = cfg
        for p in parents:
            target = getattr(target, p)
        setattr(target, name, value)
    return edit


def _candidate_changes(cfg: PPOConfig, group: DeviceMemory):
    """(override text, reason, edit of a PPOConfig copy, role removed from the group or None)."""
    out = []
    for e in group.estimates:
        role, engine = e.role, getattr(cfg.engines, e.role)
        stage = engine.zero_stage
        if e.parameters == 0:
            continue
        if role in TRAINED_ROLES and not engine.offload_optimizer:
            text = f"engines.{role}.offload_optimizer=true" + (" engines.{role}.zero_stage=1".format(role=role)
                                                                if stage == 0 else "")
            out.append((text, f"move the {role}'s AdamW state to CPU memory (ZeRO-Offload)",
                        _set_engine(role, offload_optimizer=True, zero_stage=max(stage, 1)), None))
        if stage < 3 and e.world_size > 1:
            out.append((f"engines.{role}.zero_stage=3", f"shard the {role}'s weights, grads and optimizer "
                        f"state over its {e.world_size} ranks (ZeRO-3)", _set_engine(role, zero_stage=3), None))
        if not engine.offload_params:
            out.append((f"engines.{role}.zero_stage=3 engines.{role}.offload_params=true",
                        f"keep the {role}'s weights in CPU memory between uses (ZeRO-3 param offload)",
                        _set_engine(role, zero_stage=3, offload_params=True), None))
        if role in TRAINED_ROLES and not _role_model(cfg, role).options.gradient_checkpointing:
            out.append((f"{role}.options.gradient_checkpointing=true",
                        f"recompute the {role}'s activations in backward (~30% slower updates)",
                        _set(f"{role}.options.gradient_checkpointing", True), None))
        if group.phases and stage != 3 and cfg.placement.role(role).offload_when_idle != "all":
            out.append((f"placement.{role}.offload_when_idle=all", f"move the {role}'s states off the GPU while "
                        "the other hosted roles run (hybrid layout)", _set(f"placement.{role}.offload_when_idle", "all"),
                        None))
        if len(group.roles) > 1:
            alone = role if cfg.placement.layout == "hybrid" else "null"  # hybrid: null means the shared host
            out.append((f"placement.{role}.colocate={alone}", f"colocate fewer roles: give the {role} GPUs of "
                        f"its own ({e.world_size} more)", lambda c: None, role))
    update, rollout = cfg.algorithm.update, cfg.rollout
    if update.micro_batch_size > 1:
        out.append((f"algorithm.update.micro_batch_size={update.micro_batch_size // 2}",
                    "smaller micro-batch (more gradient accumulation, same update)",
                    _set("algorithm.update.micro_batch_size", update.micro_batch_size // 2), None))
    if cfg.engines.forward_micro_batch_size > 1 and {"reference", "reward"} & set(group.roles):
        fwd = cfg.engines.forward_micro_batch_size
        out.append((f"engines.forward_micro_batch_size={fwd // 2}", "smaller forward chunks for the "
                    "reference/reward scoring", _set("engines.forward_micro_batch_size", fwd // 2), None))
    if "actor" in group.roles:
        if rollout.samples_per_prompt > 1:
            out.append((f"rollout.samples_per_prompt={rollout.samples_per_prompt // 2}",
                        "fewer samples per prompt: fewer rows generated at once (smaller KV cache)",
                        _set("rollout.samples_per_prompt", rollout.samples_per_prompt // 2), None))
        elif rollout.prompts_per_step > 1:
            out.append((f"rollout.prompts_per_step={rollout.prompts_per_step // 2}",
                        "fewer prompts per step: fewer rows generated at once (smaller KV cache)",
                        _set("rollout.prompts_per_step", rollout.prompts_per_step // 2), None))
    if rollout.max_new_tokens > 1:
        out.append((f"rollout.max_new_tokens={rollout.max_new_tokens // 2}",
                    "shorter responses (shorter sequences in every pass)",
                    _set("rollout.max_new_tokens", rollout.max_new_tokens // 2), None))
    per_node = group.estimates[0].devices_per_node
    names = group.roles[0] if len(group.roles) == 1 else "{" + ",".join(group.roles) + "}"
    doubled = f"placement.{names}.devices_per_node={2 * per_node} engines.{names}.zero_stage=3"

    def more_gpus(c: PPOConfig) -> None:
        for r in group.roles:
            c.placement.role(r).devices_per_node = 2 * per_node
            if getattr(c.engines, r).zero_stage != 3:
                _set_engine(r, zero_stage=3)(c)
    out.append((doubled, f"more GPUs: twice the GPUs per node for {'+'.join(group.roles)}, sharded with ZeRO-3",
                more_gpus, None))
    return out


def describe_memory(cfg: PPOConfig, model_configs: dict[str, Any], gpu_memory_gb: float | None = None) -> str:
    """A printable table: one row per role (GiB per GPU), then each device group's total against the
    GPU memory. Does not raise for a plan that does not fit (that is `check_memory`'s job)."""
    groups = _group_totals(cfg, model_configs, gpu_memory_gb)
    header = (f"{'role':<10} {'nodes×GPUs':>10} {'ZeRO':>4} {'offload':>16} {'dtype':>5} {'params':>8} "
              f"{'weights':>8} {'grads':>7} {'optim':>7} {'activ':>7} {'KV':>7} {'overhead':>8} {'total':>7}")
    lines = ["Estimated memory per GPU (GiB; total = weights + grads + optim + max(activ, KV) + overhead)",
             header, "-" * len(header)]
    for g in groups:
        for e in g.estimates:
            lines.append(f"{e.role:<10} {f'{e.num_nodes}×{e.devices_per_node}':>10} {e.zero_stage:>4} "
                         f"{e.offload:>16} {e.dtype:>5} {_count(e.parameters):>8} {e.weights_gib:>8.2f} "
                         f"{e.grads_gib:>7.2f} {e.optimizer_gib:>7.2f} {e.activations_gib:>7.2f} "
                         f"{e.kv_cache_gib:>7.2f} {e.overhead_gib:>8.2f} {e.total_gib:>7.2f}")
    lines.append("")
    for g in groups:
        verdict = "fits" if g.fits else f"DOES NOT FIT (over by {g.total_gib - g.gpu_memory_gib:.1f} GiB)"
        lines.append(f"[{g.group}] {'+'.join(g.roles)} on {g.num_devices} GPU(s): {g.total_gib:.1f} GiB per GPU "
                     f"of {g.gpu_memory_gib:g} GiB — {verdict}")
        if g.phases:
            lines.append("  hybrid host, peak per phase (the active role whole, the others what "
                         "placement.<role>.offload_when_idle keeps): "
                         + ", ".join(f"{r} {v:.1f}" for r, v in g.phases.items()))
    cpu = {e.role: e.cpu_gib for g in groups for e in g.estimates if e.cpu_gib > 0}
    if cpu:
        lines.append("Offloaded to CPU memory per rank: " + ", ".join(f"{r} {v:.1f} GiB" for r, v in cpu.items()))
    return "\n".join(lines)


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
