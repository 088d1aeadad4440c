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
