"""What a weight sync sends: full tensors in bounded buckets, LoRA folded into its base weights."""
import pytest
import torch

from rlhf.engine.export import full_tensor_buckets
from rlhf.models import ModelOptions, load_causal_lm
from rlhf.rollout.weights import merged_lora_buckets


def test_buckets_cover_the_state_dict_and_respect_the_size(rollout_models):
    model = load_causal_lm(rollout_models["lm"])
    state = model.state_dict()
    biggest = max(t.numel() * t.element_size() for t in state.values())
    limit = 3 * biggest
    buckets = list(full_tensor_buckets(model, zero3=False, bucket_bytes=limit))
    assert len(buckets) > 1
    for bucket in buckets[:-1]:  # a bucket closes as soon as it reaches the limit: at most one tensor over it
        size = sum(t.numel() * t.element_size() for _, t in bucket)
        assert limit <= size < limit + biggest
    names = [name for bucket in buckets for name, _ in bucket]
    assert names == list(state)  # this model is untied: every name
    for bucket in buckets:
        for name, tensor in bucket:
            assert tensor.device.type == "cpu" and torch.equal(tensor, state[name])
            assert tensor.data_ptr() != state[name].data_ptr()  # a copy: training cannot change it mid-sync


def test_lora_merge_equals_peft_merge_and_unload(rollout_models):
    model = load_causal_lm(rollout_models["lm"], ModelOptions(lora_rank=4, lora_alpha=8.0))
    with torch.no_grad():  # a trained adapter: lora_B starts at 0, so give it values
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.1)
    buckets = list(full_tensor_buckets(model, zero3=False, bucket_bytes=1))  # one tensor per bucket: worst case
    merged = dict(kv for bucket in merged_lora_buckets(buckets, scale=8.0 / 4) for kv in bucket)
    reference = model.merge_and_unload().state_dict()
    assert set(merged) == set(reference)
    for name, tensor in reference.items():
        torch.testing.assert_close(merged[name], tensor, atol=1e-6, rtol=1e-6, msg=name)


def test_lora_merge_names_a_layer_whose_adapter_is_missing():
    base = "base_model.model.model.layers.0.self_attn.q_proj"
    buckets = [[(f"{base}.base_layer.weight", torch.zeros(2, 2)), (f"{base}.lora_A.default.weight", torch.zeros(1, 2))]]
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.q_proj.*lack"):
        list(merged_lora_buckets(buckets, scale=1.0))


def test_a_tied_lm_head_is_sent_once(tmp_path):
    from rlhf.models.tiny import build_tiny_model

    tied = load_causal_lm(build_tiny_model(tmp_path / "tied", num_layers=1, hidden_size=64, num_heads=2,
                                           tie_word_embeddings=True))
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    names = [name for bucket in full_tensor_buckets(tied, zero3=False, bucket_bytes=2 ** 30) for name, _ in bucket]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert len(names) == len(set(names)) == len(list(tied.parameters()))
