"""A scalar head on an LM backbone: the shared core of the critic and the reward model.

Both roles are HF `AutoModelForSequenceClassification` models with `num_labels=1`, so they are standard
HF directories (save_pretrained / from_pretrained), and a critic can start from a reward model's
directory with its trained head. HF's own forward pools one position found by pad-token id, which is
wrong when pad == EOS (the usual fallback for GPT-2/Llama tokenizers) or a pad id was sampled inside a
response, and gives the critic no per-token values; so we run the backbone and apply the head to every
position ourselves (`token_scores`), and each role picks its positions from the attention mask.

Shape key: B sequences, S tokens, H hidden size.
"""
from __future__ import annotations

from pathlib import Path

import torch

from rlhf.models.loading import ModelOptions, apply_training_options, load_pretrained
from rlhf.models.sequence import position_ids_from_mask

# Attribute names of the scalar head in HF *ForSequenceClassification models (Llama, Qwen, Mistral,
# GPT-2, GPT-NeoX, OPT… use `score`; encoder-style models use `classifier`).
HEAD_NAMES = ("score", "classifier")
NEW_HEAD_INITS = ("zero", "normal", "hf")


def find_backbone_and_head(model) -> tuple[torch.nn.Module, str, torch.nn.Module]:
    """(backbone, head attribute name, head) of a sequence classifier, plain or peft-wrapped.

    The backbone is HF's `base_model` (the transformer without the head, returning hidden states).
    Raises TypeError naming the class when no known head attribute exists.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # unwrap peft
    for name in HEAD_NAMES:
        head = getattr(inner, name, None)
        # peft's SEQ_CLS wraps the head in a ModulesToSaveWrapper; the real layer is `original_module`.
        if isinstance(getattr(head, "original_module", head), torch.nn.Linear) and inner.base_model is not inner:
            return inner.base_model, name, head
    raise TypeError(f"{type(inner).__name__} has no scalar head: expected a *ForSequenceClassification model "
                    f"with a backbone (`base_model`) and a Linear head attribute named one of {HEAD_NAMES}")


def token_scores(model, input_ids_BS: torch.Tensor, attention_mask_BS: torch.Tensor) -> torch.Tensor:
    """[B, S] float32: the head's scalar at every position (meaningless on padding; callers select).

    `model` is the sequence classifier, or an engine wrapping it (anything with `.module` that is called
    like it: rlhf's TrainEngine / InferenceEngine). The whole model is called once, through the engine,
    and the head's per-position output is taken with a forward hook (HF's own pooled output is ignored).
    Calling the backbone and the head separately instead would bypass the root module's forward: under
    ZeRO-3 DeepSpeed's root hooks then never run and the update silently differs from ZeRO-0's.
    """
    inner = model.module if hasattr(model, "module") and not hasattr(model, "config") else model
    _, _, head = find_backbone_and_head(inner)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        model(input_ids=input_ids_BS, attention_mask=attention_mask_BS,
              position_ids=position_ids_from_mask(attention_mask_BS), use_cache=False)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"{type(inner).__name__}: expected its scalar head to run once per forward, "
                           f"it ran {len(captured)} times")
    return captured[0].squeeze(-1).float()


def load_scalar_model(name_or_path: str | Path, options: ModelOptions | None = None, new_head_init: str = "zero",
                      require_trained_head: bool = False):
    """Load a directory as a one-output sequence classifier, with LoRA / checkpointing per `options`.

    A reward-model (or critic) directory keeps its trained head. A causal-LM directory has no head, so
    one is created and initialised by `new_head_init`: "zero" (every score starts at 0), "normal"
    (std 1/(H+1), small and symmetric-breaking) or "hf" (the config's initializer_range). With
    `require_trained_head`, a missing head is an error instead (a random reward would be silent garbage).
    """
    if new_head_init not in NEW_HEAD_INITS:
        raise ValueError(f"new_head_init: got {new_head_init!r}, expected one of {NEW_HEAD_INITS}")
    options = options or ModelOptions()
    model, info = load_pretrained("AutoModelForSequenceClassification", name_or_path, options, num_labels=1)
    _, head_name, head = find_backbone_and_head(model)
    head_is_new = any(key.split(".")[0] == head_name for key in info["missing_keys"])
    if head_is_new and require_trained_head:
        raise ValueError(f"{str(name_or_path)!r} has no trained `{head_name}` head: it is not a reward-model "
                         f"directory (looks like a causal LM); train a reward model first or initialise from one")
    if head_is_new:
        _init_head(head, new_head_init, hidden_size=head.weight.shape[-1])
    if model.config.pad_token_id is None:  # HF's pooling refuses batches without one; we never use its pooling
        model.config.pad_token_id = model.config.eos_token_id if model.config.eos_token_id is not None else 0
    return apply_training_options(model, options)


def _init_head(head: torch.nn.Module, how: str, hidden_size: int) -> None:
    if how == "hf":
        return  # from_pretrained already initialised it with the config's initializer_range
    with torch.no_grad():
        if how == "zero":
            head.weight.zero_()
        else:
            head.weight.normal_(0.0, 1.0 / (hidden_size + 1))
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()
