"""logprobs_from_logits / entropy_from_logits against torch.distributions.Categorical and a direct log_softmax.

The implementation works in chunks of rows, so the shapes include batches larger than one chunk (> 8 rows),
a large vocabulary, leading dims other than [B, T], and bf16/fp16 inputs (computed in float32).
"""
import math

import pytest
import torch
from torch.distributions import Categorical

from rlhf.algorithms import entropy_from_logits, logprobs_from_logits

SHAPES = [(1, 1, 2), (3, 5, 7), (8, 4, 11), (9, 3, 13), (19, 6, 5), (17, 1, 64), (10, 3, 50_000)]
TEMPERATURES = [1.0, 0.7, 1.6]


def _logits(shape, seed=0, dtype=torch.float32, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def _labels(shape, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, shape[-1], shape[:-1], generator=g)


def _ref_logprobs(logits, labels, temperature):
    z = logits.double() / temperature
    return torch.log_softmax(z, -1).gather(-1, labels[..., None]).squeeze(-1)


def _ref_entropy(logits, temperature):
    return Categorical(logits=logits.double() / temperature).entropy()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_logprobs_match_log_softmax_and_categorical(shape, temperature):
    logits, labels = _logits(shape), _labels(shape)
    out = logprobs_from_logits(logits, labels, temperature=temperature)
    assert out.dtype == torch.float32 and out.shape == labels.shape
    torch.testing.assert_close(out.double(), _ref_logprobs(logits, labels, temperature), atol=1e-5, rtol=1e-5)
    categorical = Categorical(logits=logits.double() / temperature).log_prob(labels)
    torch.testing.assert_close(out.double(), categorical, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_entropy_matches_categorical(shape, temperature):
    logits = _logits(shape)
    out = entropy_from_logits(logits, temperature=temperature)
    assert out.dtype == torch.float32 and out.shape == logits.shape[:-1]
    torch.testing.assert_close(out.double(), _ref_entropy(logits, temperature), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("leading", [(), (6,), (2, 9), (3, 2, 4)], ids=str)
def test_other_leading_dims(leading):
    # [T, V] (no batch), [B, T, V], [A, B, T, V] and 2-D rows-only inputs for the entropy.
    shape = leading + (5, 17)
    logits, labels = _logits(shape, seed=3), _labels(shape, seed=3)
    out = logprobs_from_logits(logits, labels)
    assert out.shape == labels.shape
    torch.testing.assert_close(out.double(), _ref_logprobs(logits, labels, 1.0), atol=1e-5, rtol=1e-5)
    ent = entropy_from_logits(logits)
    assert ent.shape == logits.shape[:-1]
    torch.testing.assert_close(ent.double(), _ref_entropy(logits, 1.0), atol=1e-5, rtol=1e-5)


def test_entropy_of_rows_only_and_single_distribution():
    logits = _logits((21, 9), seed=5)  # 21 rows > one chunk of 8
    torch.testing.assert_close(entropy_from_logits(logits).double(), _ref_entropy(logits, 1.0), atol=1e-5, rtol=1e-5)
    single = _logits((9,), seed=6)
    out = entropy_from_logits(single)
    assert out.shape == ()
    assert out.item() == pytest.approx(_ref_entropy(single, 1.0).item(), abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(9, 4, 33), (2, 3, 50_000)], ids=str)
def test_half_precision_inputs_are_computed_in_float32(dtype, shape):
    logits, labels = _logits(shape, seed=2, dtype=dtype), _labels(shape, seed=2)
    out = logprobs_from_logits(logits, labels, temperature=0.9)
    assert out.dtype == torch.float32
    # the reference sees exactly the same (rounded) logits, so only float32 rounding may differ
    torch.testing.assert_close(out.double(), _ref_logprobs(logits, labels, 0.9), atol=1e-5, rtol=1e-5)
    ent = entropy_from_logits(logits, temperature=0.9)
    assert ent.dtype == torch.float32
    torch.testing.assert_close(ent.double(), _ref_entropy(logits, 0.9), atol=1e-4, rtol=1e-5)


def test_known_values():
    # Uniform over V: log p = −log V and H = log V. A temperature does not change a uniform distribution.
    logits = torch.zeros(2, 3, 10)
    labels = torch.zeros(2, 3, dtype=torch.long)
    torch.testing.assert_close(logprobs_from_logits(logits, labels), torch.full((2, 3), -math.log(10)))
    torch.testing.assert_close(entropy_from_logits(logits, temperature=0.5), torch.full((2, 3), math.log(10)))
    # logits [0, ln 3] → p = [1/4, 3/4]; H = −(¼ ln ¼ + ¾ ln ¾) = 0.562335. At temperature 2 the logits are
    # [0, ½ ln 3] → p = [1/(1+√3), √3/(1+√3)].
    two = torch.tensor([[[0.0, math.log(3.0)]]])
    assert logprobs_from_logits(two, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert entropy_from_logits(two).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)
    p = 1 / (1 + math.sqrt(3))
    at_two = logprobs_from_logits(two, torch.tensor([[0]]), temperature=2.0)
    assert at_two.item() == pytest.approx(math.log(p), abs=1e-6)


def test_extreme_logits_stay_finite():
    # Very peaked distributions: log-probs far below −100 and entropies ≈ 0, no inf/NaN.
    logits = torch.tensor([[[1e4, 0.0, -1e4], [0.0, 0.0, 500.0]]])
    labels = torch.tensor([[2, 0]])
    out = logprobs_from_logits(logits, labels)
    torch.testing.assert_close(out, torch.tensor([[-2e4, -500.0]]))
    ent = entropy_from_logits(logits)
    assert torch.isfinite(ent).all() and (ent.abs() < 1e-6).all()


def test_masked_vocabulary_entries_with_minus_inf():
    # −inf logits (a banned/padded vocabulary slice) have probability 0 and contribute 0 to the entropy.
    logits = torch.tensor([[[0.0, 0.0, float("-inf"), float("-inf")]] * 3] * 10)  # 10 rows > one chunk
    labels = torch.zeros(10, 3, dtype=torch.long)
    torch.testing.assert_close(logprobs_from_logits(logits, labels), torch.full((10, 3), -math.log(2)))
    torch.testing.assert_close(entropy_from_logits(logits), torch.full((10, 3), math.log(2)))


def test_chunking_does_not_mix_rows():
    # Each row's output depends on that row only, whichever chunk it lands in.
    logits, labels = _logits((19, 4, 23), seed=8), _labels((19, 4, 23), seed=8)
    full_lp, full_ent = logprobs_from_logits(logits, labels), entropy_from_logits(logits)
    for i in (0, 7, 8, 15, 16, 18):
        torch.testing.assert_close(logprobs_from_logits(logits[i:i + 1], labels[i:i + 1])[0], full_lp[i])
        torch.testing.assert_close(entropy_from_logits(logits[i:i + 1])[0], full_ent[i])


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_gradients_match_log_softmax(temperature):
    # The actor trains through these functions, so their gradients must be the textbook ones.
    logits, labels = _logits((11, 3, 9), seed=4), _labels((11, 3, 9), seed=4)
    weights = torch.randn(11, 3, generator=torch.Generator().manual_seed(9))
    a = logits.clone().requires_grad_(True)
    ((logprobs_from_logits(a, labels, temperature) * weights).sum()
     + (entropy_from_logits(a, temperature) * weights).sum()).backward()
    b = logits.double().requires_grad_(True)
    ((_ref_logprobs(b, labels, temperature) * weights).sum()
     + (_ref_entropy(b, temperature) * weights).sum()).backward()
    torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-5, rtol=1e-5)
