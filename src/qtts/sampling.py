"""Sampling: the official logits processing of the talker and the code predictor, and sync-free draws.

Order (transformers 4.57.3, as the official `generate` configures it, spec 4): repetition penalty over the
code-0 tokens generated so far, EOS masked until `min_new_tokens`, ids 2048..3071 suppressed except EOS;
then, when sampling, temperature -> top-k -> top-p. The predictor has only temperature -> top-k -> top-p.
Every function is tensor-in, tensor-out with no host sync or branching on tensor values, so a captured
CUDA graph can run it; the draw uses the exponential trick (argmax of p / Exp(1) is a draw from p).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

from .config import GenerationConfig, TalkerConfig
from .errors import InputError


# Seeds are non-negative int64: what a generator and a per-row seed tensor hold without wrapping around.
MAX_SEED = 2**63


@dataclass(frozen=True)
class SamplingParams(GenerationConfig):
    """Per-request sampling: the `generation_config.json` settings (same names and defaults), validated,
    plus `min_new_tokens` and `seed`."""

    # The official talker hard-codes 2; benchmarks raise it to force a fixed length (EOS masked until then).
    min_new_tokens: int = 2
    seed: int | None = None

    def __post_init__(self):
        for name in ("do_sample", "subtalker_dosample"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for prefix in ("", "subtalker_"):
            temperature = getattr(self, prefix + "temperature")
            top_k = getattr(self, prefix + "top_k")
            top_p = getattr(self, prefix + "top_p")
            if not _is_number(temperature) or not temperature > 0 or not math.isfinite(temperature):
                raise InputError(f"{prefix}temperature must be a positive number, got {temperature!r}")
            if not _is_int(top_k) or top_k < 0:
                raise InputError(f"{prefix}top_k must be an integer >= 0 (0 disables it), got {top_k!r}")
            if not _is_number(top_p) or not 0 < top_p <= 1:
                raise InputError(f"{prefix}top_p must be in (0, 1], got {top_p!r}")
        if not _is_number(self.repetition_penalty) or not self.repetition_penalty > 0:
            raise InputError(f"repetition_penalty must be a positive number, got {self.repetition_penalty!r}")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not _is_int(self.min_new_tokens) or self.min_new_tokens < 0:
            raise InputError(f"min_new_tokens must be an integer >= 0, got {self.min_new_tokens!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < MAX_SEED):
            raise InputError(f"seed must be an integer in [0, 2**63) or None, got {self.seed!r}")

    @classmethod
    def from_generation_config(cls, config: GenerationConfig, **overrides) -> "SamplingParams":
        """Checkpoint defaults (`generation_config.json`) with explicit arguments on top, as the wrapper does."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InputError(f"unknown sampling option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        base = {f.name: getattr(config, f.name) for f in fields(config)}
        return replace(cls(**base), **{k: v for k, v in overrides.items() if v is not None})

    def generator(self, device=None) -> torch.Generator | None:
        """A generator seeded with `seed`, or None (use the global RNG) when no seed is given."""
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- processors: scores [batch, vocab] -> scores ---------------------------------------------------------
def repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive / multiply negative scores of tokens already generated (`seen` [batch, vocab])."""
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def mask_eos_before(scores: torch.Tensor, eos_id: int, generated: torch.Tensor,
                    min_new_tokens: int | torch.Tensor) -> torch.Tensor:
    """Forbid EOS while fewer than `min_new_tokens` tokens were generated (`generated` is a 0-d tensor)."""
    is_eos = torch.arange(scores.shape[-1], device=scores.device) == eos_id
    return torch.where(is_eos & (generated < min_new_tokens), -math.inf, scores)


def suppress(scores: torch.Tensor, suppressed: torch.Tensor) -> torch.Tensor:
    """Forbid the ids where the bool mask `suppressed` [vocab] is True."""
    return torch.where(suppressed, -math.inf, scores)


def temperature(scores: torch.Tensor, value: float) -> torch.Tensor:
    return scores / value


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k best scores (ties with the k-th kept); k = 0 keeps all."""
    if k == 0:
        return scores
    k = min(k, scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, -math.inf)


def top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of best tokens whose probability reaches p (at least one); p = 1 keeps all."""
    if p >= 1.0:
        return scores
    ascending, order = torch.sort(scores, dim=-1, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - p)
    drop[..., -1:] = False
    return scores.masked_fill(drop.scatter(-1, order, drop), -math.inf)


def draw(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None,
         noise: torch.Tensor | None = None) -> torch.Tensor:
    """Token ids [batch]: argmax when not sampling, else a draw from softmax(scores) by the exponential trick.

    `noise` (Exp(1) samples shaped like `scores`) may be supplied by a caller that owns its random stream,
    e.g. a captured graph; otherwise it is drawn from `generator`."""
    if not do_sample:
        return scores.argmax(dim=-1)
    probs = scores.softmax(dim=-1)
    if noise is None:
        noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1)


# -- the two samplers ------------------------------------------------------------------------------------
class TalkerSampler:
    """Code-0 sampling for the talker: penalty, min-new-tokens, suppression, then warpers and the draw."""

    def __init__(self, config: TalkerConfig, params: SamplingParams, device=None):
        self.params = params
        self.eos_id = config.codec_eos_token_id
        ids = torch.arange(config.vocab_size, device=device)
        # Only codebook-0 codes and EOS may be emitted: control/speaker/language ids are suppressed.
        self.suppress_from = config.vocab_size - 1024
        self.suppressed = (ids >= self.suppress_from) & (ids != self.eos_id)

    def process(self, logits: torch.Tensor, seen: torch.Tensor, generated: torch.Tensor,
                min_new_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """logits [batch, vocab]; `seen` [batch, vocab] bool of generated code-0 tokens; `generated` 0-d count;
        `min_new_tokens` (0-d tensor) overrides the params' value, so a captured graph can take it per request."""
        p = self.params
        scores = logits.float()
        if p.repetition_penalty != 1.0:
            scores = repetition_penalty(scores, seen, p.repetition_penalty)
        limit = p.min_new_tokens if min_new_tokens is None else min_new_tokens
        scores = mask_eos_before(scores, self.eos_id, generated, limit)
        scores = suppress(scores, self.suppressed)
        if p.do_sample:
            scores = top_p(top_k(temperature(scores, p.temperature), p.top_k), p.top_p)
        return scores

    def __call__(self, logits, seen, generated, generator=None, noise=None, min_new_tokens=None) -> torch.Tensor:
        return draw(self.process(logits, seen, generated, min_new_tokens), self.params.do_sample, generator, noise)


class PredictorSampler:
    """Codes 1..15: temperature -> top-k -> top-p and the draw, with the `subtalker_*` settings."""

    def __init__(self, params: SamplingParams):
        self.params = params

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        scores = logits.float()
        if p.subtalker_dosample:
            scores = top_p(top_k(temperature(scores, p.subtalker_temperature), p.subtalker_top_k), p.subtalker_top_p)
        return scores

    def __call__(self, logits, generator=None, noise=None) -> torch.Tensor:
        return draw(self.process(logits), self.params.subtalker_dosample, generator, noise)
