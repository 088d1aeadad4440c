"""Loading options (dtype, checkpointing, LoRA), clear path errors, and save → load round trips."""
import pytest
import torch

from rlhf.models import ModelOptions, load_causal_lm, load_tokenizer, response_logprobs, save_model

from ._helpers import random_ids, rollout_layout


def _rollout(seed=0):
    g = torch.Generator().manual_seed(seed)
    return rollout_layout([random_ids(g, n) for n in (2, 5, 3)], [random_ids(g, n) for n in (4, 1, 3)])


def test_missing_local_paths_name_the_path_and_what_was_expected(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*does not exist.*config.json"):
        load_causal_lm(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty' has no config.json"):
        load_causal_lm(tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file"):
        load_causal_lm(tmp_path / "weights.bin")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(missing)


def test_unknown_hub_name_says_the_hub_is_offline():
    # tests/conftest.py sets HF_HUB_OFFLINE=1, so this fails fast without network.
    with pytest.raises(OSError, match="'no-such-org/no-such-model'.*HF_HUB_OFFLINE"):
        load_causal_lm("no-such-org/no-such-model")


def test_options_are_validated():
    for field, value in [("dtype", "fp8"), ("lora_rank", -1), ("lora_dropout", 1.0)]:
        with pytest.raises(ValueError, match=f"ModelOptions.{field}"):
            ModelOptions(**{field: value})


@pytest.mark.parametrize("dtype, expected", [("bfloat16", torch.bfloat16), ("float16", torch.float16),
                                             ("auto", torch.float32), ("float32", torch.float32)])
def test_dtype(lm_dirs, dtype, expected):
    model = load_causal_lm(lm_dirs["llama"], ModelOptions(dtype=dtype))
    assert {p.dtype for p in model.parameters()} == {expected}


def test_gradient_checkpointing_gives_the_same_gradients(lm_dirs):
    ids_BS, mask_BS, T = _rollout()
    grads = []
    for checkpointing in (False, True):
        model = load_causal_lm(lm_dirs["llama"], ModelOptions(gradient_checkpointing=checkpointing)).train()
        assert model.is_activation_checkpointing == checkpointing
        response_logprobs(model, ids_BS, mask_BS, T).sum().backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_lora_trains_only_adapter_weights(arch, lm_dirs, tmp_path):
    options = ModelOptions(lora_rank=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules="all-linear")
    model = load_causal_lm(lm_dirs[arch], options).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids_BS, mask_BS, T = _rollout()
    (-response_logprobs(model, ids_BS, mask_BS, T).sum()).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable and any("lora_B" in n for n in changed)

    # Saved merged: a plain HF dir (no peft needed) that computes what the adapted model computes.
    with torch.no_grad():
        adapted = response_logprobs(model.eval(), ids_BS, mask_BS, T)
        merged = load_causal_lm(save_model(model, tmp_path / "merged"))
        assert not (tmp_path / "merged" / "adapter_config.json").exists()
        torch.testing.assert_close(response_logprobs(merged, ids_BS, mask_BS, T), adapted, atol=1e-5, rtol=0)
    assert any("lora_" in n for n, _ in model.named_parameters())  # the live model keeps its adapter


@torch.no_grad()
def test_policy_save_load_round_trip(arch, lm_dirs, tmp_path):
    model = load_causal_lm(lm_dirs[arch]).eval()
    model.lm_head.weight.mul_(1.5)  # differ from the source dir
    ids_BS, mask_BS, T = _rollout()
    out = save_model(model, tmp_path / "policy", tokenizer=load_tokenizer(lm_dirs[arch]))
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    loaded = load_causal_lm(out).eval()
    assert torch.equal(response_logprobs(loaded, ids_BS, mask_BS, T), response_logprobs(model, ids_BS, mask_BS, T))


def test_tokenizer_loads_left_padded_and_falls_back_to_eos_as_pad(lm_dirs, tmp_path):
    tokenizer = load_tokenizer(lm_dirs["llama"])
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == 0
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "nopad")
    reloaded = load_tokenizer(tmp_path / "nopad", padding_side="right")
    assert reloaded.pad_token == reloaded.eos_token and reloaded.padding_side == "right"
