"""The rollout-engine interface on CPU: HFEngine reproduces `generate_rollouts` exactly, completions
assemble into the documented batch layout, and stale weights are a named error, never a silent rollout."""
import types

import pytest
import torch

from rlhf.data.batch import RolloutBatch
from rlhf.models import SamplingParams, generate_rollouts, load_causal_lm, load_tokenizer
from rlhf.rollout import (Completion, HFEngine, RolloutEngine, RolloutEngineError, StaleWeightsError,
                          assemble_rollouts, check_versions, sample_rollouts)
from rlhf.workers.sampling import SamplingMixin

PROMPTS = ["12+34=", "5*6=", "(7-1)*20="]


@pytest.fixture(scope="module")
def llama(rollout_models):
    return load_causal_lm(rollout_models["lm"]), load_tokenizer(rollout_models["lm"])


def _fields_equal(a: RolloutBatch, b: RolloutBatch) -> None:
    for name in ("input_ids_BS", "attention_mask_BS", "mask_BT", "old_logprobs_BT", "group_ids_B", "truncated_B"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.prompts == b.prompts and a.responses == b.responses and a.references == b.references


@pytest.mark.parametrize("options", [
    dict(n=3, seed=0, temperature=0.8, max_new_tokens=12),                    # EOS and length endings
    dict(n=2, seed=1, temperature=1.2, top_k=6, top_p=0.9, max_new_tokens=10),
    dict(n=2, seed=2, stop_strings=("1", "*"), max_new_tokens=12),            # stop strings
    dict(greedy=True, max_new_tokens=8)])
def test_hf_engine_batch_is_exactly_generate_rollouts(llama, options):
    """The default engine keeps today's results: same tokens, log-probs, masks, texts."""
    model, tokenizer = llama
    params = SamplingParams(**options)
    references = ["46", "30", "120"]
    expected = generate_rollouts(model, tokenizer, PROMPTS, params, references=references)
    got = sample_rollouts(HFEngine(lambda: model, tokenizer), tokenizer, PROMPTS, params, references=references)
    _fields_equal(got, expected)


def test_hf_engine_finish_reasons(llama):
    model, tokenizer = llama
    engine = HFEngine(lambda: model, tokenizer)
    prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    completions = engine.generate(prompt_ids, SamplingParams(n=4, seed=0, max_new_tokens=6, stop_strings=("2",)))
    assert len(completions) == 12
    for c in completions:
        if c.finish_reason == "length":
            assert len(c.token_ids) == 6 and c.token_ids[-1] != tokenizer.eos_token_id
        elif c.finish_reason == "eos":
            assert c.token_ids[-1] == tokenizer.eos_token_id
        else:
            assert "2" in tokenizer.decode(c.token_ids) and c.token_ids[-1] != tokenizer.eos_token_id
    assert {c.finish_reason for c in completions} >= {"length", "stop"}


class _Tokenizer:
    """Decodes id k as chr(ord('a') + k); pad 0, eos 1 are special."""

    pad_token_id, eos_token_id = 0, 1

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + t) for t in ids if not (skip_special_tokens and t in (0, 1)))

    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join(chr(ord("a") + t) for t in row if not (skip_special_tokens and t in (0, 1))) for row in rows.tolist()]


def test_assemble_rollouts_layout_by_hand():
    completions = [Completion([5, 6, 1], [-0.5, -0.25, -1.0], "eos", 3),
                   Completion([7], [-2.0], "stop", 3),
                   Completion([8, 9, 10, 11], [-1.0, -1.0, -1.0, -1.0], "length", 3),
                   Completion([4, 1], [-0.125, -0.5], "eos", 3)]
    params = SamplingParams(n=2, stop_strings=("h",), max_new_tokens=4)
    batch = assemble_rollouts([[2, 3], [4]], completions, params, _Tokenizer(), ["p0", "p1"], ["r0", "r1"])
    assert batch.input_ids_BS.tolist() == [[2, 3, 5, 6, 1, 0], [2, 3, 7, 0, 0, 0],
                                           [0, 4, 8, 9, 10, 11], [0, 4, 4, 1, 0, 0]]
    assert batch.attention_mask_BS.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0],
                                                [0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]]
    assert batch.mask_BT.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch.old_logprobs_BT.tolist() == [[-0.5, -0.25, -1.0, 0], [-2.0, 0, 0, 0], [-1.0] * 4, [-0.125, -0.5, 0, 0]]
    assert batch.group_ids_B.tolist() == [0, 0, 1, 1] and batch.truncated_B.tolist() == [False, False, True, False]
    assert batch.responses == ["fg", "", "ijkl", "e"]  # "h" (id 7) is a stop string: cut before it
    assert batch.prompts == ["p0", "p0", "p1", "p1"] and batch.references == ["r0", "r0", "r1", "r1"]
    batch.validate()
    with pytest.raises(ValueError, match="3 completions for 2 prompts × n=2"):
        assemble_rollouts([[2, 3], [4]], completions[:3], params, _Tokenizer(), ["p0", "p1"])
    with pytest.raises(ValueError, match="finish_reason"):
        Completion([1], [0.0], "done", 0)


def test_check_versions_names_the_stale_version():
    completions = [Completion([1], [0.0], "eos", 4), Completion([1], [0.0], "eos", 3)]
    check_versions(completions[:1], 4, "x")
    with pytest.raises(StaleWeightsError, match=r"actor rank 2: rollout sampled with weight version\(s\) \[3\] but the "
                                                r"actor is at version 4"):
        check_versions(completions, 4, "actor rank 2")


class _CopyEngine(RolloutEngine):
    """A separate engine (own weights): answers every prompt with EOS, stamped with its version."""

    name = "copy"

    def __init__(self, fail_with=None):
        super().__init__()
        self.fail_with = fail_with

    def generate(self, prompt_ids, params):
        if self.fail_with:
            raise self.fail_with
        return [Completion([1], [-0.5], "eos", self.weight_version) for _ in prompt_ids for _ in range(params.n)]


class _Worker(SamplingMixin):
    """SamplingMixin's host: an actor rank whose optimizer has taken `steps` updates."""

    def __init__(self, engine, steps):
        self.role, self.rank, self.world_size, self.tokenizer = "actor", 1, 2, _Tokenizer()
        self.engine = types.SimpleNamespace(global_steps=steps, eval=lambda: None, cfg=types.SimpleNamespace(zero_stage=0))
        self.rollout_engine = engine


def test_a_skipped_sync_is_a_stale_weights_error_naming_the_rank():
    engine = _CopyEngine()
    worker = _Worker(engine, steps=2)
    items = [([2, 3], "r")]
    with pytest.raises(StaleWeightsError, match=r"actor rank 1 \(copy engine\).*version\(s\) \[0\].*at version 2"):
        worker.generate(items, SamplingParams())
    engine.update_weights([[("w", torch.zeros(1))]], 2)  # the sync the controller does after each update
    assert worker.generate(items, SamplingParams()).mask_BT.tolist() == [[1.0]]


def test_an_engine_failure_is_a_named_error():
    worker = _Worker(_CopyEngine(fail_with=OSError("engine core died")), steps=0)
    with pytest.raises(RolloutEngineError, match=r"actor rank 1 \(copy engine\): generate failed: OSError: engine core died"):
        worker.generate([([2], None)], SamplingParams())


def test_hf_engine_never_stale(llama):
    """Sharing the actor's live module, the HF engine always samples the current weights."""
    model, tokenizer = llama
    worker = _Worker(None, steps=5)
    worker.tokenizer = tokenizer
    worker.engine.module = model
    batch = worker.generate([(tokenizer("1+1=")["input_ids"], "2")], SamplingParams(max_new_tokens=3, seed=0))
    assert len(batch) == 1 and worker.rollout_engine.weight_version == 5
    assert worker.last_probe[1] == len(tokenizer("1+1=")["input_ids"])
