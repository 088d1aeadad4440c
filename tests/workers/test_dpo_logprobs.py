"""The DPO worker's sequence log-probs (issue 15 §4): the summed log-probabilities of exactly the
response tokens (EOS included; prompt and padding excluded) of both sides of each pair, checked
against a per-row loop over a plain forward of the unpadded sequence."""
import json

import torch

from rlhf.data.collate import collate_preferences
from rlhf.data.preferences import PreferenceDataset
from rlhf.models import load_causal_lm, load_tokenizer
from rlhf.models.tiny import build_tiny_model
from rlhf.workers.dpo import pair_logprobs

ROWS = [{"prompt": "23+58=", "chosen": "81", "rejected": "71"},
        {"prompt": "1+2=", "chosen": "3", "rejected": "123"},  # sides of different lengths: padding on one
        {"prompt": "40+41=", "chosen": "81", "rejected": "8"}]


def test_pair_logprobs_sum_the_response_tokens_of_each_side(tmp_path):
    model_dir = build_tiny_model(tmp_path / "m", num_layers=1, hidden_size=32, num_heads=2, initializer_range=0.3)
    tokenizer, model = load_tokenizer(model_dir, padding_side="right"), load_causal_lm(model_dir).eval()
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    data = PreferenceDataset(tmp_path / "pairs.jsonl", tokenizer, tag_key=None)
    examples = [data[i] for i in range(len(data))]
    with torch.no_grad():
        chosen_B, rejected_B = pair_logprobs(model, collate_preferences(examples, tokenizer.pad_token_id))

        def slow(ids, prompt_len):
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
            return sum(float(logprobs[t - 1, ids[t]]) for t in range(prompt_len, len(ids)))

        for i, e in enumerate(examples):
            assert e.chosen_ids[-1] == tokenizer.eos_token_id  # the EOS is a response token, scored
            assert abs(float(chosen_B[i]) - slow(e.chosen_ids, e.prompt_len)) < 1e-4
            assert abs(float(rejected_B[i]) - slow(e.rejected_ids, e.prompt_len)) < 1e-4
