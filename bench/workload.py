"""The fixed workload every system is measured on, and the offline assets it needs.

One PPO iteration = 16 prompts of 8–16 tokens → 32 sampled tokens each at temperature 0.7 → reference
log-probs, values, reward scores → GAE (γ=1, λ=0.95) with k1 KL-in-reward (β=0.05) → one epoch of one
minibatch: PPO-clip 0.2 actor update and value-clip 0.2 critic update. Four GPT-2 models of the same
size (4 layers, hidden 256, 4 heads, 512-token vocab), random init, fp32 on CPU.

Why no row ever stops early: the tokenizer's EOS is id 512, one past the models' 512 output logits,
so no sampler (ours, TRL's, bare `generate`) can produce it. Every row is exactly `response_len`
tokens, and "generated tokens" = batch × response_len in every system — no system can look faster by
stopping early. The model configs carry no EOS id (HF warns on an id outside the vocabulary); our
rollout reads EOS from the tokenizer, TRL runs with `stop_token=None`.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

PAD, BOS, UNK, EOS = "<pad>", "<bos>", "<unk>", "<eos>"


@dataclass(frozen=True)
class Workload:
    """The numbers of the workload; `replace(...)` gives the scaling grid's variants."""

    num_layers: int = 4
    hidden_size: int = 256
    num_heads: int = 4
    vocab_size: int = 512  # model logits; the tokenizer has one extra, unsampleable id: EOS = 512
    max_positions: int = 256  # ≥ 16 prompt + 128 response tokens of the largest scaling point
    batch: int = 16  # prompts (= rows: one sample per prompt) per PPO iteration
    prompt_len: tuple[int, int] = (8, 16)  # prompt lengths drawn uniformly in [lo, hi] tokens
    response_len: int = 32  # sampled tokens per row, always all of them (no EOS stop)
    temperature: float = 0.7
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05  # k1 estimator, in the reward
    clip: float = 0.2  # PPO ratio clip
    value_clip: float = 0.2
    lr: float = 3e-6  # same for actor and critic (TRL has one optimizer for both); no effect on speed
    iterations: int = 12  # per section, the first `warmup` are not reported
    warmup: int = 2
    rm_pairs: int = 16  # reward-model training pairs per optimizer step
    seed: int = 0

    @property
    def generated_tokens(self) -> int:
        return self.batch * self.response_len

    def describe(self) -> dict:
        return {**asdict(self), "generated_tokens_per_iteration": self.generated_tokens}


@dataclass
class Assets:
    """Directories and data files built by `build_assets` (all plain HF / JSON files)."""

    root: str
    tokenizer: str = ""
    policy: str = ""  # causal LM; also the reference (same weights) and the RM-training backbone
    value: str = ""  # sequence classifier, 1 label: the critic's initial weights
    reward: str = ""  # sequence classifier, 1 label: the frozen reward model
    prompts: str = ""  # JSON list of token-id lists
    pairs: str = ""  # JSON list of {"prompt_len", "chosen", "rejected"} token-id lists
    extra: dict = field(default_factory=dict)

    def save(self) -> None:
        Path(self.root, "assets.json").write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, root: str | Path) -> "Assets":
        return cls(**json.loads(Path(root, "assets.json").read_text()))


def build_tokenizer(out_dir: Path, vocab_size: int = 512, seed: int = 0):
    """A byte-level BPE trained to `vocab_size` ids on generated pseudo-words, plus EOS at id `vocab_size`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "tu", "ra", "shi", "po", "ve", "dan", "gor", "fel", "zu", "qi", "bex", "yol"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    corpus = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(2000)]
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, UNK], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(f"BPE training gave {tokenizer.get_vocab_size()} ids, wanted {vocab_size}")
    # EOS is added after training, so it gets id vocab_size: outside the models' logits (see module doc).
    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, unk_token=UNK,
                                 eos_token=EOS, padding_side="left")
    if hf.eos_token_id != vocab_size:
        raise RuntimeError(f"EOS got id {hf.eos_token_id}, expected {vocab_size}")
    hf.save_pretrained(out_dir)
    return hf


def model_config(w: Workload, tokenizer, num_labels: int | None = None):
    from transformers import GPT2Config

    extra = {} if num_labels is None else {"num_labels": num_labels}
    return GPT2Config(vocab_size=w.vocab_size, n_embd=w.hidden_size, n_layer=w.num_layers, n_head=w.num_heads,
                      n_positions=w.max_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
                      **extra)


def build_assets(root: str | Path, w: Workload = Workload(), num_prompts: int = 2048) -> Assets:
    """Tokenizer, policy / value / reward models (random init, seeded), prompts and preference pairs."""
    import torch
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    assets = Assets(root=str(root), tokenizer=str(root / "tokenizer"), policy=str(root / "policy"),
                    value=str(root / "value"), reward=str(root / "reward"), prompts=str(root / "prompts.json"),
                    pairs=str(root / "pairs.json"))
    tokenizer = build_tokenizer(Path(assets.tokenizer), w.vocab_size, w.seed)
    for path, cls, labels, seed in ((assets.policy, GPT2LMHeadModel, None, w.seed),
                                    (assets.value, GPT2ForSequenceClassification, 1, w.seed + 1),
                                    (assets.reward, GPT2ForSequenceClassification, 1, w.seed + 2)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(model_config(w, tokenizer, labels))
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    rng = random.Random(w.seed)
    first_id = 3  # after <pad>, <bos>, <unk>: prompts hold ordinary tokens only
    prompts = [[rng.randrange(first_id, w.vocab_size) for _ in range(rng.randint(*w.prompt_len))]
               for _ in range(num_prompts)]
    Path(assets.prompts).write_text(json.dumps(prompts))
    pairs = []
    for prompt in prompts[:256]:
        chosen, rejected = ([rng.randrange(first_id, w.vocab_size) for _ in range(w.response_len)] for _ in range(2))
        pairs.append({"prompt_len": len(prompt), "chosen": prompt + chosen, "rejected": prompt + rejected})
    Path(assets.pairs).write_text(json.dumps(pairs))
    assets.save()
    return assets


@dataclass
class Prompt:
    """What `PPOTrainer.rollout` reads from a prompt dataset item."""

    input_ids: list[int]
    reference: object = None


def load_prompts(assets: Assets) -> list[Prompt]:
    return [Prompt(ids) for ids in json.loads(Path(assets.prompts).read_text())]


def load_pairs(assets: Assets) -> list[dict]:
    return json.loads(Path(assets.pairs).read_text())


def ppo_config(assets: Assets, w: Workload, cpus_per_rank: float = 0.25):
    """Our PPOConfig for the workload: four roles, ZeRO-0 fp32, one micro-batch of the whole batch."""
    from rlhf.config.algorithm import (AdvantageConfig, AlgorithmConfig, KLConfig, PolicyLossConfig,
                                       UpdateSchedule, ValueLossConfig)
    from rlhf.config.engine import EngineConfig
    from rlhf.config.model import ModelConfig
    from rlhf.config.placement import PlacementConfig, RolePlacement
    from rlhf.config.ppo import PPOConfig, PromptDataConfig, RoleEngines, RolloutConfig, TrainerConfig

    def place():
        return RolePlacement(cpus_per_rank=cpus_per_rank)

    return PPOConfig(
        actor=ModelConfig(path=assets.policy), critic=ModelConfig(path=assets.value),
        reward=ModelConfig(path=assets.reward), reference=ModelConfig(path=assets.policy),
        data=PromptDataConfig(train=assets.prompts),
        rollout=RolloutConfig(prompts_per_step=w.batch, samples_per_prompt=1, max_new_tokens=w.response_len,
                              temperature=w.temperature),
        algorithm=AlgorithmConfig(
            advantage=AdvantageConfig(estimator="gae", gamma=w.gamma, lam=w.lam, whiten=True),
            kl=KLConfig(coef=w.kl_coef, estimator="k1", in_reward=True, adaptive=False),
            policy_loss=PolicyLossConfig(name="ppo", clip_eps_low=w.clip, clip_eps_high=w.clip),
            value_loss=ValueLossConfig(clip_eps=w.value_clip),
            update=UpdateSchedule(epochs=1, num_minibatches=1, micro_batch_size=w.batch)),
        engines=RoleEngines(actor=EngineConfig(lr=w.lr), critic=EngineConfig(lr=w.lr),
                            forward_micro_batch_size=w.batch),
        placement=PlacementConfig(use_gpu=False, actor=place(), critic=place(), reward=place(), reference=place()),
        trainer=TrainerConfig(total_steps=w.iterations, seed=w.seed, eval_every=0, save_every=0,
                              tensorboard=False, progress=False),
    )


def compute_params(model_dir: str) -> dict[str, int]:
    """Parameters that do matmul work per token: transformer blocks + output head (not the lookups)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    d, layers = cfg.n_embd, cfg.n_layer
    block = layers * (12 * d * d + 13 * d)  # attn qkv+proj, MLP 4d, biases, two layer norms
    return {"blocks": block, "lm_head": cfg.vocab_size * d, "score_head": d}


def ppo_flops(w: Workload, assets: Assets) -> dict[str, float]:
    """FLOPs of one PPO iteration from parameter and token counts (2·N per token forward, 6·N train).

    Attention-score FLOPs (∝ S² per layer) are left out: at S ≤ 48 and d = 256 they add < 5 %.
    Generation is counted as one forward per token of the final sequence (prefill + 32 decode steps).
    """
    p = compute_params(assets.policy)
    lm, head = p["blocks"] + p["lm_head"], p["blocks"] + p["score_head"]
    seq = w.batch * (w.prompt_len[1] + w.response_len)  # tokens processed: prompts are left-padded to the longest
    parts = {"generate": 2 * lm * seq, "reference": 2 * lm * seq, "values": 2 * head * seq,
             "reward": 2 * head * seq, "actor_update": 6 * lm * seq, "critic_update": 6 * head * seq}
    return {**parts, "total": sum(parts.values()), "params_lm": lm, "params_value": head}


def scaled(w: Workload, **changes) -> Workload:
    return replace(w, **changes)
