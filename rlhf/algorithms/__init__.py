"""The math of RLHF as pure torch functions (no Ray, DeepSpeed or config objects).

Shape key: B rows, T response tokens, V vocab; `mask` is 1 on valid tokens, 0 on padding.
"""
from rlhf.algorithms.logits import entropy_from_logits, logprobs_from_logits

__all__ = ["entropy_from_logits", "logprobs_from_logits"]
