"""Tiny models built fully offline: a character-level tokenizer and small random-init HF models.

The embedded default (DESIGN.md §7) and every test use these, and they are saved with
`save_pretrained` so all other code loads them through the ordinary `from_pretrained` path — nothing
elsewhere special-cases tiny models.

    tok_dir = build_tiny_tokenizer(tmp / "tok")                  # HF tokenizer directory
    model_dir = build_tiny_model(tmp / "model", tokenizer_dir=tok_dir)  # tokenizer saved beside it
"""
from __future__ import annotations

from pathlib import Path

# Characters of the arithmetic task plus a few for general text; each is one token.
ARITHMETIC_ALPHABET = "0123456789+-*=() "
# Printable ASCII and the newline: Python source (the code task, rlhf/tasks/code.py), one token per character.
CODE_ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n"
PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN = "<pad>", "<eos>", "<bos>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN)

# Plain-text chat template: each message becomes "<content>", the assistant turn follows the prompt.
# Kept trivial so that a chat-formatted arithmetic prompt is the same characters as the raw prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)


def build_tiny_tokenizer(out_dir: str | Path, alphabet: str = ARITHMETIC_ALPHABET,
                         padding_side: str = "left"):
    """Train a character-level tokenizer on `alphabet` and save it as an HF tokenizer in `out_dir`.

    Ids: 0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, then one id per alphabet character (a BPE with no merges,
    trained by `tokenizers` so every character is exactly one token). Returns the loaded
    `PreTrainedTokenizerFast`.
    """
    from tokenizers import Tokenizer, decoders, models, trainers
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(alphabet))
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=len(SPECIAL_TOKENS) + len(chars), special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=chars, limit_alphabet=len(chars), show_progress=False,
    )
    tokenizer.train_from_iterator(["".join(chars)], trainer=trainer)
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, bos_token=BOS_TOKEN,
        unk_token=UNK_TOKEN, padding_side=padding_side, chat_template=CHAT_TEMPLATE,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tokenizer.save_pretrained(out_dir)
    return hf_tokenizer


# A second family's conventions (ChatML turns, one end-of-text token as EOS and pad), for a tokenizer that
# differs from the character-level one in every id: a reward model "from another family" in tests.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_bpe_tokenizer(out_dir: str | Path, vocab_size: int = 400, padding_side: str = "right"):
    """Train a byte-level BPE with real merges on arithmetic text (offline) and save it as an HF tokenizer.

    Unlike `build_tiny_tokenizer`, a number is usually one or two tokens ("58", "+5" merged), the special
    tokens are `<|endoftext|>` (EOS and pad; no BOS), `<|im_start|>` and `<|im_end|>`, and the chat
    template is ChatML: no id means the same in the two. Returns the loaded `PreTrainedTokenizerFast`.
    """
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [f"{a}+{b}={a + b}" for a, b in ((rng.randrange(100), rng.randrange(100)) for _ in range(4000))]
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus + ["user assistant system\n"], trainer=trainer)
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                           pad_token="<|endoftext|>", padding_side=padding_side,
                                           chat_template=CHATML_TEMPLATE)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tokenizer.save_pretrained(out_dir)
    return hf_tokenizer


# Architecture name → (config class name, the config field names for width/depth/heads/context).
_TINY_ARCHS = {
    "llama": ("LlamaConfig", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "max_position_embeddings"),
    "gpt2": ("GPT2Config", "n_embd", "n_layer", "n_head", "n_positions"),
    "mistral": ("MistralConfig", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings"),
}


def tiny_config(tokenizer, arch: str = "llama", num_layers: int = 2, hidden_size: int = 128,
                num_heads: int = 4, max_positions: int = 256, **overrides):
    """An HF config for a tiny `arch` model whose vocab and bos/eos/pad ids come from `tokenizer`.

    `overrides` are passed to the config class (e.g. `initializer_range=0.2` for peakier random logits,
    `num_labels=1` for a reward model). Raises ValueError for an unknown `arch`.
    """
    import transformers

    if arch not in _TINY_ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; choose one of {sorted(_TINY_ARCHS)}")
    config_cls, width, depth, heads, context = _TINY_ARCHS[arch]
    fields = {width: hidden_size, depth: num_layers, heads: num_heads, context: max_positions}
    if arch == "llama":
        fields.update(intermediate_size=4 * hidden_size, num_key_value_heads=num_heads, tie_word_embeddings=False)
    elif arch == "mistral":  # grouped-query attention as in Mistral 7B (32 query heads, 8 KV heads), no window
        fields.update(intermediate_size=4 * hidden_size, num_key_value_heads=max(1, num_heads // 4),
                      sliding_window=None, tie_word_embeddings=False)
    else:  # GPT-2 defaults to 0.1 dropout; RL wants a deterministic policy (sampler and trainer agree)
        fields.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    fields.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    fields.update(overrides)
    return getattr(transformers, config_cls)(**fields)


def build_tiny_model(out_dir: str | Path, tokenizer_dir: str | Path | None = None, arch: str = "llama",
                     num_layers: int = 2, hidden_size: int = 128, num_heads: int = 4, seed: int = 0,
                     max_positions: int = 256, **config_overrides) -> Path:
    """Build a random-init tiny causal LM and save it (safetensors) with its tokenizer in `out_dir`.

    The tokenizer is loaded from `tokenizer_dir`, or built with `build_tiny_tokenizer` when None.
    `seed` fixes the initial weights. Returns `out_dir` as a Path, loadable by `load_causal_lm`.
    """
    from transformers import AutoModelForCausalLM

    return _build_and_save(AutoModelForCausalLM, out_dir, tokenizer_dir, seed, arch=arch, num_layers=num_layers,
                           hidden_size=hidden_size, num_heads=num_heads, max_positions=max_positions,
                           **config_overrides)


def build_tiny_reward_model(out_dir: str | Path, tokenizer_dir: str | Path | None = None, arch: str = "llama",
                            num_layers: int = 2, hidden_size: int = 128, num_heads: int = 4, seed: int = 0,
                            max_positions: int = 256, **config_overrides) -> Path:
    """Like `build_tiny_model`, but a sequence classifier with one label (a reward-model directory).

    The score head is random-init (the config's `initializer_range`) and saved, so the directory
    loads with `load_reward_model` as a trained reward model would.
    """
    from transformers import AutoModelForSequenceClassification

    return _build_and_save(AutoModelForSequenceClassification, out_dir, tokenizer_dir, seed, arch=arch,
                           num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                           max_positions=max_positions, num_labels=1, **config_overrides)


def _build_and_save(auto_cls, out_dir, tokenizer_dir, seed: int, **config_kwargs) -> Path:
    """Init `auto_cls` from a tiny config under `seed`, then save model + tokenizer to `out_dir`."""
    import torch
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    if tokenizer_dir is None:
        tokenizer = build_tiny_tokenizer(out_dir)
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_config(tokenizer, **config_kwargs)
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = auto_cls.from_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
