"""Logits processors against transformers' own; seeded draws; parameter validation."""

from __future__ import annotations

import math

import pytest
import torch

from oracle import official
from qtts import sampling
from qtts.config import GenerationConfig, TalkerConfig
from qtts.errors import InputError
from qtts.kernels.sample import exponential_noise, noise_bits, sample_codes_reference
from qtts.sampling import DrawSettings, RowSampling, SamplingParams
from qtts.testing.configs import tiny_tts_config

VOCAB = 3072
EOS = 2150


@pytest.fixture(scope="module")
def hf():
    official()
    from transformers.generation import logits_process

    return logits_process


def random_logits(batch=3, vocab=VOCAB, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=gen) * 3
    logits[:, :5] = logits[:, 5:10]  # ties, so top-k/top-p boundaries are exercised
    return logits


def history(batch=3, length=7, seed=1):
    return torch.randint(0, 2048, (batch, length), generator=torch.Generator().manual_seed(seed))


def seen_mask(ids, vocab=VOCAB):
    return torch.zeros(ids.shape[0], vocab, dtype=torch.bool).scatter(1, ids, True)


def test_repetition_penalty_equals_transformers(hf):
    logits, ids = random_logits(), history()
    theirs = hf.RepetitionPenaltyLogitsProcessor(1.05)(ids, logits.clone())
    torch.testing.assert_close(sampling.repetition_penalty(logits, seen_mask(ids), 1.05), theirs, rtol=0, atol=0)


@pytest.mark.parametrize("generated", [0, 1, 2, 5])
def test_min_new_tokens_equals_transformers(hf, generated):
    logits = random_logits()
    ids = history(length=generated)
    theirs = hf.MinNewTokensLengthLogitsProcessor(0, 2, EOS)(ids, logits.clone())
    ours = sampling.mask_eos_before(logits, EOS, torch.tensor(generated), 2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_suppression_equals_transformers(hf):
    logits = random_logits()
    suppressed_ids = [i for i in range(VOCAB - 1024, VOCAB) if i != EOS]
    theirs = hf.SuppressTokensLogitsProcessor(suppressed_ids)(history(), logits.clone())
    ids = torch.arange(VOCAB)
    ours = sampling.suppress(logits, (ids >= VOCAB - 1024) & (ids != EOS))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert math.isfinite(ours[0, EOS]) and math.isinf(ours[0, 2148]) and math.isfinite(ours[0, 2047])


@pytest.mark.parametrize("value", [0.3, 0.9, 1.7])
def test_temperature_equals_transformers(hf, value):
    logits = random_logits()
    theirs = hf.TemperatureLogitsWarper(value)(history(), logits.clone())
    torch.testing.assert_close(sampling.temperature(logits, value), theirs, rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 5, 50, 5000])
def test_top_k_equals_transformers(hf, k):
    logits = random_logits()
    theirs = hf.TopKLogitsWarper(top_k=k)(history(), logits.clone())
    torch.testing.assert_close(sampling.top_k(logits, k), theirs, rtol=0, atol=0)
    per_row = sampling.top_k(logits, torch.full((logits.shape[0],), k))
    torch.testing.assert_close(per_row, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_equals_transformers(hf, p):
    logits = random_logits()
    theirs = hf.TopPLogitsWarper(top_p=p)(history(), logits.clone())
    torch.testing.assert_close(sampling.top_p(logits, p), theirs, rtol=0, atol=0)
    torch.testing.assert_close(sampling.top_p(logits, torch.full((logits.shape[0],), p)), theirs, rtol=0, atol=0)


def test_per_row_settings_apply_to_their_row_only():
    logits = random_logits()
    k = torch.tensor([0, 5, 1])
    p = torch.tensor([1.0, 0.5, 0.9])
    for row in range(3):
        torch.testing.assert_close(sampling.top_k(logits, k)[row], sampling.top_k(logits[row:row + 1], int(k[row]))[0])
        torch.testing.assert_close(sampling.top_p(logits, p)[row],
                                   sampling.top_p(logits[row:row + 1], float(p[row]))[0])


def test_talker_chain_equals_transformers_processor_list(hf):
    params = SamplingParams(temperature=0.7, top_k=40, top_p=0.8, repetition_penalty=1.3, min_new_tokens=3)
    config = TalkerConfig.from_dict(tiny_tts_config("base")["talker_config"])
    chain = hf.LogitsProcessorList([
        hf.RepetitionPenaltyLogitsProcessor(1.3),
        hf.MinNewTokensLengthLogitsProcessor(0, 3, EOS),
        hf.SuppressTokensLogitsProcessor([i for i in range(VOCAB - 1024, VOCAB) if i != EOS]),
        hf.TemperatureLogitsWarper(0.7),
        hf.TopKLogitsWarper(40),
        hf.TopPLogitsWarper(0.8),
    ])
    logits, ids = random_logits(), history(length=2)
    rows = RowSampling.of(params, logits.shape[0], "cpu")
    ours = sampling.repetition_penalty(logits, seen_mask(ids), rows.repetition_penalty[:, None])
    ours = sampling.mask_eos_before(ours, EOS, torch.full((3, 1), 2), rows.min_new_tokens[:, None])
    vocab = torch.arange(VOCAB)
    ours = sampling.warp(sampling.suppress(ours, (vocab >= VOCAB - 1024) & (vocab != EOS)), rows.talker)
    torch.testing.assert_close(ours, chain(ids, logits.clone()), rtol=0, atol=0)
    assert config.codec_eos_token_id == EOS


def test_draws_follow_the_distribution_and_respect_masks():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]])).expand(20000, -1)
    noise = torch.empty(scores.shape).exponential_(generator=torch.Generator().manual_seed(0))
    tokens = sampling.draw(scores, True, noise)
    freq = torch.bincount(tokens, minlength=4).float() / tokens.numel()
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.2, 0.0]), rtol=0, atol=0.02)
    assert sampling.draw(scores[:1], False).item() == 0


def test_seeded_sampling_is_reproducible_and_keyed_by_seed_and_draw():
    logits = random_logits(batch=8)
    settings = RowSampling.of(SamplingParams(), 8, "cpu").talker

    def codes(seed, counter):
        return sample_codes_reference(logits, torch.full((8,), seed), torch.full((8,), counter), settings)

    assert torch.equal(codes(1234, 5), codes(1234, 5))
    assert not torch.equal(codes(1234, 5), codes(99, 5))
    assert not torch.equal(codes(1234, 5), codes(1234, 6))
    assert not torch.equal(codes(1234, 5), codes(1234 + 2**40, 5))  # the seed's high half counts too


@pytest.mark.parametrize("bad", [
    dict(temperature=0), dict(temperature=-1.0), dict(subtalker_temperature=float("nan")), dict(top_k=-1),
    dict(top_k=2.5), dict(top_p=0), dict(top_p=1.5), dict(subtalker_top_p=-0.1), dict(repetition_penalty=0),
    dict(max_new_tokens=0), dict(max_new_tokens=-3), dict(min_new_tokens=-1), dict(do_sample="yes"),
    dict(seed="abc"), dict(top_k=2**63), dict(subtalker_top_k=2**64), dict(min_new_tokens=2**63),
    dict(repetition_penalty=float("inf")),
])
def test_invalid_params_raise_input_error(bad):
    with pytest.raises(InputError, match=next(iter(bad))):
        SamplingParams(**bad)


def test_from_generation_config_prefers_explicit_values():
    config = GenerationConfig.from_dict({"max_new_tokens": 8192, "temperature": 0.9})
    params = SamplingParams.from_generation_config(config, temperature=0.5, top_k=None, seed=3)
    assert (params.max_new_tokens, params.temperature, params.top_k, params.seed) == (8192, 0.5, 50, 3)
    with pytest.raises(InputError, match="unknown sampling option"):
        SamplingParams.from_generation_config(config, temprature=0.5)


def largest_hash(vocab: int) -> tuple[int, int]:
    """(counter, token) where seed 0's noise hash is among the largest 2**-24 of all: where uniforms of
    24 bits rounded to 1.0, and where the noise is now the smallest the generator makes."""
    seeds = torch.zeros(4096, dtype=torch.int64)
    for start in range(0, 1 << 20, 4096):
        bits = noise_bits(seeds, torch.arange(start, start + 4096), vocab).flatten()
        at = int(bits.argmax())
        if bits[at] >> 8 == (1 << 24) - 1:
            return start + at // vocab, at % vocab
    raise AssertionError("no draw reached the largest hashes")


def extreme_draw(device="cpu"):
    """A draw whose noise is the smallest the generator makes at one token, which is forbidden in row 0
    (probability 0) and all but impossible in row 1: (logits, seeds, counters, settings, token)."""
    vocab = 2048
    counter, token = largest_hash(vocab)
    seeds, counters = torch.zeros(2, dtype=torch.int64, device=device), torch.tensor([counter] * 2, device=device)
    logits = torch.randn(2, vocab, device=device)
    logits[0, token] = -math.inf
    logits[1, token] = -60.0  # probability ~1e-27
    settings = DrawSettings(do_sample=torch.tensor([True, True], device=device),
                            temperature=torch.ones(2, device=device),
                            top_k=torch.zeros(2, dtype=torch.int64, device=device), top_p=torch.ones(2, device=device))
    return logits, seeds, counters, settings, token


def test_an_impossible_token_is_never_drawn_even_at_the_smallest_noise():
    """Where a token's noise is the smallest the generator can make, p / noise must still be about p: 24-bit
    uniforms rounded to 1.0 there, noise 0, so a token of probability 0 was drawn as 0 / 0 = NaN (argmax
    picks NaN: a code the decoder has no row for, about once in ten thousand frames) and an improbable one
    as p / 0 = inf."""
    logits, seeds, counters, settings, token = extreme_draw()
    noise = exponential_noise(seeds, counters, logits.shape[-1])
    assert torch.isfinite(noise).all() and (noise > 0).all()
    assert (sample_codes_reference(logits, seeds, counters, settings) != token).all()
