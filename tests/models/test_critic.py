"""Critic values per response token; init from a reward model or a causal LM; save/load; LoRA."""
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhf.models import ModelOptions, critic_values, find_backbone_and_head, load_causal_lm, load_critic, save_model

from ._helpers import random_ids, rollout_layout


def _rollout(seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [random_ids(g, n) for n in (3, 6, 1)]
    responses = [random_ids(g, n) for n in (5, 2, 4)]
    return prompts, responses, rollout_layout(prompts, responses)


@torch.no_grad()
def test_values_are_the_head_on_the_state_before_each_response_token(arch, rm_dirs):
    """V(s_t) for response token t = the RM-style score of the unpadded prefix prompt + response[:t]."""
    critic = load_critic(rm_dirs[arch]).eval()
    reference = AutoModelForSequenceClassification.from_pretrained(rm_dirs[arch]).eval()
    prompts, responses, (ids_BS, mask_BS, T) = _rollout()
    values_BT = critic_values(critic, ids_BS, mask_BS, T)
    assert values_BT.shape == (3, T)
    for b, (prompt, response) in enumerate(zip(prompts, responses)):
        prefixes = [prompt + response[:t] for t in range(len(response))]
        want = [reference(input_ids=torch.tensor([prefix])).logits[0, 0] for prefix in prefixes]
        torch.testing.assert_close(values_BT[b, :len(response)], torch.stack(want), atol=1e-5, rtol=0)
        assert (values_BT[b, len(response):] == 0).all()


def test_init_from_reward_model_copies_the_head(arch, rm_dirs):
    critic = load_critic(rm_dirs[arch], new_head_init="zero")  # init choice applies to new heads only
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dirs[arch])
    assert torch.equal(critic.score.weight, rm.score.weight) and critic.score.weight.abs().sum() > 0
    backbone, _, _ = find_backbone_and_head(critic)
    assert torch.equal(next(backbone.parameters()), next(rm.base_model.parameters()))


@torch.no_grad()
def test_init_from_causal_lm_creates_the_head_as_asked(arch, lm_dirs):
    lm = load_causal_lm(lm_dirs[arch])
    _, _, (ids_BS, mask_BS, T) = _rollout()
    zero = load_critic(lm_dirs[arch])
    assert (critic_values(zero, ids_BS, mask_BS, T) == 0).all()
    assert torch.equal(next(find_backbone_and_head(zero)[0].parameters()), next(lm.base_model.parameters()))
    normal = load_critic(lm_dirs[arch], new_head_init="normal")
    hidden = normal.score.weight.shape[1]
    assert 0.3 / (hidden + 1) < normal.score.weight.std() < 3.0 / (hidden + 1)
    with pytest.raises(ValueError, match="new_head_init"):
        load_critic(lm_dirs[arch], new_head_init="xavier")


@torch.no_grad()
def test_save_load_round_trip(lm_dirs, tmp_path):
    critic = load_critic(lm_dirs["gpt2"], new_head_init="normal").eval()
    _, _, (ids_BS, mask_BS, T) = _rollout()
    before = critic_values(critic, ids_BS, mask_BS, T)
    loaded = load_critic(save_model(critic, tmp_path / "critic")).eval()  # head found in the dir: kept
    assert torch.equal(critic_values(loaded, ids_BS, mask_BS, T), before) and before.abs().sum() > 0


def test_lora_critic_trains_adapter_and_head_only(rm_dirs):
    critic = load_critic(rm_dirs["llama"], ModelOptions(lora_rank=4)).train()
    trainable = {n for n, p in critic.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable) and all("lora_" in n or "score" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in critic.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in critic.parameters() if p.requires_grad], lr=1e-2)
    _, _, (ids_BS, mask_BS, T) = _rollout()
    critic_values(critic, ids_BS, mask_BS, T).pow(2).sum().backward()
    optimizer.step()
    changed = {n for n, p in critic.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable and any("score" in n for n in changed) and any("lora_B" in n for n in changed)


def test_model_without_a_scalar_head_is_a_clear_error(lm_dirs):
    with pytest.raises(TypeError, match="LlamaForCausalLM has no scalar head"):
        find_backbone_and_head(load_causal_lm(lm_dirs["llama"]))
