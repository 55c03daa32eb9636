"""Logits processing and the draw of one code per row in one launch (the eager path takes ~20 launches),
with counter-based noise: Exp(1) samples that are a pure function of (request seed, draw counter, id).

No generator state lives on the host or the device, so a captured CUDA graph replays fresh noise every
frame (the counter is a device tensor the graph advances), and a request's draws do not depend on which
other requests share its batch.

The function is the official processing (spec 4) as `qtts.sampling` implements it, with the noise of
`exponential_noise` generated in the kernel from (seed, counter, id): for the talker,
repetition penalty over `seen` ids, EOS masked before `min_new_tokens`, ids from `suppress_from` on
suppressed except EOS; then, when sampling, temperature -> top-k -> softmax -> argmax(p / Exp(1) noise);
otherwise argmax. top-p < 1 is not fused: callers use the reference for it.
"""

from __future__ import annotations

import torch

from qtts.errors import InputError
from qtts.kernels import jit, next_power_of_2, pdl_launch, tl, wait_for_previous
from qtts.sampling import draw, mask_eos_before, repetition_penalty, suppress, temperature, top_k

_MASK32 = 0xFFFFFFFF


def _mix32_reference(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (the 'lowbias32' mixer) on int64 tensors holding values below 2**32."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def exponential_noise(seeds: torch.Tensor, counter: torch.Tensor, vocab: int) -> torch.Tensor:
    """Exp(1) samples [batch, vocab] for request `seeds` [batch] (int64) at draw `counter` (int64 tensor,
    0-d or [batch]). Uniforms have 24 bits, strictly inside (0, 1), so the log is finite."""
    stream = _mix32_reference((seeds & _MASK32) ^ 0x9E3779B9)
    stream = _mix32_reference((stream + (counter & _MASK32)) & _MASK32)
    index = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    bits = _mix32_reference((stream[:, None] ^ _mix32_reference(index)[None, :]) & _MASK32)
    uniform = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return -torch.log(uniform)


def sample_codes_reference(
    logits: torch.Tensor, seeds: torch.Tensor, counter: torch.Tensor, *, do_sample: bool, temp: float,
    k: int, seen: torch.Tensor | None = None, generated: torch.Tensor | None = None, penalty: float = 1.0,
    eos_id: int = -1, min_new_tokens: int | torch.Tensor = 0, suppress_from: int | None = None,
) -> torch.Tensor:
    """Ids [B] from logits [B, V]. `seen` (bool [B, V]) turns on the talker's processing; `counter` is the
    draw's 0-d int64 tensor (frame * 16 + codebook) keying the noise with each row's seed; `min_new_tokens`
    may be a 0-d tensor (a captured graph then takes it per request)."""
    scores = logits.float()
    if seen is not None:
        if penalty != 1.0:
            scores = repetition_penalty(scores, seen, penalty)
        scores = mask_eos_before(scores, eos_id, generated, min_new_tokens)
        if suppress_from is not None:
            ids = torch.arange(scores.shape[-1], device=scores.device)
            scores = suppress(scores, (ids >= suppress_from) & (ids != eos_id))
    if not do_sample:
        return draw(scores, False)
    scores = top_k(temperature(scores, temp), k)
    return draw(scores, True, noise=exponential_noise(seeds, counter, scores.shape[-1]))


@jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


# H100, bench/kernel_probe.py (vocabulary 2048, top-k 50, 2-bit digits): 8 warps 11.1 us, 4 warps 13.6,
# 2 warps 32.8; 4-bit digits 14.5 us at best, 8-bit ones 244 us.
SAMPLE_WARPS = 8


@jit
def _kth_largest(x, k, RADIX_BITS: tl.constexpr):
    """The k-th largest value of float32 `x` (ties counted, as torch.topk's last value), found digit by digit
    on order-preserving integer keys: 32 / RADIX_BITS counting passes instead of a sort of the vocabulary."""
    bits = x.to(tl.int32, bitcast=True).to(tl.int64)
    # floats as integers sort like the floats for positives and backwards for negatives: flip those, then
    # shift so that every key is a non-negative integer below 2**32 in the floats' order
    keys = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + 0x80000000
    digits = tl.arange(0, 1 << RADIX_BITS).to(tl.int64)
    prefix = tl.zeros([], dtype=tl.int64)
    for shift in tl.static_range(32 - RADIX_BITS, -1, -RADIX_BITS):
        # the largest digit whose candidate still has k keys at or above it (digit 0 always does)
        counts = tl.sum((keys[None, :] >= (prefix | (digits << shift))[:, None]).to(tl.int32), axis=1)
        prefix = prefix | (tl.max(tl.where(counts >= k, digits, 0), axis=0) << shift)
    return tl.max(tl.where(keys == prefix, x, float("-inf")), axis=0)


@jit
def _sample_codes_kernel(
    logits_ptr, seeds_ptr, counter_ptr, seen_ptr, generated_ptr, min_new_ptr, out_ptr, table_ptr, embed_ptr,
    vocab, temp, penalty, eos_id, suppress_from, counter_scale, counter_offset, width,
    TALKER: tl.constexpr, DO_SAMPLE: tl.constexpr, TOP_K: tl.constexpr, BLOCK_V: tl.constexpr,
    RADIX_BITS: tl.constexpr, EMBED: tl.constexpr, BLOCK_E: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    ids = tl.arange(0, BLOCK_V)
    in_vocab = ids < vocab
    x = tl.load(logits_ptr + row * vocab + ids, mask=in_vocab, other=float("-inf")).to(tl.float32)
    if TALKER:
        seen = tl.load(seen_ptr + row * vocab + ids, mask=in_vocab, other=0) != 0
        x = tl.where(seen, tl.where(x < 0, x * penalty, x / penalty), x)
        generated = tl.load(generated_ptr)
        x = tl.where((ids == eos_id) & (generated < tl.load(min_new_ptr)), float("-inf"), x)
        x = tl.where((ids >= suppress_from) & (ids != eos_id), float("-inf"), x)
    if DO_SAMPLE:
        x = x / temp
        if TOP_K > 0:
            x = tl.where(x < _kth_largest(x, TOP_K, RADIX_BITS), float("-inf"), x)
        p = tl.exp(x - tl.max(x, axis=0))
        p = p / tl.sum(p, axis=0)
        # the noise of exponential_noise, bit for bit: 32-bit hashes kept in int64
        counter = tl.load(counter_ptr).to(tl.int64) * counter_scale + counter_offset
        stream = _mix32((tl.load(seeds_ptr + row).to(tl.int64) & 0xFFFFFFFF) ^ 0x9E3779B9)
        stream = _mix32((stream + (counter & 0xFFFFFFFF)) & 0xFFFFFFFF)
        bits = _mix32((stream ^ _mix32(ids.to(tl.int64))) & 0xFFFFFFFF)
        uniform = ((bits >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
        x = tl.where(in_vocab, p / -tl.log(uniform), -1.0)
    code = tl.argmax(x, axis=0).to(tl.int64)
    tl.store(out_ptr + row, code)
    if EMBED:  # the code's row of the embedding table, the next step's input
        for start in range(0, width, BLOCK_E):
            cols = start + tl.arange(0, BLOCK_E)
            tl.store(embed_ptr + row * width + cols, tl.load(table_ptr + code * width + cols, mask=cols < width),
                     mask=cols < width)


def sample_codes_triton(
    logits: torch.Tensor, seeds: torch.Tensor, counter: torch.Tensor, *, do_sample: bool, temp: float,
    k: int, seen: torch.Tensor | None = None, generated: torch.Tensor | None = None, penalty: float = 1.0,
    eos_id: int = -1, min_new_tokens: int | torch.Tensor = 0, suppress_from: int | None = None,
    counter_scale: int = 1, counter_offset: int = 0, embedding: torch.Tensor | None = None,
    pdl: bool = False, radix_bits: int = 2, num_warps: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """As the reference, with the counter given as `counter * counter_scale + counter_offset` so a frame
    can key all 16 draws off its one frame counter without extra launches. With `embedding` (a table
    [vocab, H]) also returns the drawn codes' rows [B, H], saving the lookup's launch.

    `pdl`: see `qtts.kernels.wait_for_previous`; `radix_bits` (1, 2 or 4): digit width of the top-k
    search; `num_warps`: warps per row (8 measured fastest, see SAMPLE_WARPS)."""
    if radix_bits not in (1, 2, 4):
        raise InputError(f"radix_bits must be 1, 2 or 4, got {radix_bits}")
    batch, vocab = logits.shape
    talker = seen is not None
    out = torch.empty(batch, device=logits.device, dtype=torch.int64)
    embedded = None if embedding is None else embedding.new_empty(batch, embedding.shape[1])
    if talker and not isinstance(min_new_tokens, torch.Tensor):  # a fill kernel: capturable, no host copy
        min_new_tokens = torch.full((), min_new_tokens, device=logits.device, dtype=torch.int64)
    block = next_power_of_2(vocab)
    _sample_codes_kernel[(batch,)](
        logits.contiguous(), seeds, counter, seen if talker else logits,
        generated if talker else counter, min_new_tokens if talker else counter, out,
        embedding if embedding is not None else logits, embedded if embedded is not None else logits,
        vocab, float(temp), float(penalty), eos_id,
        vocab if suppress_from is None else suppress_from, counter_scale, counter_offset,
        0 if embedding is None else embedding.shape[1],
        TALKER=talker, DO_SAMPLE=do_sample, TOP_K=min(k, vocab) if do_sample else 0, BLOCK_V=block,
        RADIX_BITS=radix_bits, EMBED=embedding is not None, BLOCK_E=1024, PDL=pdl,
        num_warps=num_warps or SAMPLE_WARPS, **pdl_launch(pdl),
    )
    return out if embedded is None else (out, embedded)
