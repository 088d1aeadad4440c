"""Shared by the engine tests and the rank script `_job.py`: a tiny Llama, fixed batches, the loss.

Everything is a pure function of its seed so every process (1 or 2 ranks, pytest itself) builds the
same model and the same global batches.
"""
import torch

VOCAB, PAD = 32, 0
BATCH_ROWS, SEQ_LEN = 4, 10  # one global minibatch: 4 rows of 10 tokens, left-padded


def tiny_llama(seed: int = 0):
    """A 2-layer, 32-wide LlamaForCausalLM built from a config (no files), weights fixed by `seed`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=PAD)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def global_batch(seed: int) -> dict[str, torch.Tensor]:
    """input_ids/attention_mask [BATCH_ROWS, SEQ_LEN], rows left-padded by 0, 1, 3 and 5 tokens so
    rows hold different token counts (a per-row mean would differ from the global token mean)."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (BATCH_ROWS, SEQ_LEN), generator=gen)
    attention_mask = torch.ones(BATCH_ROWS, SEQ_LEN, dtype=torch.long)
    for row, pad in enumerate((0, 1, 3, 5)):
        attention_mask[row, :pad] = 0
        input_ids[row, :pad] = PAD
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def global_token_count(batch: dict[str, torch.Tensor]) -> int:
    """Predicted tokens in the WHOLE minibatch: valid next-token targets summed over all rows."""
    return int(batch["attention_mask"][:, 1:].sum())


def token_loss_sum(model_call, rows: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ next-token cross-entropy over the valid targets of `rows` (not normalised)."""
    logits_BTV = model_call(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits
    ce_BT = torch.nn.functional.cross_entropy(logits_BTV[:, :-1].transpose(1, 2).float(),
                                              rows["input_ids"][:, 1:], reduction="none")
    return (ce_BT * rows["attention_mask"][:, 1:]).sum()


def rows_of(batch: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {key: value[start:stop] for key, value in batch.items()}
