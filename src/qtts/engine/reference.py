"""The reference generation loop: plain PyTorch, one frame at a time, faithful to the official codes.

Per frame (spec 3.3, 5.4): sample code 0 from the talker's logits, fill codes 1..15 with the code predictor
(a fresh 16-slot cache), feed back the sum of the 16 code embeddings plus the next text-track vector, and
run one talker step. The pieces (`prefill`, `talker_step`, `predict_codes`) have static shapes and no host
sync, so a CUDA-graph path can capture them; only this loop itself reads EOS flags on the host.

Bookkeeping matches the official `generate`: N sampled code-0 tokens give N - 1 frames when the limit is
reached (the last token never gets its residual codes), and a row's codes end before its first EOS.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import InputError
from ..models.layers import attention_mask
from ..models.talker import Talker
from ..prompt import PromptPlan, pad_batch, prompt_positions
from ..kernels.sample import sample_codes_reference
from ..sampling import RowSampling, SamplingParams, request_seeds


class DecodeState:
    """Static per-batch buffers of one generation: cache validity, RoPE offsets, code-0 history."""

    def __init__(self, valid: torch.Tensor, max_len: int, vocab_size: int):
        batch, prompt_len = valid.shape
        device = valid.device
        self.prompt_len = prompt_len
        self.valid_slots = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.valid_slots[:, :prompt_len] = valid
        # RoPE positions skip left padding: the prompt's own positions, then contiguous per row.
        self.prompt_positions = prompt_positions(valid)
        self.pad_count = (~valid).sum(-1, keepdim=True)
        self.slots = torch.arange(max_len, device=device)
        self.seen = torch.zeros(batch, vocab_size, dtype=torch.bool, device=device)


@torch.no_grad()
def prefill(talker: Talker, embeds: torch.Tensor, state: DecodeState):
    """Run the prompt [batch, T, hidden]; return the last hidden state [batch, hidden] and logits [batch, vocab]."""
    slots = state.slots[: state.prompt_len]
    mask = attention_mask(state.valid_slots[:, : state.prompt_len], slots)
    hidden = talker(embeds, state.prompt_positions, slots, mask)[:, -1]
    return hidden, talker.codec_head(hidden)


@torch.no_grad()
def talker_step(talker: Talker, inputs: torch.Tensor, step: int, state: DecodeState):
    """One talker position for frame `step`'s feedback `inputs` [batch, hidden] at slot prompt_len + step."""
    slot = state.slots[state.prompt_len + step: state.prompt_len + step + 1]
    state.valid_slots.index_fill_(1, slot, True)
    positions = slot[None, :] - state.pad_count
    # Attend over the filled slots only (the host knows how many): cost grows with the sequence, not max_len.
    mask = attention_mask(state.valid_slots[:, : state.prompt_len + step + 1], slot)
    hidden = talker(inputs[:, None], positions, slot, mask)[:, -1]
    return hidden, talker.codec_head(hidden)


@torch.no_grad()
def predict_codes(talker: Talker, hidden: torch.Tensor, code0: torch.Tensor, sample_code) -> torch.Tensor:
    """Codes [batch, 16] of one frame from the talker's hidden state [batch, hidden] and code 0 [batch];
    `sample_code(group, logits)` draws codebook `group`'s codes."""
    predictor = talker.code_predictor
    slots = torch.arange(predictor.num_positions, device=hidden.device)
    inputs = torch.stack([hidden, talker.embed_codec(code0)], dim=1)
    codes = [code0]
    out = predictor(inputs, slots[:2])[:, -1]
    for group in range(1, predictor.num_positions):
        codes.append(sample_code(group, predictor.lm_head[group - 1](out)))
        if group + 1 < predictor.num_positions:
            out = predictor(predictor.embed_code(group, codes[-1])[:, None], slots[group + 1: group + 2])[:, -1]
    return torch.stack(codes, dim=-1)


def _limit(params: SamplingParams, max_new_tokens: int | None) -> int:
    limit = params.max_new_tokens if max_new_tokens is None else max_new_tokens
    if not isinstance(limit, int) or limit < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {limit!r}")
    return limit


def iter_frames_batch(talker: Talker, plans: list[PromptPlan], params: SamplingParams, *,
                      max_new_tokens: int | None = None, seeds: list[int] | None = None) -> Iterator[torch.Tensor]:
    """Frames [batch, 16] as they are made, from left-padded prompts (spec 5.5), until every row has
    sampled EOS or the limit is reached. A row that finished earlier carries EOS in code 0 from then on.
    `seeds`: one per row (default: the request's seed, or fresh random ones), drawn as every engine does
    (`kernels.sample.exponential_noise`)."""
    if not plans:
        raise InputError("no prompts to generate from")
    limit = _limit(params, max_new_tokens)
    if seeds is not None and len(seeds) != len(plans):
        raise InputError(f"{len(seeds)} seeds for {len(plans)} prompts")
    return _frames(talker, plans, params, limit, seeds or request_seeds(params, len(plans)))


@torch.no_grad()
def _frames(talker: Talker, plans: list[PromptPlan], params: SamplingParams, limit: int, seeds: list[int]):
    config = talker.config
    embeds, valid, trailing = pad_batch(plans)
    batch, prompt_len, _ = embeds.shape
    device = embeds.device
    talker.setup_caches(batch, prompt_len + limit, device, embeds.dtype)
    state = DecodeState(valid, prompt_len + limit, config.vocab_size)
    sampling = RowSampling.of(params, batch, device)
    seeds = torch.tensor(seeds, device=device)
    groups = config.num_code_groups
    eos = config.codec_eos_token_id
    tts_pad = plans[-1].tts_pad

    hidden, logits = prefill(talker, embeds, state)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(limit):
        generated = torch.full_like(seeds, step)
        code0 = sample_codes_reference(
            logits, seeds, generated * groups, sampling.talker, seen=state.seen, generated=generated,
            penalty=sampling.repetition_penalty, min_new_tokens=sampling.min_new_tokens, eos_id=eos,
            suppress_from=config.vocab_size - 1024)
        code0 = torch.where(finished, eos, code0)  # finished rows are fed EOS, as transformers pads them
        state.seen.scatter_(1, code0[:, None], True)
        finished |= code0 == eos
        if bool(finished.all()) or step == limit - 1:
            return
        codes = predict_codes(talker, hidden, code0, lambda group, logits: sample_codes_reference(
            logits, seeds, generated * groups + group, sampling.predictor))
        yield codes
        text = trailing[:, step] if step < trailing.shape[1] else tts_pad.expand(batch, -1)
        hidden, logits = talker_step(talker, talker.embed_frame(codes) + text, step, state)


def generate_codes_batch(talker: Talker, plans: list[PromptPlan], params: SamplingParams, *,
                         max_new_tokens: int | None = None, seeds: list[int] | None = None) -> list[torch.Tensor]:
    """Codes [frames, 16] per plan, generated together from left-padded prompts (spec 5.5)."""
    frames = list(iter_frames_batch(talker, plans, params, max_new_tokens=max_new_tokens, seeds=seeds))
    config = talker.config
    if not frames:
        device = plans[0].prefill.device
        return [torch.zeros(0, config.num_code_groups, dtype=torch.long, device=device) for _ in plans]
    codes = torch.stack(frames, dim=1)  # [batch, frames, 16]
    is_eos = codes[..., 0] == config.codec_eos_token_id
    lengths = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), codes.shape[1])
    return [codes[row, : int(n)] for row, n in enumerate(lengths)]


def iter_frames(talker: Talker, plan: PromptPlan, params: SamplingParams, *,
                max_new_tokens: int | None = None) -> Iterator[torch.Tensor]:
    """Frames [1, 16] of one prompt as they are made (a single row stops at its EOS, so all are valid)."""
    return iter_frames_batch(talker, [plan], params, max_new_tokens=max_new_tokens)


def generate_codes(talker: Talker, plan: PromptPlan, params: SamplingParams, *,
                   max_new_tokens: int | None = None) -> torch.Tensor:
    """Codes [frames, 16] for one prompt plan."""
    return generate_codes_batch(talker, [plan], params, max_new_tokens=max_new_tokens)[0]
