"""Turning validated rows into token ids: chat templates, special tokens, over-long rows.

Two text paths, chosen per row:
- **plain**: a prompt string is tokenized with the tokenizer's own special tokens (e.g. BOS), a
  response string without them, and the EOS id is appended to every response — so a trained policy
  learns to stop, and a reward model reads its score at the EOS.
- **chat**: chat messages (or a plain prompt when `use_chat_template=True`, wrapped as one user
  message) are rendered with `tokenizer.apply_chat_template`; the prompt is the rendering with
  `add_generation_prompt=True`, the response is whatever the full conversation adds after it (the
  template supplies the end-of-turn token, so no EOS is appended), and both are tokenized without
  adding special tokens again.
Prompt and response are tokenized separately, so the prompt/response boundary (where SFT labels
start) is exact even for tokenizers that would merge across it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

OVERLONG_POLICIES = ("error", "truncate", "drop")

Messages = list[dict[str, str]]


logger = logging.getLogger(__name__)


@dataclass
class DatasetStats:
    """What happened to the rows of one dataset; `truncated_rows`/`dropped_rows` are row indices."""

    source: str
    total: int = 0
    kept: int = 0
    truncated_rows: list[int] = field(default_factory=list)
    dropped_rows: list[int] = field(default_factory=list)

    @property
    def truncated(self) -> int:
        return len(self.truncated_rows)

    @property
    def dropped(self) -> int:
        return len(self.dropped_rows)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "total": self.total, "kept": self.kept,
                "truncated": self.truncated, "dropped": self.dropped}

    def log(self, logger: logging.Logger, what: str, limit: str) -> None:
        """Log the counts; a warning when any row was truncated or dropped."""
        message = (f"{what} from {self.source}: {self.kept}/{self.total} rows kept, {self.truncated} truncated, "
                   f"{self.dropped} dropped (over {limit})")
        if self.truncated or self.dropped:
            shown = (self.dropped_rows or self.truncated_rows)[:10]
            logger.warning("%s; first affected rows: %s", message, shown)
        else:
            logger.info(message)


def check_policy(policy: str) -> str:
    if policy not in OVERLONG_POLICIES:
        raise ValueError(f"overlong policy must be one of {OVERLONG_POLICIES}, got {policy!r}")
    return policy


def check_tokenizer(tokenizer: Any) -> None:
    """The datasets need a pad id (for collation) and an EOS id (appended to plain responses)."""
    missing = [name for name in ("pad_token_id", "eos_token_id") if getattr(tokenizer, name, None) is None]
    if missing:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no {' / '.join(missing)}; set "
                         "tokenizer.pad_token (often to the EOS token) before building a dataset")


def _chat(tokenizer: Any, messages: Messages, add_generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"the tokenizer ({type(tokenizer).__name__}) has no chat template, so chat messages "
                         "cannot be rendered; use plain text fields or a tokenizer with a chat template")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except ValueError:
        raise
    except Exception as exc:  # jinja2's TemplateError (e.g. "roles must alternate"): callers name the row
        raise ValueError(f"the tokenizer's chat template failed on this conversation: {type(exc).__name__}: "
                         f"{exc}") from exc


def chat_text(tokenizer: Any, messages: Messages, add_generation_prompt: bool) -> str:
    """`messages` rendered with the tokenizer's chat template (ValueError naming what failed)."""
    return _chat(tokenizer, messages, add_generation_prompt)


def _as_messages(value: str | Messages, role: str) -> Messages:
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def render_prompt(tokenizer: Any, prompt: str | Messages, use_chat_template: bool | None) -> tuple[str, bool]:
    """(prompt text, whether it came from the chat template). Raises ValueError on a bad combination.

    `use_chat_template`: None = only for messages; True = also wrap plain prompts; False = never
    (messages are then an error).
    """
    if isinstance(prompt, list) or use_chat_template:
        if use_chat_template is False:
            raise ValueError("got chat messages but use_chat_template=False; expected a plain string")
        return _chat(tokenizer, _as_messages(prompt, "user"), add_generation_prompt=True), True
    return prompt, False


def render_prompt_response(tokenizer: Any, prompt: str | Messages, response: str | Messages,
                           use_chat_template: bool | None) -> tuple[str, str, bool]:
    """(prompt text, response text, whether the chat template made them); see the module docstring."""
    prompt_text, templated = render_prompt(tokenizer, prompt, use_chat_template)
    if not templated:
        if isinstance(response, list):
            raise ValueError("got chat messages as the response of a plain-text prompt; expected a string")
        return prompt_text, response, False
    full_text = _chat(tokenizer, _as_messages(prompt, "user") + _as_messages(response, "assistant"),
                      add_generation_prompt=False)
    if not full_text.startswith(prompt_text) or len(full_text) == len(prompt_text):
        raise ValueError("the chat template's rendering of the conversation does not extend the rendering of "
                         "its prompt, so the response tokens cannot be located")
    return prompt_text, full_text[len(prompt_text):], True


def tokenize(tokenizer: Any, texts: Sequence[str], add_special_tokens: Sequence[bool]) -> list[list[int]]:
    """Token ids of each text, batched; `add_special_tokens[i]` applies to `texts[i]`."""
    out: list[list[int] | None] = [None] * len(texts)
    for flag in (True, False):
        index = [i for i, f in enumerate(add_special_tokens) if bool(f) is flag]
        if index:
            ids = tokenizer([texts[i] for i in index], add_special_tokens=flag, return_attention_mask=False,
                            return_token_type_ids=False)["input_ids"]
            for i, row in zip(index, ids):
                out[i] = list(row)
    return out  # type: ignore[return-value]


class EncodedDataset(torch.utils.data.Dataset):
    """Base of the prompt / preference / SFT datasets: encoded `examples` plus the over-long `stats`."""

    examples: list
    stats: DatasetStats

    def _load(self, source, tokenizer, *, split: str, cache_dir: str | None, overlong: str, limit: int | None,
              limit_name: str):
        """Check the tokenizer, policy and length limit, load the rows, start the stats; returns the rows."""
        from rlhf.data.sources import load_rows

        check_tokenizer(tokenizer)
        self.overlong = check_policy(overlong)
        if limit is not None and limit <= 0:
            raise ValueError(f"{limit_name} must be positive or None, got {limit}")
        self.tokenizer = tokenizer
        rows = load_rows(source, split=split, cache_dir=cache_dir)
        self.stats = DatasetStats(source=rows.source, total=len(rows))
        return rows

    def _finish(self, source: str, what: str, limit: str, field: str | None = None) -> None:
        """Record and log the counts; an empty result (every row dropped) is an error, not a silent no-op."""
        from rlhf.data.sources import DataError

        self.stats.kept = len(self.examples)
        self.stats.log(logger, what, limit)
        if not self.examples:
            raise DataError(source, "no rows left after the over-long policy; expected at least one", field=field)

    @property
    def num_truncated(self) -> int:
        return self.stats.truncated

    @property
    def num_dropped(self) -> int:
        return self.stats.dropped

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        return self.examples[i]


def chat_turn_end(tokenizer: Any) -> str:
    """The special token the chat template puts right after an assistant turn's content (ChatML's
    `<|im_end|>`, Llama-3's `<|eot_id|>`, Mistral's `</s>`): the token a policy turn must end with before an
    environment turn follows. ValueError when the template puts none there."""
    base = _chat(tokenizer, [{"role": "user", "content": "U"}, {"role": "assistant", "content": _MARKER}], False)
    after = base[base.rfind(_MARKER) + len(_MARKER):]
    specials = set(tokenizer.all_special_tokens) | {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    ends = [token for token in specials if token and after.startswith(token)]
    if not ends:
        raise ValueError(f"the tokenizer's chat template does not end an assistant turn with a special token right "
                         f"after the content (it continues {after[:20]!r}): environment turns cannot be placed after a "
                         "policy turn")
    return max(ends, key=len)


def chat_observation(tokenizer: Any, text: str, role: str = "user") -> str:
    """An environment's message rendered as the next turn of a chat, to follow a policy turn that ended
    with the template's end-of-turn token (`chat_turn_end`): what the template puts after it — the rest
    of the turn's closing, the `role` turn holding `text`, and the header of the next assistant turn (its
    generation prompt).

    Found by rendering one conversation with and without the new turn: user "U", assistant "A", then
    `role` `text`; the shorter must be a prefix of the longer up to the end-of-turn token, else ValueError."""
    end = chat_turn_end(tokenizer)
    base = _chat(tokenizer, [{"role": "user", "content": "U"}, {"role": "assistant", "content": _MARKER}], False)
    full = _chat(tokenizer, [{"role": "user", "content": "U"}, {"role": "assistant", "content": _MARKER},
                             {"role": role, "content": text}], True)
    cut = base.rfind(_MARKER) + len(_MARKER) + len(end)
    if full[:cut] != base[:cut]:
        raise ValueError("the tokenizer's chat template renders a conversation differently once a turn is added: "
                         "environment turns cannot be appended token-in/token-out")
    return full[cut:]


_MARKER = "\u2063A\u2063"  # an assistant turn's content that no template alters
