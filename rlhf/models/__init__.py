"""HF model wrappers for the four PPO roles (DESIGN.md §2), plus the offline tiny-model factory.

Shape key: B sequences, S prompt+response tokens (left-padded prompt block, right-padded response
block, as in `rlhf.data.RolloutBatch`), T response tokens.

| role            | load                | compute                                                    |
|-----------------|---------------------|------------------------------------------------------------|
| actor/reference | `load_causal_lm`    | `response_logprobs(_and_entropy)` → [B, T]                 |
| actor (rollout) | `load_causal_lm`    | `generate_rollouts(model, tokenizer, prompts, params)` → RolloutBatch |
| critic          | `load_critic`       | `critic_values` → [B, T]                                   |
| reward model    | `load_reward_model` | `reward_scores` → [B]                                      |

All take plain HF (or peft-wrapped) models; `save_model` writes a standard HF directory back.
transformers/peft are imported lazily inside functions, so importing this package stays cheap.
"""
from rlhf.models.critic import critic_values, load_critic
from rlhf.models.generation import SamplingParams, encode_prompts, generate_rollouts, left_pad
from rlhf.models.loading import ModelOptions, load_causal_lm, load_pretrained, load_tokenizer, save_model
from rlhf.models.policy import response_logits, response_logprobs, response_logprobs_and_entropy
from rlhf.models.reward import load_reward_model, reward_scores
from rlhf.models.sequence import last_token_index, position_ids_from_mask
from rlhf.models.tiny import build_tiny_model, build_tiny_reward_model, build_tiny_tokenizer
from rlhf.models.value_head import find_backbone_and_head, token_scores

__all__ = [
    "ModelOptions", "SamplingParams", "build_tiny_model", "build_tiny_reward_model", "build_tiny_tokenizer",
    "critic_values", "encode_prompts", "find_backbone_and_head", "generate_rollouts", "last_token_index",
    "left_pad", "load_causal_lm", "load_critic", "load_pretrained", "load_reward_model", "load_tokenizer",
    "position_ids_from_mask", "response_logits", "response_logprobs", "response_logprobs_and_entropy",
    "reward_scores", "save_model", "token_scores",
]
