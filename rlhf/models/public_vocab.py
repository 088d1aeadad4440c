"""A public model family's real tokenizer, built offline: Mistral-7B's vocabulary and chat template.

Nothing can be downloaded from a model hub here, but the package registry ships Mistral's own
tokenizers: `mistral-common` (Mistral AI's reference tokenizer library) bundles the SentencePiece model
of Mistral 7B v0.1 / Mixtral 8x7B (`data/tokenizer.model.v1`, 32,000 tokens). `build_mistral_tokenizer`
turns it into an HF tokenizer directory with the chat template of Mistral-7B-Instruct
(`<s>[INST] user [/INST] answer</s>`), and `tests/models/test_public_vocab.py` checks that every id it
produces for plain text and conversations is the one mistral-common's own encoder produces. With
`build_tiny_model(..., arch="mistral", tokenizer_dir=...)` it gives a small random-init
`MistralForCausalLM` of the real vocabulary size: what the prepare stage builds with
`prepare.tiny_model.tokenizer=mistral`, so the whole pipeline runs on a real family's token ids.

Like Mistral's own hub tokenizer.json (also an HF conversion), it differs from SentencePiece in two
places: a run of spaces splits differently ("a  b" → ▁a ▁▁ b, not ▁a ▁ ▁b), and "</s>" written in a
text is the EOS token rather than its characters (chat templates rely on this).

    build_mistral_tokenizer(tmp / "tok")      # needs `pip install mistral-common sentencepiece` (dev extra)
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

MISTRAL_V1_FILE = "tokenizer.model.v1"
# Mistral-7B-Instruct's template: BOS once, "[INST] user [/INST]" per user turn, " answer</s>" per reply.
# Token for token what mistral-common's v1 instruct encoder produces (with SentencePiece's legacy
# handling of the text after a special token, as Mistral's own HF tokenizer does).
MISTRAL_V1_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def mistral_tokenizer_model() -> Path:
    """The SentencePiece model file bundled with mistral-common; FileNotFoundError saying what to install."""
    import importlib.resources

    hint = "install it with `pip install mistral-common sentencepiece` (both are in this project's dev extra)"
    try:
        path = Path(str(importlib.resources.files("mistral_common") / "data" / MISTRAL_V1_FILE))
    except ModuleNotFoundError as err:
        raise FileNotFoundError(f"Mistral's tokenizer comes from the mistral-common package, which is missing: "
                                f"{hint}") from err
    if not path.is_file():
        raise FileNotFoundError(f"mistral-common has no {MISTRAL_V1_FILE} at {path}: {hint}")
    return path


def build_mistral_tokenizer(out_dir: str | Path, padding_side: str = "left"):
    """Save Mistral 7B's tokenizer (32,000 ids; BOS <s>, EOS </s>, no pad) with its instruct chat template
    as an HF tokenizer directory in `out_dir` (tokenizer.json: no SentencePiece needed to load it).
    Returns the loaded tokenizer."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(mistral_tokenizer_model(), Path(tmp) / "tokenizer.model")
        config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                  "add_bos_token": True, "add_eos_token": False, "legacy": True, "padding_side": padding_side,
                  "chat_template": MISTRAL_V1_CHAT_TEMPLATE}
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(config))
        tokenizer = AutoTokenizer.from_pretrained(tmp)  # converts the SentencePiece model (needs sentencepiece)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    # transformers 5 does not save `legacy`, and reloads without it as legacy=False: "[INST]" right after
    # "<s>" would then lose SentencePiece's leading "▁" (id 28792, not Mistral's 733). Keep it explicit.
    config_file = out_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["legacy"] = True
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return AutoTokenizer.from_pretrained(out_dir)
