"""LoRA merged into plain checkpoints: the merge plan, `merged_tensors`, and `export_hf` of a peft model.

The oracle is peft itself: `merge_and_unload()` of the same model, and `PeftModel.from_pretrained` of
the exported adapter. Llama uses nn.Linear, GPT-2 uses Conv1D (weights stored fan-in first, so the
merge is transposed): both are covered.
"""
import pytest
import torch

from rlhf.engine.export import ADAPTER_DIR, export_hf
from rlhf.models import ModelOptions, load_causal_lm, response_logprobs
from rlhf.models.lora import LoraMergePlan, lora_merge_plan, merged_tensors, parameter_counts
from rlhf.models.value_head import load_scalar_model, token_scores

from ._helpers import random_ids, rollout_layout

OPTIONS = ModelOptions(lora_rank=4, lora_alpha=8.0)


def _trained(model):
    """Give the adapter (lora_B starts at 0) and any trainable head copy non-trivial values."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def _rollout():
    g = torch.Generator().manual_seed(3)
    return rollout_layout([random_ids(g, n) for n in (2, 5, 3)], [random_ids(g, n) for n in (4, 1, 3)])


def test_the_plan_reads_each_layers_scaling_and_layout(lm_dirs):
    llama = load_causal_lm(lm_dirs["llama"], OPTIONS)
    plan = lora_merge_plan(llama)
    assert plan.layers and all(layer.scale == 2.0 and not layer.fan_in_fan_out for layer in plan.layers.values())
    assert "model.layers.0.self_attn.q_proj" in plan.layers and "lm_head" not in plan.layers
    gpt2 = lora_merge_plan(load_causal_lm(lm_dirs["gpt2"], OPTIONS))
    assert all(layer.fan_in_fan_out for layer in gpt2.layers.values())  # Conv1D: weight is [in, out]


def test_rslora_and_per_layer_ranks_merge_exactly(lm_dirs):
    from peft import LoraConfig, get_peft_model

    from rlhf.models.loading import load_pretrained

    base, _ = load_pretrained("AutoModelForCausalLM", lm_dirs["llama"], ModelOptions())
    config = LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj"],
                        rank_pattern={"v_proj": 2})
    model = _trained(get_peft_model(base, config))
    plan = lora_merge_plan(model)
    assert plan.layers["model.layers.0.self_attn.q_proj"].scale == pytest.approx(8 / 4 ** 0.5)
    assert plan.layers["model.layers.0.self_attn.v_proj"].scale == pytest.approx(8 / 2 ** 0.5)
    merged = dict(merged_tensors(model.state_dict().items(), plan))
    reference = model.merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(merged[name], tensor, atol=1e-6, rtol=1e-6, msg=name)


def test_lora_variants_that_cannot_be_merged_are_refused_when_the_model_is_wrapped(lm_dirs):
    with pytest.raises(ValueError, match=r"'model.embed_tokens' is a LoRA'd Embedding.*lora_target_modules"):
        load_causal_lm(lm_dirs["llama"], ModelOptions(lora_rank=4, lora_target_modules=["embed_tokens", "q_proj"]))
    from peft import LoraConfig, get_peft_model

    from rlhf.models.loading import load_pretrained

    base, _ = load_pretrained("AutoModelForCausalLM", lm_dirs["llama"], ModelOptions())
    dora = get_peft_model(base, LoraConfig(r=4, use_dora=True, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.q_proj' is DoRA"):
        lora_merge_plan(dora)


def test_a_missing_part_or_an_unknown_layer_is_named():
    layer = "model.layers.0.mlp.up_proj"
    parts = [(f"base_model.model.{layer}.base_layer.weight", torch.zeros(2, 2)),
             (f"base_model.model.{layer}.lora_A.default.weight", torch.zeros(1, 2))]
    with pytest.raises(ValueError, match=f"{layer}.*lack"):
        list(merged_tensors(parts, LoraMergePlan({})))
    parts.append((f"base_model.model.{layer}.lora_B.default.weight", torch.zeros(2, 1)))
    with pytest.raises(ValueError, match=f"{layer}.*not a LoRA layer"):
        list(merged_tensors(parts, LoraMergePlan({})))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_lora_policy_exports_merged_with_its_adapter_beside_it(arch, lm_dirs, tmp_path):
    """The export loads in plain transformers (no peft) and computes what the adapted model computes;
    `adapter/` reloads onto the base model with peft and computes the same."""
    import transformers
    from peft import PeftModel

    model = _trained(load_causal_lm(lm_dirs[arch], OPTIONS)).eval()
    ids_BS, mask_BS, T = _rollout()
    out = export_hf(model, tmp_path / "final", zero3=False)
    with torch.no_grad():
        adapted = response_logprobs(model, ids_BS, mask_BS, T)
        plain = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        assert not any("lora" in name or "base_layer" in name for name in plain.state_dict())
        torch.testing.assert_close(response_logprobs(plain, ids_BS, mask_BS, T), adapted, atol=1e-5, rtol=0)
        base = transformers.AutoModelForCausalLM.from_pretrained(lm_dirs[arch])
        reloaded = PeftModel.from_pretrained(base, out / ADAPTER_DIR).eval()
        torch.testing.assert_close(response_logprobs(reloaded, ids_BS, mask_BS, T), adapted, atol=1e-6, rtol=0)
        for name, tensor in model.merge_and_unload().state_dict().items():  # peft's own merge, as oracle
            torch.testing.assert_close(plain.state_dict()[name], tensor, atol=1e-6, rtol=1e-6, msg=name)


def test_a_lora_scalar_model_exports_merged_with_its_trained_head(rm_dirs, tmp_path):
    import transformers

    model = _trained(load_scalar_model(rm_dirs["llama"], OPTIONS, require_trained_head=True)).eval()
    trainable, total = parameter_counts(model)
    assert 0 < trainable < total / 5
    ids_BS, mask_BS, _ = _rollout()
    out = export_hf(model, tmp_path / "final_rm", zero3=False)
    with torch.no_grad():
        plain = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
        assert not any("lora" in n or "modules_to_save" in n or "original_module" in n for n in plain.state_dict())
        torch.testing.assert_close(token_scores(plain, ids_BS, mask_BS), token_scores(model, ids_BS, mask_BS),
                                   atol=1e-5, rtol=0)
