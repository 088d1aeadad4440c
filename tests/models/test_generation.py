"""Generation honours every sampling option and returns a consistent RolloutBatch."""
import copy

import pytest
import torch

from rlhf.models import (SamplingParams, generate_rollouts, load_causal_lm, load_tokenizer, response_logits,
                         response_logprobs)

PROMPTS = ["12+34=", "5*6=", "(7-1)*20="]  # different lengths: exercises left padding
EOS, PAD = 1, 0


@pytest.fixture(scope="module")
def llama(lm_dirs):
    return load_causal_lm(lm_dirs["llama"]), load_tokenizer(lm_dirs["llama"])


def _valid(batch, b):
    """Row b's valid response token ids."""
    return batch.response_ids_BT[b, :int(batch.mask_BT[b].sum())].tolist()


def _sampled_token_probs(model, batch, temperature):
    """[B, T, V] the sampler's distribution at each response position, via a full forward."""
    with torch.no_grad():
        logits = response_logits(model, batch.input_ids_BS, batch.attention_mask_BS, batch.response_len)
    return torch.softmax(logits.float() / temperature, dim=-1)


@pytest.mark.parametrize("options", [dict(temperature=0.7, top_k=5, top_p=0.9), dict(temperature=1.3)])
def test_old_logprobs_equal_policy_forward(arch, lm_dirs, options):
    """PPO's first ratio is 1: the sampler's log-probs are the policy forward's, to float error."""
    model, tokenizer = load_causal_lm(lm_dirs[arch]), load_tokenizer(lm_dirs[arch])
    params = SamplingParams(max_new_tokens=16, n=3, seed=0, **options)
    batch = generate_rollouts(model, tokenizer, PROMPTS, params)
    with torch.no_grad():
        logprobs_BT = response_logprobs(model, batch.input_ids_BS, batch.attention_mask_BS, batch.response_len,
                                        params.temperature)
    torch.testing.assert_close(batch.old_logprobs_BT, logprobs_BT, atol=1e-5, rtol=0)
    assert batch.old_logprobs_BT[batch.mask_BT.bool()].mean() < -0.1  # real values, not zeros


def _argmax_decode(model, prompt_ids, max_new_tokens):
    """Slow oracle: no cache, no padding, one argmax at a time until EOS."""
    seq, out = list(prompt_ids), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(token)
            out.append(token)
            if token == EOS:
                break
    return out


def test_greedy_is_deterministic_and_equals_argmax_decode(arch, lm_dirs):
    model, tokenizer = load_causal_lm(lm_dirs[arch]), load_tokenizer(lm_dirs[arch])
    first = generate_rollouts(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=12, greedy=True, seed=0))
    second = generate_rollouts(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=12, greedy=True, seed=1))
    assert torch.equal(first.input_ids_BS, second.input_ids_BS)
    for b, prompt in enumerate(PROMPTS):
        assert _valid(first, b) == _argmax_decode(model, tokenizer(prompt)["input_ids"], 12)


@pytest.mark.parametrize("options", [dict(top_k=1), dict(top_p=1e-6), dict(temperature=1e-4)])
def test_degenerate_sampling_equals_greedy(llama, options):
    model, tokenizer = llama
    greedy = generate_rollouts(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=12, greedy=True))
    params = SamplingParams(max_new_tokens=12, n=2, seed=3, **options)
    sampled = generate_rollouts(model, tokenizer, PROMPTS, params)
    assert torch.equal(sampled.input_ids_BS, greedy.input_ids_BS.repeat_interleave(2, dim=0))


def test_top_k_and_top_p_restrict_sampled_tokens(llama):
    model, tokenizer = llama

    def sample(**options):
        params = SamplingParams(max_new_tokens=16, n=6, seed=0, **options)
        batch = generate_rollouts(model, tokenizer, PROMPTS, params)
        probs_BTV = _sampled_token_probs(model, batch, options.get("temperature", 1.0))
        p_token_BT = probs_BTV.gather(-1, batch.response_ids_BT[..., None]).squeeze(-1)
        # rank = tokens strictly more likely; mass_above = their probability mass
        more_likely_BTV = probs_BTV > p_token_BT[..., None]
        valid = batch.mask_BT.bool()
        return more_likely_BTV.sum(-1)[valid], (probs_BTV * more_likely_BTV).sum(-1)[valid]

    rank_free, mass_free = sample()
    assert rank_free.max() >= 3 and mass_free.max() > 0.6  # unrestricted sampling goes beyond both limits
    rank_k, _ = sample(top_k=3)
    assert rank_k.max() <= 2
    _, mass_p = sample(top_p=0.6, temperature=0.8)
    assert mass_p.max() < 0.6 + 1e-4  # kept tokens: the smallest set whose mass reaches top_p


def test_temperature_sets_the_sampling_distribution(llama):
    """First-token frequencies over 4000 samples match softmax(logits / temperature)."""
    model, tokenizer = llama
    wanted = {}
    for temperature in (0.5, 2.0):
        params = SamplingParams(max_new_tokens=1, n=4000, temperature=temperature, seed=0)
        batch = generate_rollouts(model, tokenizer, PROMPTS[:1], params)
        probs_V = _sampled_token_probs(model, batch.select([0]), temperature)[0, 0]
        freq_V = torch.bincount(batch.response_ids_BT[:, 0], minlength=probs_V.numel()).float() / 4000
        assert 0.5 * (freq_V - probs_V).abs().sum() < 0.05
        wanted[temperature] = probs_V
    assert 0.5 * (wanted[0.5] - wanted[2.0]).abs().sum() > 0.2  # the two temperatures are distinguishable


def test_eos_ends_rows_and_masks_the_rest(llama):
    model, tokenizer = llama
    batch = generate_rollouts(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=24, n=16, seed=0))
    T = batch.response_len
    lengths = batch.mask_BT.sum(1).long()
    assert (lengths < T).any() and batch.truncated_B.any()  # the seed covers both cases
    for b in range(len(batch)):
        n, ids = int(lengths[b]), batch.response_ids_BT[b]
        ended = EOS in ids[:n].tolist()
        assert bool(batch.truncated_B[b]) == (not ended) and (ended or n == 24)
        if ended:
            assert ids[:n].tolist().index(EOS) == n - 1  # the first EOS is the last valid token
        assert (ids[n:] == PAD).all() and (batch.mask_BT[b, :n] == 1).all() and (batch.mask_BT[b, n:] == 0).all()
        assert (batch.attention_mask_BS[b, -T:] == batch.mask_BT[b]).all()
        assert (batch.old_logprobs_BT[b, n:] == 0).all()
        assert batch.responses[b] == tokenizer.decode(ids[:n], skip_special_tokens=True)


def test_max_new_tokens_caps_length(llama):
    model, tokenizer = llama
    batch = generate_rollouts(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=3, n=4, seed=0))
    assert batch.response_len <= 3
    no_eos = ~(batch.response_ids_BT == EOS).any(1)
    assert no_eos.any() and torch.equal(batch.truncated_B, no_eos)
    assert (batch.mask_BT.sum(1)[no_eos] == 3).all()


def test_stop_strings_end_rows_where_the_text_first_contains_them(llama):
    """Same seed with and without stop strings: each stopped row is the free row's prefix up to the stop."""
    model, tokenizer = llama
    params = dict(max_new_tokens=20, n=6, seed=0)
    free = generate_rollouts(model, tokenizer, PROMPTS, SamplingParams(**params))
    stops = (free.responses[0][2:4], "7")  # a two-character stop the seed is known to produce, and a common one
    stopped = generate_rollouts(model, tokenizer, PROMPTS, SamplingParams(stop_strings=stops, **params))
    hits = 0
    for b in range(len(free)):
        tokens = _valid(free, b)
        texts = [tokenizer.decode(tokens[:t + 1], skip_special_tokens=True) for t in range(len(tokens))]
        end = next((t + 1 for t, text in enumerate(texts) if any(s in text for s in stops)), None)
        hits += end is not None
        assert _valid(stopped, b) == tokens[:end or len(tokens)]
        assert not any(s in stopped.responses[b] for s in stops)
        if end is not None:
            assert not stopped.truncated_B[b]
            full = texts[end - 1]
            assert stopped.responses[b] == full[:min(full.find(s) for s in stops if s in full)]
    assert hits >= 2


def test_n_samples_per_prompt_and_group_ids(llama):
    model, tokenizer = llama
    references = ["46", "30", "120"]
    batch = generate_rollouts(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=8, n=4, seed=0), references)
    assert len(batch) == 12 and batch.group_ids_B.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert batch.prompts == [p for p in PROMPTS for _ in range(4)]
    assert batch.references == [r for r in references for _ in range(4)]
    prompt_block = batch.input_ids_BS[:, :batch.prompt_len]
    for g in range(3):
        rows = batch.input_ids_BS[4 * g:4 * g + 4]
        assert (prompt_block[4 * g:4 * g + 4] == prompt_block[4 * g]).all()
        assert len({tuple(r.tolist()) for r in rows}) > 1  # samples of one prompt differ


def test_seed_reproducible_and_global_rng_untouched(llama):
    model, tokenizer = llama
    params = SamplingParams(max_new_tokens=10, n=2, seed=7)
    rng_before = torch.get_rng_state()
    a = generate_rollouts(model, tokenizer, PROMPTS, params)
    assert torch.equal(torch.get_rng_state(), rng_before)
    b = generate_rollouts(model, tokenizer, PROMPTS, params)
    c = generate_rollouts(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=10, n=2, seed=8))
    assert torch.equal(a.input_ids_BS, b.input_ids_BS) and torch.equal(a.old_logprobs_BT, b.old_logprobs_BT)
    assert not torch.equal(a.input_ids_BS, c.input_ids_BS)


def test_token_id_prompts_and_prompt_length_policy(llama):
    model, tokenizer = llama
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    params = SamplingParams(max_new_tokens=6, seed=0)
    from_text = generate_rollouts(model, tokenizer, PROMPTS, params)
    from_ids = generate_rollouts(model, tokenizer, ids, params)
    assert torch.equal(from_text.input_ids_BS, from_ids.input_ids_BS) and from_ids.prompts == PROMPTS
    with pytest.raises(ValueError, match="prompt 2 has 9 tokens > max_prompt_len=6"):
        generate_rollouts(model, tokenizer, PROMPTS, SamplingParams(max_prompt_len=6))
    cut = generate_rollouts(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=2, max_prompt_len=6,
                                                                     truncate_prompts=True))
    assert cut.prompt_len == 6 and tokenizer.decode(cut.input_ids_BS[2, :6]) == "1)*20="
    assert cut.prompts == PROMPTS  # the text as given; the ids are what the model saw


def test_context_overflow_and_bad_params_are_clear_errors(llama):
    model, tokenizer = llama
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        generate_rollouts(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=250))
    for field, value in [("temperature", 0.0), ("top_p", 0.0), ("top_k", -1), ("n", 0), ("max_new_tokens", 0),
                         ("stop_strings", ("",))]:
        with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
            SamplingParams(**{field: value})


def test_generation_runs_in_eval_mode_and_restores_training(llama):
    model, tokenizer = llama
    model.train()
    generate_rollouts(model, tokenizer, PROMPTS[:1], SamplingParams(max_new_tokens=2))
    assert model.training
    model.eval()


def test_pad_equal_to_eos_changes_nothing_but_padding(llama):
    """GPT-2/Llama tokenizers usually pad with EOS: ends must come from sampling, not from pad ids."""
    model, tokenizer = llama
    params = SamplingParams(max_new_tokens=16, n=4, seed=0)
    normal = generate_rollouts(model, tokenizer, PROMPTS, params)
    eos_padded = copy.deepcopy(tokenizer)
    eos_padded.pad_token = eos_padded.eos_token
    same = generate_rollouts(model, eos_padded, PROMPTS, params)
    assert torch.equal(same.mask_BT, normal.mask_BT) and torch.equal(same.attention_mask_BS, normal.attention_mask_BS)
    valid = same.attention_mask_BS.bool()
    assert torch.equal(same.input_ids_BS[valid], normal.input_ids_BS[valid])
    assert (same.input_ids_BS[~valid] == EOS).all() and torch.equal(same.old_logprobs_BT, normal.old_logprobs_BT)
