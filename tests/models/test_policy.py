"""Policy log-probs/entropy of response tokens against a direct log_softmax on unpadded sequences."""
import pytest
import torch

from rlhf.models import load_causal_lm, response_logprobs, response_logprobs_and_entropy

from ._helpers import random_ids, rollout_layout

PROMPT_LENS, RESPONSE_LENS = (3, 7, 5, 1), (6, 2, 4, 5)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [random_ids(g, n) for n in PROMPT_LENS]
    responses = [random_ids(g, n) for n in RESPONSE_LENS]
    return prompts, responses


def _direct(model, prompt, response, temperature):
    """Unpadded single-sequence forward: log-probs and entropies of the response tokens."""
    ids = torch.tensor([prompt + response])
    logp_SV = torch.log_softmax(model(input_ids=ids).logits[0].float() / temperature, dim=-1)
    predictors = logp_SV[len(prompt) - 1:-1]
    logprobs = predictors.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
    entropy = -(predictors.exp() * predictors).sum(-1)
    return logprobs, entropy


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@torch.no_grad()
def test_logprobs_and_entropy_match_unpadded_forward(arch, lm_dirs, temperature):
    model = load_causal_lm(lm_dirs[arch]).eval()
    prompts, responses = _batch()
    ids_BS, mask_BS, T = rollout_layout(prompts, responses)
    logprobs_BT, entropy_BT = response_logprobs_and_entropy(model, ids_BS, mask_BS, T, temperature)
    assert logprobs_BT.shape == entropy_BT.shape == (len(prompts), T)
    for b, (prompt, response) in enumerate(zip(prompts, responses)):
        want_logprobs, want_entropy = _direct(model, prompt, response, temperature)
        n = len(response)
        torch.testing.assert_close(logprobs_BT[b, :n], want_logprobs, atol=1e-5, rtol=0)
        torch.testing.assert_close(entropy_BT[b, :n], want_entropy, atol=1e-5, rtol=0)
        assert (logprobs_BT[b, n:] == 0).all() and (entropy_BT[b, n:] == 0).all()
    torch.testing.assert_close(response_logprobs(model, ids_BS, mask_BS, T, temperature), logprobs_BT)


@torch.no_grad()
def test_positions_from_mask_matter_for_absolute_positions(lm_dirs):
    """Guard for the test above: without mask-based positions a left-padded GPT-2 row goes wrong."""
    model = load_causal_lm(lm_dirs["gpt2"]).eval()
    prompts, responses = _batch()
    ids_BS, mask_BS, T = rollout_layout(prompts, responses)
    naive_logits = model(input_ids=ids_BS, attention_mask=mask_BS).logits[:, -T - 1:-1]
    ours = response_logprobs(model, ids_BS, mask_BS, T)
    naive = torch.log_softmax(naive_logits, -1).gather(-1, ids_BS[:, -T:, None]).squeeze(-1)
    padded_row = PROMPT_LENS.index(1)  # the shortest prompt has the most left padding
    n = RESPONSE_LENS[padded_row]
    assert (ours[padded_row, :n] - naive[padded_row, :n]).abs().max() > 1e-3


def test_logprobs_carry_gradients(lm_dirs):
    model = load_causal_lm(lm_dirs["llama"])
    prompts, responses = _batch()
    ids_BS, mask_BS, T = rollout_layout(prompts, responses)
    response_logprobs(model, ids_BS, mask_BS, T).sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def test_response_len_must_leave_a_prompt_column(lm_dirs):
    model = load_causal_lm(lm_dirs["llama"])
    ids_BS, mask_BS, T = rollout_layout([[5]], [[6, 7]])
    with pytest.raises(ValueError, match="response_len"):
        response_logprobs(model, ids_BS, mask_BS, ids_BS.shape[1])
