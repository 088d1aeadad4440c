"""Reward scores are read at each sequence's last real token, whatever the padding."""
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhf.models import last_token_index, load_reward_model, reward_scores, save_model

from ._helpers import random_ids, rollout_layout

LENGTHS = (4, 9, 1, 6)


def _sequences(seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [random_ids(g, n) for n in LENGTHS]
    seqs[1][3] = 0  # a pad id inside real tokens (sampled mid-response): still a real token
    return seqs


def _pad(seqs, side, pad_id=0):
    width = max(map(len, seqs))
    ids_BS = torch.full((len(seqs), width), pad_id)
    mask_BS = torch.zeros_like(ids_BS)
    for b, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids_BS[b, cols], mask_BS[b, cols] = torch.tensor(seq), 1
    return ids_BS, mask_BS


@pytest.mark.parametrize("layout", ["left", "right", "rollout"])
@torch.no_grad()
def test_score_at_last_real_token_for_any_padding(arch, rm_dirs, layout):
    rm = load_reward_model(rm_dirs[arch]).eval()
    reference = AutoModelForSequenceClassification.from_pretrained(rm_dirs[arch]).eval()
    seqs = _sequences()
    if layout == "rollout":  # left-padded prompt block + right-padded response block
        ids_BS, mask_BS, _ = rollout_layout([s[:1] for s in seqs], [s[1:] or [s[0]] for s in seqs])
        seqs = [s if len(s) > 1 else s + s for s in seqs]
    else:
        ids_BS, mask_BS = _pad(seqs, layout)
    scores_B = reward_scores(rm, ids_BS, mask_BS)
    # Reference: HF's own pooled score of each sequence alone (no padding: its last token).
    want_B = torch.stack([reference(input_ids=torch.tensor([s])).logits[0, 0] for s in seqs])
    torch.testing.assert_close(scores_B, want_B, atol=1e-5, rtol=0)
    assert scores_B.std() > 1e-3  # the head is not degenerate, so a wrong position would show


def test_last_token_index_and_empty_rows():
    mask_BS = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    assert last_token_index(mask_BS).tolist() == [2, 0, 3]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        last_token_index(torch.tensor([[1, 1], [0, 0]]))


def test_causal_lm_dir_is_not_a_reward_model(lm_dirs):
    with pytest.raises(ValueError, match="no trained `score` head"):
        load_reward_model(lm_dirs["llama"])
    model = load_reward_model(lm_dirs["llama"], require_trained_head=False)  # start of RM training
    assert model.score.weight.abs().sum() > 0


@torch.no_grad()
def test_save_load_round_trip(rm_dirs, tmp_path):
    rm = load_reward_model(rm_dirs["gpt2"]).eval()
    rm.score.weight.mul_(3.0)  # differ from the saved dir, so the round trip must carry the change
    ids_BS, mask_BS = _pad(_sequences(), "left")
    before = reward_scores(rm, ids_BS, mask_BS)
    loaded = load_reward_model(save_model(rm, tmp_path / "rm")).eval()
    assert torch.equal(reward_scores(loaded, ids_BS, mask_BS), before)
