"""Logits processing and the draw of one code per row in one launch (the eager path takes ~20 launches),
with counter-based noise: Exp(1) samples that are a pure function of (request seed, draw counter, id).

No generator state lives on the host or the device, so a captured CUDA graph replays fresh noise every
frame (the counter is a device tensor the graph advances), and a request's draws do not depend on which
other requests share its batch. Every setting is read per row (`qtts.sampling.DrawSettings`), so rows of
requests with different settings share one launch.

The function is the official processing (spec 4) as `qtts.sampling` implements it, with the noise of
`exponential_noise` generated in the kernel from (seed, counter, id): for the talker, repetition penalty
over `seen` ids, EOS masked before `min_new_tokens`, ids from `suppress_from` on suppressed except EOS;
then temperature -> top-k -> top-p -> softmax -> argmax(p / Exp(1) noise) where the row samples, argmax
where it does not.
"""

from __future__ import annotations

import torch

from qtts.errors import InputError
from qtts.kernels import jit, next_power_of_2, pdl_launch, tl, wait_for_previous
from qtts.sampling import DrawSettings, draw_rows, mask_eos_before, repetition_penalty, suppress, warp

_MASK32 = 0xFFFFFFFF


def _mix32_reference(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (the 'lowbias32' mixer) on int64 tensors holding values below 2**32."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def noise_bits(seeds: torch.Tensor, counter: torch.Tensor, vocab: int) -> torch.Tensor:
    """The 32-bit hashes [batch, vocab] (int64) behind `exponential_noise`: request `seeds` [batch] (int64 in
    [0, 2**63)) at draw `counter` (int64 tensor, 0-d or [batch]); both halves of the seed key the stream."""
    stream = _mix32_reference((seeds & _MASK32) ^ 0x9E3779B9)
    stream = _mix32_reference((stream + ((seeds >> 32) & _MASK32)) & _MASK32)
    stream = _mix32_reference((stream + (counter & _MASK32)) & _MASK32)
    index = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    return _mix32_reference((stream[:, None] ^ _mix32_reference(index)[None, :]) & _MASK32)


def exponential_noise(seeds: torch.Tensor, counter: torch.Tensor, vocab: int) -> torch.Tensor:
    """Exp(1) samples [batch, vocab] for request `seeds` at draw `counter` (see `noise_bits`). Uniforms
    have 23 bits, so that every one is strictly inside (0, 1) in float32 and the noise is finite and
    positive (24 bits rounded the largest hashes to 1.0: noise 0, and a token of probability 0 was drawn
    as 0 / 0 = NaN, which argmax picks)."""
    uniform = ((noise_bits(seeds, counter, vocab) >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))
    return -torch.log(uniform)


def sample_codes_reference(
    logits: torch.Tensor, seeds: torch.Tensor, counter: torch.Tensor, settings: DrawSettings, *,
    seen: torch.Tensor | None = None, generated: torch.Tensor | None = None,
    penalty: torch.Tensor | None = None, min_new_tokens: torch.Tensor | None = None,
    eos_id: int = -1, suppress_from: int | None = None, counter_scale: int = 1, counter_offset: int = 0,
) -> torch.Tensor:
    """Ids [B] from logits [B, V] with each row's `settings`. `seen` (bool [B, V]) turns on the talker's
    processing with `generated`, `penalty` and `min_new_tokens` [B]; the draw counter
    `counter * counter_scale + counter_offset` ([B]: frame * 16 + codebook) keys the noise with each row's
    seed."""
    scores = logits.float()
    if seen is not None:
        scores = repetition_penalty(scores, seen, penalty[:, None])
        scores = mask_eos_before(scores, eos_id, generated[:, None], min_new_tokens[:, None])
        if suppress_from is not None:
            ids = torch.arange(scores.shape[-1], device=scores.device)
            scores = suppress(scores, (ids >= suppress_from) & (ids != eos_id))
    scores = warp(scores, settings)
    noise = exponential_noise(seeds, counter * counter_scale + counter_offset, scores.shape[-1])
    return draw_rows(scores, settings.do_sample, noise)


@jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


# H100, bench/kernel_probe.py --parts sample (bf16 logits, vocabulary 2048, top-k 50, us a draw where top-k's
# threshold is searched / where the first draw is top-k's): 2-bit digits, 8 warps 8.5 / 4.1, 4 warps 9.3 /
# 4.6; 1-bit digits with 8 warps 9.4 / 4.0, 4-bit 9.5 / 4.1. (Before, on 64-bit keys: 2 warps 32.8 us,
# 8-bit digits 244.)
SAMPLE_WARPS = 8


@jit
def _order_keys(x, KEY_BITS: tl.constexpr):
    """Unsigned keys that sort like the floats `x` (float32, or a 16-bit float type when KEY_BITS is 16): a
    float's bits sort like the floats for positives and backwards for negatives, so positives get the sign
    bit set and negatives every bit flipped."""
    if KEY_BITS == 16:
        bits = x.to(tl.uint16, bitcast=True).to(tl.uint32)
        return tl.where(bits >= 0x8000, bits ^ 0xFFFF, bits | 0x8000)
    else:
        bits = x.to(tl.uint32, bitcast=True)
        return tl.where(bits >= 0x80000000, ~bits, bits | 0x80000000)


@jit
def _kth_largest(x, keys, k, KEY_BITS: tl.constexpr, RADIX_BITS: tl.constexpr):
    """The k-th largest value of `x` (ties counted, as torch.topk's last value), found digit by digit on
    `keys` that sort like `x` (`_order_keys` of x, or of values x is a rising function of): KEY_BITS /
    RADIX_BITS counting passes instead of a sort of the vocabulary."""
    digits = tl.arange(0, 1 << RADIX_BITS).to(tl.uint32)
    prefix = tl.zeros([], dtype=tl.uint32)
    for shift in tl.static_range(KEY_BITS - RADIX_BITS, -1, -RADIX_BITS):
        # the largest digit whose candidate still has k keys at or above it (digit 0 always does)
        counts = tl.sum((keys[None, :] >= (prefix | (digits << shift))[:, None]).to(tl.int32), axis=1)
        prefix = prefix | (tl.max(tl.where(counts >= k, digits, 0), axis=0) << shift)
    return tl.max(tl.where(keys == prefix, x, float("-inf")), axis=0)


@jit
def _top_p_threshold(p, top_p, RADIX_BITS: tl.constexpr):
    """The smallest probability top-p keeps: the largest value v of `p` (>= 0) whose tokens at or above it
    hold at least `top_p` of the mass. Found digit by digit like `_kth_largest`, summing mass instead of
    counting. Keeping p >= v is the official rule (drop a token when the ascending cumulative mass up to
    it is <= 1 - top_p), up to the order of float additions."""
    keys = _order_keys(p, 32)
    digits = tl.arange(0, 1 << RADIX_BITS).to(tl.uint32)
    prefix = tl.zeros([], dtype=tl.uint32)
    for shift in tl.static_range(32 - RADIX_BITS, -1, -RADIX_BITS):
        above = keys[None, :] >= (prefix | (digits << shift))[:, None]
        mass = tl.sum(tl.where(above, p[None, :], 0.0), axis=1)
        prefix = prefix | (tl.max(tl.where(mass >= top_p, digits, 0), axis=0) << shift)
    return tl.max(tl.where(keys == prefix, p, 0.0), axis=0)


@jit
def _sample_codes_kernel(
    logits_ptr, seeds_ptr, counter_ptr, do_sample_ptr, temp_ptr, top_k_ptr, top_p_ptr,
    seen_ptr, generated_ptr, penalty_ptr, min_new_ptr, out_ptr, table_ptr, embed_ptr,
    vocab, eos_id, suppress_from, counter_scale, counter_offset, width,
    TALKER: tl.constexpr, BLOCK_V: tl.constexpr, KEY_BITS: tl.constexpr, RADIX_BITS: tl.constexpr,
    EMBED: tl.constexpr, BLOCK_E: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    ids = tl.arange(0, BLOCK_V)
    in_vocab = ids < vocab
    logits = tl.load(logits_ptr + row * vocab + ids, mask=in_vocab, other=float("-inf"))
    x = logits.to(tl.float32)
    if TALKER:
        seen = tl.load(seen_ptr + row * vocab + ids, mask=in_vocab, other=0) != 0
        penalty = tl.load(penalty_ptr + row)
        x = tl.where(seen, tl.where(x < 0, x * penalty, x / penalty), x)
        generated = tl.load(generated_ptr + row)
        x = tl.where((ids == eos_id) & (generated < tl.load(min_new_ptr + row)), float("-inf"), x)
        x = tl.where((ids >= suppress_from) & (ids != eos_id), float("-inf"), x)
    code = tl.argmax(x, axis=0)
    if tl.load(do_sample_ptr + row) != 0:
        x = x / tl.load(temp_ptr + row)
        k = tl.minimum(tl.load(top_k_ptr + row), vocab)
        top_p = tl.load(top_p_ptr + row)
        # the noise of exponential_noise, bit for bit: 32-bit hashes kept in int64
        counter = tl.load(counter_ptr + row).to(tl.int64) * counter_scale + counter_offset
        seed = tl.load(seeds_ptr + row).to(tl.int64)
        stream = _mix32((seed & 0xFFFFFFFF) ^ 0x9E3779B9)
        stream = _mix32((stream + ((seed >> 32) & 0xFFFFFFFF)) & 0xFFFFFFFF)
        stream = _mix32((stream + (counter & 0xFFFFFFFF)) & 0xFFFFFFFF)
        bits = _mix32((stream ^ _mix32(ids.to(tl.int64))) & 0xFFFFFFFF)
        noise = -tl.log(((bits >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0))
        # First the draw over every token: the argmax of exp(x - max) / noise. Top-k only takes tokens away
        # and the softmax's sum scales every kept token alike, so where the winner is among the k largest
        # it is top-k's draw too, found without top-k's k-th largest value (8 or 16 passes over the
        # vocabulary); a peaked distribution's winner mostly is.
        p = tl.exp(x - tl.max(x, axis=0))
        code = tl.argmax(tl.where(in_vocab, p / noise, -1.0), axis=0)
        beaten_by = tl.sum((x > tl.max(tl.where(ids == code, x, float("-inf")), axis=0)).to(tl.int32), axis=0)
        if (top_p < 1.0) | ((k > 0) & (beaten_by >= k)):
            if k > 0:
                # 16-bit logits order x as x orders itself (x is a rising function of them): half the passes
                keys = _order_keys(logits if KEY_BITS == 16 else x, KEY_BITS)
                # the k largest keep the maximum, so their exp(x - max) are the ones computed above
                p = tl.where(x < _kth_largest(x, keys, k, KEY_BITS, RADIX_BITS), 0.0, p)
            p = p / tl.sum(p, axis=0)
            if top_p < 1.0:
                p = tl.where(p < _top_p_threshold(p, top_p, RADIX_BITS), 0.0, p)
            code = tl.argmax(tl.where(in_vocab, p / noise, -1.0), axis=0)
    code = code.to(tl.int64)
    tl.store(out_ptr + row, code)
    if EMBED:  # the code's row of the embedding table, the next step's input
        for start in range(0, width, BLOCK_E):
            cols = start + tl.arange(0, BLOCK_E)
            tl.store(embed_ptr + row * width + cols, tl.load(table_ptr + code * width + cols, mask=cols < width),
                     mask=cols < width)


def sample_codes_triton(
    logits: torch.Tensor, seeds: torch.Tensor, counter: torch.Tensor, settings: DrawSettings, *,
    seen: torch.Tensor | None = None, generated: torch.Tensor | None = None,
    penalty: torch.Tensor | None = None, min_new_tokens: torch.Tensor | None = None,
    eos_id: int = -1, suppress_from: int | None = None, counter_scale: int = 1, counter_offset: int = 0,
    embedding: torch.Tensor | None = None, pdl: bool = False, radix_bits: int = 2, num_warps: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """As the reference, with each row's counter given as `counter * counter_scale + counter_offset` so a
    frame keys all 16 draws off its per-row frame counter without extra launches. With `embedding` (a
    table [vocab, H]) also returns the drawn codes' rows [B, H], saving the lookup's launch.

    `pdl`: see `qtts.kernels.wait_for_previous`; `radix_bits` (1, 2 or 4): digit width of the top-k and
    top-p searches; `num_warps`: warps per row (8 measured fastest, see SAMPLE_WARPS)."""
    if radix_bits not in (1, 2, 4):
        raise InputError(f"radix_bits must be 1, 2 or 4, got {radix_bits}")
    batch, vocab = logits.shape
    talker = seen is not None
    out = torch.empty(batch, device=logits.device, dtype=torch.int64)
    embedded = None if embedding is None else embedding.new_empty(batch, embedding.shape[1])
    unused = counter  # a valid pointer for arguments the kernel does not read
    _sample_codes_kernel[(batch,)](
        logits.contiguous(), seeds, counter, *settings.tensors(),
        seen if talker else unused, generated if talker else unused, penalty if talker else unused,
        min_new_tokens if talker else unused, out,
        embedding if embedding is not None else logits, embedded if embedded is not None else logits,
        vocab, eos_id, vocab if suppress_from is None else suppress_from, counter_scale, counter_offset,
        0 if embedding is None else embedding.shape[1],
        TALKER=talker, BLOCK_V=next_power_of_2(vocab),
        # the talker's penalty reorders its logits; the predictor's keep their order through the temperature
        KEY_BITS=16 if logits.element_size() == 2 and not talker else 32, RADIX_BITS=radix_bits,
        EMBED=embedding is not None,
        BLOCK_E=1024, PDL=pdl, num_warps=num_warps or SAMPLE_WARPS, **pdl_launch(pdl),
    )
    return out if embedded is None else (out, embedded)
