"""Batched sampling with the KV cache (HF `generate`), returning a RolloutBatch.

Shape key: P prompts, G = n samples per prompt, B = P·G rows, S prompt+response tokens, T response
tokens, V vocab. Rows are prompt-major: rows p·G … p·G+G−1 answer prompt p (`group_ids_B`).

What `generate_rollouts` guarantees, beyond HF `generate`:
- `old_logprobs_BT` are log softmax(logits / temperature) of the sampled tokens, read from the very
  logits the sampler used (before top-k/top-p): what `policy.response_logprobs` computes, up to fp32
  rounding (a KV-cached decode sums in another order than a full forward), so PPO's first ratio is 1.
  In bf16/fp16 (`SamplingParams.dtype`, or a bf16 engine) the gap is real: PPO then recomputes them
  with the training forward (`ppo.rollout.recompute_logprobs`). They are taken step by step, never
  holding [B, T, V].
- A row ends at its first EOS or at the first token whose decoded response text contains a stop
  string; that token is kept (mask 1), everything after is pad with mask 0, and the decoded
  `responses` are cut before the stop string. `truncated_B` marks rows that hit `max_new_tokens`.
- Distribution-changing defaults from a hub model's generation_config.json (repetition penalty, …) are
  switched off, so sampling is softmax(logits / temperature) with only the top-k / top-p asked for.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from rlhf.algorithms import logprobs_from_logits
from rlhf.data.batch import RolloutBatch

# SamplingParams.dtype → the autocast dtype generation runs under (None: no autocast).
_AUTOCAST = {None: None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Generation-config fields that hub checkpoints set and that would change the sampled distribution.
_NEUTRAL_GENERATION = dict(num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0, typical_p=1.0,
                           epsilon_cutoff=0.0, eta_cutoff=0.0, min_new_tokens=0)


@dataclass
class SamplingParams:
    """How to sample responses. Validated on construction; errors name the field."""

    max_new_tokens: int = 64  # response length cap T_max; rows reaching it without EOS are `truncated`
    temperature: float = 1.0  # > 0; logits are divided by it for sampling and for old_logprobs
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens with mass ≥ top_p; 1.0 = off
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    greedy: bool = False  # argmax decoding (evaluation); top_k/top_p ignored, log-probs still at temperature
    n: int = 1  # samples per prompt (G); rows of one prompt are adjacent and share a group id
    stop_strings: tuple[str, ...] = ()  # end a response at the first of these in its decoded text
    seed: int | None = None  # fixes sampling without touching the caller's RNG; None = draw from it
    max_prompt_len: int | None = None  # longest prompt in tokens; None = no limit
    truncate_prompts: bool = False  # over-long prompt: False = ValueError, True = keep its last tokens
    dtype: str | None = None  # None/"fp32": the model's own precision; "bf16"/"fp16": sample under autocast

    def __post_init__(self) -> None:
        self.stop_strings = tuple(self.stop_strings)
        rules = {
            "max_new_tokens": (self.max_new_tokens >= 1, ">= 1"),
            "temperature": (self.temperature > 0, "> 0"),
            "top_p": (0.0 < self.top_p <= 1.0, "in (0, 1]"),
            "top_k": (self.top_k >= 0, ">= 0 (0 = off)"),
            "n": (self.n >= 1, ">= 1"),
            "stop_strings": (all(isinstance(s, str) and s for s in self.stop_strings), "non-empty strings"),
            "max_prompt_len": (self.max_prompt_len is None or self.max_prompt_len >= 1, ">= 1 or None"),
            "dtype": (self.dtype in _AUTOCAST, f"one of {list(_AUTOCAST)}"),
        }
        for name, (ok, rule) in rules.items():
            if not ok:
                raise ValueError(f"SamplingParams.{name}: got {getattr(self, name)!r}, must be {rule}")


def generate_rollouts(model, tokenizer, prompts: Sequence[str | Sequence[int]], params: SamplingParams | None = None,
                      references: Sequence[Any] | None = None, synced_gpus: bool = False) -> RolloutBatch:
    """Sample `params.n` responses for each prompt (a string, tokenized here, or a list of token ids).

    Returns a RolloutBatch with input_ids_BS, attention_mask_BS, mask_BT, old_logprobs_BT, group_ids_B,
    truncated_B, prompts, responses and (if given, one per prompt) references, repeated per sample.
    The model is run in eval mode under no_grad and restored to its previous mode. `synced_gpus=True`
    keeps every rank stepping until all ranks finish: required when the weights are ZeRO-3 shards,
    since each forward gathers them collectively.
    """
    params = params or SamplingParams()
    if references is not None and len(references) != len(prompts):
        raise ValueError(f"got {len(references)} references for {len(prompts)} prompts")
    prompt_ids = encode_prompts(tokenizer, prompts, params.max_prompt_len, params.truncate_prompts)
    device = next(model.parameters()).device
    prompt_ids_BP, prompt_mask_BP = left_pad(prompt_ids, tokenizer.pad_token_id, device, repeat=params.n)
    _check_context_fits(model, prompt_ids_BP.shape[1] + params.max_new_tokens)
    response_ids_BT, finish_len_B, old_logprobs_BT = _sample(model, tokenizer, prompt_ids_BP, prompt_mask_BP,
                                                             params, synced_gpus)

    T = response_ids_BT.shape[1]
    mask_BT = torch.arange(T, device=device)[None, :] < finish_len_B[:, None]
    response_ids_BT = response_ids_BT.masked_fill(~mask_BT, tokenizer.pad_token_id)
    prompt_texts = [p if isinstance(p, str) else tokenizer.decode(ids) for p, ids in zip(prompts, prompt_ids)]
    return RolloutBatch(
        input_ids_BS=torch.cat([prompt_ids_BP, response_ids_BT], dim=1),
        attention_mask_BS=torch.cat([prompt_mask_BP, mask_BT.long()], dim=1),
        mask_BT=mask_BT.float(),
        old_logprobs_BT=torch.where(mask_BT, old_logprobs_BT, 0.0),
        group_ids_B=torch.arange(len(prompts), device=device).repeat_interleave(params.n),
        truncated_B=finish_len_B > T,  # never ended: still holds the "running" sentinel
        prompts=[text for text in prompt_texts for _ in range(params.n)],
        responses=[cut_at_stop(text, params.stop_strings)
                   for text in tokenizer.batch_decode(response_ids_BT, skip_special_tokens=True)],
        references=None if references is None else [r for r in references for _ in range(params.n)],
    )


def encode_prompts(tokenizer, prompts: Sequence[str | Sequence[int]], max_prompt_len: int | None = None,
                   truncate: bool = False) -> list[list[int]]:
    """Token ids of each prompt (strings tokenized with the tokenizer's special-token rules).

    Over `max_prompt_len`: ValueError naming the prompt, or with `truncate` its last max_prompt_len
    tokens (the end holds the question and any chat-template generation prompt).
    """
    encoded = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise ValueError(f"prompt {i} ({prompt!r}) is empty after tokenization")
        if max_prompt_len is not None and len(ids) > max_prompt_len:
            if not truncate:
                raise ValueError(f"prompt {i} has {len(ids)} tokens > max_prompt_len={max_prompt_len}: shorten "
                                 "it, raise max_prompt_len, or set truncate_prompts=True to keep its last tokens")
            ids = ids[-max_prompt_len:]
        encoded.append(ids)
    return encoded


def left_pad(token_ids: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str = "cpu",
             repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, P], [B, P]) long ids and attention mask, left-padded, each row repeated `repeat` times."""
    width = max(len(ids) for ids in token_ids)
    ids_BP = torch.full((len(token_ids), width), pad_token_id, dtype=torch.long)
    mask_BP = torch.zeros((len(token_ids), width), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        ids_BP[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask_BP[row, width - len(ids):] = 1
    return ids_BP.repeat_interleave(repeat, dim=0).to(device), mask_BP.repeat_interleave(repeat, dim=0).to(device)


def _sample(model, tokenizer, prompt_ids_BP, prompt_mask_BP, params: SamplingParams, synced_gpus: bool = False):
    """Run HF generate: response ids [B, T], valid lengths [B] (> T if never ended), log-probs [B, T]."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    eos_ids = eos_token_ids(model, tokenizer)
    tap = _LogitsTap()
    stops = _StopStrings(tokenizer, params.stop_strings) if params.stop_strings else None
    recorder = _StepRecorder(tap, params.temperature, torch.tensor(eos_ids, device=prompt_ids_BP.device), stops,
                             prompt_len=prompt_ids_BP.shape[1])
    sampling = (dict(do_sample=False, temperature=1.0, top_p=1.0) if params.greedy else
                dict(do_sample=True, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p))
    with _eval_mode(model), torch.no_grad(), _seeded(params.seed, prompt_ids_BP.device), \
            _autocast(params.dtype, prompt_ids_BP.device):
        sequences_BS = model.generate(
            input_ids=prompt_ids_BP, attention_mask=prompt_mask_BP, max_new_tokens=params.max_new_tokens,
            eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id, **sampling, **_NEUTRAL_GENERATION,
            logits_processor=LogitsProcessorList([tap]), stopping_criteria=StoppingCriteriaList([recorder]),
            synced_gpus=synced_gpus)
    response_ids_BT = sequences_BS[:, prompt_ids_BP.shape[1]:]
    T = response_ids_BT.shape[1]
    # HF may run (and then undo) extra steps after every row finished: keep the first T records.
    old_logprobs_BT = torch.stack(recorder.logprobs[:T], dim=1)
    return response_ids_BT, recorder.finish_len_B, old_logprobs_BT


class _LogitsTap:
    """A logits processor that keeps (a copy of) the raw fp32 logits HF is about to sample from.

    HF runs custom processors before its temperature/top-k/top-p warpers, so this sees the model's
    unmodified next-token logits, as long as no other pre-warper processor is active: we switch off the
    ones hub configs commonly set (`_NEUTRAL_GENERATION`).
    """

    def __init__(self) -> None:
        self.logits_BV: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores_BV: torch.Tensor) -> torch.Tensor:
        self.logits_BV = scores_BV.clone()
        return scores_BV


class _StepRecorder:
    """A stopping criterion, called by HF after each sampled token is appended.

    Records the token's log-prob under the tapped logits and the step at which each row first ends
    (EOS or stop string). `finish_len_B` holds a row's valid response length, or a large sentinel while
    the row is running. Returns which rows are done, so HF pads them from then on.
    """

    def __init__(self, tap: _LogitsTap, temperature: float, eos_ids: torch.Tensor, stops, prompt_len: int):
        self.tap, self.temperature, self.eos_ids = tap, temperature, eos_ids
        self.stops, self.prompt_len = stops, prompt_len
        self.logprobs: list[torch.Tensor] = []
        self.finish_len_B: torch.Tensor | None = None

    def __call__(self, input_ids_BS: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        token_B = input_ids_BS[:, -1]
        self.logprobs.append(logprobs_from_logits(self.tap.logits_BV, token_B, self.temperature))
        done_B = torch.isin(token_B, self.eos_ids)
        if self.stops is not None:
            done_B |= self.stops(input_ids_BS[:, self.prompt_len:])
        if self.finish_len_B is None:
            self.finish_len_B = torch.full_like(token_B, torch.iinfo(torch.long).max)
        step = len(self.logprobs)
        self.finish_len_B = torch.where(done_B & (self.finish_len_B > step), step, self.finish_len_B)
        return done_B


class _StopStrings:
    """Which rows' response text contains a stop string, checked on a short decoded tail.

    Rows are checked after every token, so a new match must involve the newest token; a tail of
    4·len+8 tokens covers the longest stop string even when characters span several byte tokens.
    """

    def __init__(self, tokenizer, stop_strings: tuple[str, ...]):
        self.tokenizer, self.stop_strings = tokenizer, stop_strings
        self.window = 4 * max(len(s) for s in stop_strings) + 8

    def __call__(self, response_ids_BT: torch.Tensor) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(response_ids_BT[:, -self.window:], skip_special_tokens=True)
        hits = [any(s in text for s in self.stop_strings) for text in texts]
        return torch.tensor(hits, dtype=torch.bool, device=response_ids_BT.device)


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to (not including) the earliest stop string in it."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    return text[:cut]


def eos_token_ids(model, tokenizer) -> list[int]:
    """EOS ids from the model's generation config (may be several, e.g. Llama-3) and the tokenizer."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in [*ids, tokenizer.eos_token_id] if i is not None]
    if not ids:
        raise ValueError("no EOS token: set tokenizer.eos_token or model.generation_config.eos_token_id")
    return sorted(set(ids))


def _check_context_fits(model, total_len: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and total_len > limit:
        raise ValueError(f"prompt length + max_new_tokens = {total_len} exceeds the model's context of {limit} "
                         "positions: lower SamplingParams.max_new_tokens or max_prompt_len")


@contextlib.contextmanager
def _eval_mode(model):
    """Dropout off while sampling (old_logprobs must be the deterministic policy's), mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _autocast(dtype: str | None, device: torch.device):
    """Autocast to `dtype` for sampling only (the log-probs are still read from fp32 logits)."""
    if _AUTOCAST[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST[dtype])


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Seed sampling without disturbing the caller's RNG streams; no-op when seed is None."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
