"""Load and save HF models and tokenizers for every role, with the options users expect.

Every role's weights are an ordinary HF directory (or hub name) loaded through `from_pretrained`:
the actor and reference through `load_causal_lm`, the critic and reward model through the
sequence-classifier loaders in `critic.py` / `reward.py`, which share `load_pretrained` and
`apply_training_options` from here. `save_model` writes a standard HF directory back (LoRA merged), so
a stage's output feeds the next stage unchanged (DESIGN.md §6).

    model = load_causal_lm("out/sft", ModelOptions(dtype="bfloat16", lora_rank=8))
"""
from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import torch

from rlhf.config.model import ModelOptions  # noqa: F401  (re-exported: models' public API)
from rlhf.models.lora import lora_merge_plan

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
_TRUTHY = ("1", "true", "yes", "on")


def load_causal_lm(name_or_path: str | Path, options: ModelOptions | None = None):
    """Load a causal LM (actor / reference / SFT policy) from a local HF directory or a hub name.

    Applies `options`: dtype, trust_remote_code, then gradient checkpointing and LoRA. Raises
    FileNotFoundError / OSError naming the path and what was expected when it cannot be found.
    """
    options = options or ModelOptions()
    model, _ = load_pretrained("AutoModelForCausalLM", name_or_path, options)
    return apply_training_options(model, options)


def load_pretrained(auto_class: str, name_or_path: str | Path, options: ModelOptions, **kwargs):
    """`transformers.<auto_class>.from_pretrained` with path checks, dtype and trust_remote_code.

    Returns `(model, loading_info)`; `loading_info["missing_keys"]` lists weights that were newly
    initialised (e.g. a score head when a causal-LM dir is loaded as a sequence classifier).
    Training options (gradient checkpointing, LoRA) are not applied: see `apply_training_options`.
    """
    import transformers

    source = resolve_model_source(name_or_path)
    auto_cls = getattr(transformers, auto_class)
    with _hub_errors_explained(source):
        return auto_cls.from_pretrained(source, dtype=DTYPES[options.dtype], output_loading_info=True,
                                        trust_remote_code=options.trust_remote_code, **kwargs)


def load_tokenizer(name_or_path: str | Path, padding_side: str = "left", trust_remote_code: bool = False):
    """Load the tokenizer saved with a model. Left padding by default, as batched generation needs.

    A tokenizer without a pad token (GPT-2, Llama) gets its EOS token as pad: pads are always masked
    out by the attention mask, so the shared id never changes a computed value.
    """
    from transformers import AutoTokenizer

    source = resolve_model_source(name_or_path, required_file=None)
    with _hub_errors_explained(source):
        tokenizer = AutoTokenizer.from_pretrained(source, padding_side=padding_side,
                                                  trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer at {source!r} has neither a pad nor an EOS token; set one before use")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def apply_training_options(model, options: ModelOptions):
    """Enable gradient checkpointing and wrap in LoRA as `options` ask; returns the model to use.

    With LoRA only adapter weights are trainable; for a sequence classifier the score head is trained
    too (peft's SEQ_CLS task keeps `score`/`classifier` as a full trainable copy).
    """
    if options.gradient_checkpointing:
        _enable_activation_checkpointing(model)
    if options.lora_rank == 0:
        return model
    from peft import LoraConfig, get_peft_model

    is_classifier = type(model).__name__.endswith("ForSequenceClassification")
    lora = LoraConfig(r=options.lora_rank, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
                      target_modules=options.peft_target_modules(),
                      task_type="SEQ_CLS" if is_classifier else "CAUSAL_LM")
    model = get_peft_model(model, lora)
    lora_merge_plan(model)  # a LoRA variant that cannot be exported merged fails now, not after training
    return model


def _enable_activation_checkpointing(model) -> None:
    # Non-reentrant checkpointing needs no `enable_input_require_grads` hack for frozen (LoRA) embeddings.
    # transformers 5 renamed the method (the old name warns); 4.x only has the old one.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def save_model(model, out_dir: str | Path, tokenizer=None) -> Path:
    """Save `model` (and `tokenizer`) as a standard HF directory with safetensors weights.

    A LoRA model is merged into its base weights on a copy first, so the live model keeps training
    and the saved directory loads with plain `from_pretrained` (no peft needed).
    """
    out_dir = Path(out_dir)
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def resolve_model_source(name_or_path: str | Path, required_file: str | None = "config.json") -> str:
    """Check a local path before `from_pretrained` sees it; return it, or a hub name unchanged.

    Raises FileNotFoundError naming the path when it looks local but is missing, is a file, or is a
    directory without `required_file`.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    expected = "a directory written by save_pretrained (with config.json) or a hub name like 'org/model'"
    if path.is_dir():
        if required_file and not (path / required_file).is_file():
            raise FileNotFoundError(f"model directory {str(path)!r} has no {required_file}: expected {expected}")
        return str(path)
    if path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} is a file: expected {expected}")
    if _looks_local(text):
        raise FileNotFoundError(f"model path {str(path)!r} does not exist: expected {expected}")
    return text


def _looks_local(text: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else path-like must exist locally."""
    return (text.startswith(("/", ".", "~")) or "\\" in text or text.endswith("/") or text.count("/") > 1)


@contextlib.contextmanager
def _hub_errors_explained(source: str):
    """Turn a hub lookup OSError into one that says what was tried and why it failed."""
    try:
        yield
    except OSError as exc:
        if Path(source).is_dir():
            raise
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUTHY:
            why = ("the hub is offline (HF_HUB_OFFLINE is set), so only models already in the local HF cache "
                   "load; pass a local directory or unset HF_HUB_OFFLINE")
        else:
            why = "check the hub name, your network and your credentials (HF_TOKEN) for gated models"
        raise OSError(f"could not load {source!r}: it is not a local directory (with config.json) and "
                      f"the hub lookup failed: {why}. Original error: {exc}") from exc
