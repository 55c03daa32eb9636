"""Sampling: the official logits processing of the talker and the code predictor, and sync-free draws.

Order (transformers 4.57.3, as the official `generate` configures it, spec 4): repetition penalty over the
code-0 tokens generated so far, EOS masked until `min_new_tokens`, ids 2048..3071 suppressed except EOS;
then, when sampling, temperature -> top-k -> top-p. The predictor has only temperature -> top-k -> top-p.
Every function is tensor-in, tensor-out with no host sync or branching on tensor values, so a captured
CUDA graph can run it; the draw uses the exponential trick (argmax of p / Exp(1) is a draw from p).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, fields, replace

import torch

from .config import GenerationConfig
from .errors import InputError


# Seeds, top-k and min_new_tokens live in the rows' int64 tensors (and seeds in generators): non-negative
# int64 values hold them without wrapping around.
INT64_END = 2**63


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
            if not _is_int(top_k) or not 0 <= top_k < INT64_END:
                raise InputError(f"{prefix}top_k must be an integer in [0, 2**63) (0 disables it), got {top_k!r}")
            if not _is_number(top_p) or not 0 < top_p <= 1:
                raise InputError(f"{prefix}top_p must be in (0, 1], got {top_p!r}")
        penalty = self.repetition_penalty
        if not _is_number(penalty) or not penalty > 0 or not math.isfinite(penalty):
            raise InputError(f"repetition_penalty must be a positive number, got {penalty!r}")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not _is_int(self.min_new_tokens) or not 0 <= self.min_new_tokens < INT64_END:
            raise InputError(f"min_new_tokens must be an integer in [0, 2**63), got {self.min_new_tokens!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < INT64_END):
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


def request_seeds(params: SamplingParams, count: int) -> list[int]:
    """The seed of each of `count` rows of one request: its own seed, or fresh random ones (unseeded rows
    must differ)."""
    if params.seed is not None:
        return [params.seed] * count
    return [secrets.randbits(62) for _ in range(count)]


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


def temperature(scores: torch.Tensor, value: float | torch.Tensor) -> torch.Tensor:
    """`value`: one temperature, or one per row [B]."""
    return scores / (value[:, None] if isinstance(value, torch.Tensor) else value)


def top_k(scores: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Keep the k best scores (ties with the k-th kept); k = 0 keeps all. `k`: one, or one per row [B]."""
    vocab = scores.shape[-1]
    if isinstance(k, torch.Tensor):
        kth = scores.sort(dim=-1, descending=True).values.gather(-1, (k.clamp(1, vocab) - 1)[:, None])
        return scores.masked_fill((k[:, None] > 0) & (scores < kth), -math.inf)
    if k == 0:
        return scores
    kth = torch.topk(scores, min(k, vocab), dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, -math.inf)


def top_p(scores: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of best tokens whose probability reaches p (at least one); p = 1 keeps all.
    `p`: one, or one per row [B]."""
    per_row = isinstance(p, torch.Tensor)
    if not per_row and p >= 1.0:
        return scores
    ascending, order = torch.sort(scores, dim=-1, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - (p[:, None] if per_row else p))
    if per_row:
        drop &= p[:, None] < 1.0
    drop[..., -1:] = False
    return scores.masked_fill(drop.scatter(-1, order, drop), -math.inf)


def draw(scores: torch.Tensor, do_sample: bool, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Token ids [batch]: argmax when not sampling, else a draw from softmax(scores) by the exponential trick
    with `noise`, Exp(1) samples shaped like `scores` (`kernels.sample.exponential_noise`: a pure function
    of the request's seed and the draw, the same on every engine)."""
    if not do_sample:
        return scores.argmax(dim=-1)
    return (scores.softmax(dim=-1) / noise).argmax(dim=-1)


# -- every row its own settings ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DrawSettings:
    """One sampler's settings for every row of a batch, as device tensors [rows], so that requests with
    different settings share one frame (and one captured graph): the talker's (`do_sample`, ...) or the
    code predictor's (`subtalker_*`)."""

    do_sample: torch.Tensor  # bool
    temperature: torch.Tensor  # float32
    top_k: torch.Tensor  # int64, 0 = off
    top_p: torch.Tensor  # float32, 1 = off

    def rows(self, count: int) -> "DrawSettings":
        return DrawSettings(*(t[:count] for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.do_sample, self.temperature, self.top_k, self.top_p


@dataclass(frozen=True)
class RowSampling:
    """Every row's sampling settings: the talker's and the predictor's draws, the repetition penalty and
    min_new_tokens. Rows are loaded one request at a time (`load`) and moved when the batch is packed."""

    talker: DrawSettings
    predictor: DrawSettings
    repetition_penalty: torch.Tensor  # float32
    min_new_tokens: torch.Tensor  # int64

    @classmethod
    def allocate(cls, rows: int, device) -> "RowSampling":
        def draw_settings():
            return DrawSettings(torch.zeros(rows, dtype=torch.bool, device=device),
                                torch.ones(rows, device=device), torch.zeros(rows, dtype=torch.int64, device=device),
                                torch.ones(rows, device=device))

        return cls(draw_settings(), draw_settings(), torch.ones(rows, device=device),
                   torch.zeros(rows, dtype=torch.int64, device=device))

    @classmethod
    def of(cls, params: SamplingParams, rows: int, device) -> "RowSampling":
        """`rows` rows, all with `params`."""
        sampling = cls.allocate(rows, device)
        sampling.load(slice(None), params)
        return sampling

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (*self.talker.tensors(), *self.predictor.tensors(), self.repetition_penalty, self.min_new_tokens)

    def rows(self, count: int) -> "RowSampling":
        return RowSampling(self.talker.rows(count), self.predictor.rows(count), self.repetition_penalty[:count],
                           self.min_new_tokens[:count])

    @staticmethod
    def values(params: SamplingParams) -> tuple:
        """`params` as one value per tensor of `tensors()`, in that order."""
        return (params.do_sample, params.temperature, params.top_k, params.top_p, params.subtalker_dosample,
                params.subtalker_temperature, params.subtalker_top_k, params.subtalker_top_p,
                params.repetition_penalty, params.min_new_tokens)

    def load(self, row: int | slice, params: SamplingParams) -> None:
        """Write `params` into `row` (fills on the device: no host synchronisation)."""
        for tensor, value in zip(self.tensors(), self.values(params)):
            # fill_, not `tensor[row] = value`: that copies a host scalar in, which waits for the stream
            tensor[row].fill_(value)


def warp(scores: torch.Tensor, settings: DrawSettings) -> torch.Tensor:
    return top_p(top_k(temperature(scores, settings.temperature), settings.top_k), settings.top_p)


def draw_rows(scores: torch.Tensor, do_sample: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Ids [B]: a draw by the exponential trick where `do_sample` [B], the argmax elsewhere."""
    return torch.where(do_sample, draw(scores, True, noise), draw(scores, False))
