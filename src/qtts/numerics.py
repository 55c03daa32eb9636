"""Teacher-forced logit comparison across precisions: how far a bf16 talker's logits drift from fp32.

Every engine is run over the same prompt plan and the same fixed frames (feedback = those frames, not its own
samples), so two precisions see identical inputs at every step and their logits can be compared row by row:
code 0 from the talker after the prompt and after each frame's feedback, codes 1..15 from the code predictor
fed the fixed codes. Each engine keeps its own step pattern (one prefill, then one token per step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from .config import TalkerConfig
from . import kernels
from .engine.frame import Frame, LayerOps, prefill as fast_prefill
from .engine.rows import RowStore
from .engine.reference import DecodeState, generate_codes, predict_codes, prefill, talker_step
from .errors import InputError
from .models.talker import Talker
from .prompt import PromptPlan, pad_batch
from .sampling import SamplingParams

GREEDY = SamplingParams(do_sample=False, subtalker_dosample=False)


@dataclass(frozen=True)
class TeacherForced:
    """Float32 logits of one teacher-forced run over N frames."""

    code0: torch.Tensor  # [N, talker vocab]: logits that choose frame k's code 0
    codes: torch.Tensor  # [N, 15, predictor vocab]: logits that choose frame k's codes 1..15


@dataclass(frozen=True)
class Agreement:
    """How a candidate's logits agree with a reference's over the same rows."""

    top1: float  # fraction of rows whose argmax is the same
    max_rel_diff: float  # max |candidate - reference| / std of the reference row
    mean_rel_diff: float  # the same, averaged over every logit
    kl: float  # mean KL(softmax(reference) || softmax(candidate)) at temperature 1, in nats
    rows: int

    def as_dict(self) -> dict:
        return asdict(self)


class ForcedSampler:
    """Stands in for a sampler: returns the fixed codes of each call in turn and keeps the logits it was shown.

    Takes the place of the talker's or the predictor's sampler, so the engine's own code runs unchanged."""

    def __init__(self, codes: torch.Tensor):
        self.codes = codes  # [calls, batch]
        self.seen: list[torch.Tensor] = []

    def __call__(self, logits: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        code = self.codes[len(self.seen)]
        self.seen.append(logits.float().clone())  # a copy: the fast frame rewrites its logits buffer in place
        return code

    def logits(self) -> torch.Tensor:
        return torch.cat(self.seen)


def fixed_frames(talker: Talker, plan: PromptPlan, frames: int) -> torch.Tensor:
    """Greedy codes [frames, 16] of the reference loop with EOS masked throughout (the sequence to force)."""
    params = SamplingParams(do_sample=False, subtalker_dosample=False, min_new_tokens=frames + 1,
                            max_new_tokens=frames + 1)
    return generate_codes(talker, plan, params)


def cast_plan(plan: PromptPlan, device, dtype: torch.dtype) -> PromptPlan:
    """The same plan in another precision: every engine then reads the same rounded prompt."""
    return replace(plan, prefill=plan.prefill.to(device, dtype), trailing=plan.trailing.to(device, dtype),
                   tts_pad=plan.tts_pad.to(device, dtype))


def _check_frames(frames: torch.Tensor, groups: int) -> None:
    if frames.dim() != 2 or frames.shape[1] != groups or frames.shape[0] < 1:
        raise InputError(f"frames must have shape [N >= 1, {groups}], got {list(frames.shape)}")


def _text_vector(plan: PromptPlan, frame: int) -> torch.Tensor:
    """The text-track vector added to frame `frame`'s feedback (spec 5.4)."""
    return plan.trailing[frame] if frame < plan.trailing.shape[0] else plan.tts_pad


def _forcers(frames: torch.Tensor) -> tuple[ForcedSampler, ForcedSampler]:
    """Samplers for code 0 (one call per frame) and codes 1..15 (15 calls per frame, in order), batch 1."""
    return ForcedSampler(frames[:, :1]), ForcedSampler(frames[:, 1:].reshape(-1, 1))


def _result(code0: ForcedSampler, codes: ForcedSampler, frames: int) -> TeacherForced:
    return TeacherForced(code0.logits(), codes.logits().view(frames, -1, codes.seen[0].shape[-1]))


@torch.no_grad()
def teacher_forced_reference(talker: Talker, plan: PromptPlan, frames: torch.Tensor) -> TeacherForced:
    """Logits of qtts's reference loop (prefill, `predict_codes`, `talker_step`) in the talker's dtype."""
    weight = talker.codec_head.weight
    _check_frames(frames, talker.config.num_code_groups)
    plan, frames = cast_plan(plan, weight.device, weight.dtype), frames.to(weight.device)
    count = frames.shape[0]
    embeds, valid, _ = pad_batch([plan])
    max_len = embeds.shape[1] + count
    talker.setup_caches(1, max_len, weight.device, weight.dtype)
    state = DecodeState(valid, max_len, talker.config.vocab_size)
    code0, codes = _forcers(frames)
    hidden, logits = prefill(talker, embeds, state)
    for k in range(count):
        frame = predict_codes(talker, hidden, code0(logits), lambda group, logits: codes(logits))
        if k + 1 < count:
            hidden, logits = talker_step(talker, talker.embed_frame(frame) + _text_vector(plan, k), k, state)
    return _result(code0, codes, count)


@torch.no_grad()
def teacher_forced_fast(talker: Talker, plan: PromptPlan, frames: torch.Tensor,
                        fused: bool | None = None) -> TeacherForced:
    """Logits of the engine's `Frame.step` and prefill (fused kernels where Triton runs, unless `fused`
    says otherwise), run eagerly with its samplers replaced by forcing ones."""
    weight = talker.codec_head.weight
    _check_frames(frames, talker.config.num_code_groups)
    plan, frames = cast_plan(plan, weight.device, weight.dtype), frames.to(weight.device)
    count = frames.shape[0]
    embeds, valid, trailing = pad_batch([plan])
    max_len = embeds.shape[1] + count + 1  # the last step also writes the next frame's talker position
    ops = LayerOps(kernels.enabled(weight.device) if fused is None else fused)
    store = RowStore(talker, 1, 1, max_len, trailing.shape[1])
    fast_prefill(talker, ops, store, store.staging_rows(1), embeds, valid)
    store.load(store.staging_rows(1), embeds.shape[1], [0], [plan.trailing], plan.tts_pad, [0], [GREEDY], [False])
    store.move(slice(0, 1), store.staging_rows(1), filled=embeds.shape[1])
    frame = Frame(talker, ops, store, 1)
    code0, codes = _forcers(frames)
    predictor = talker.code_predictor

    def forced_code(group, logits):
        code = codes(logits)
        return code if group + 1 == frame.groups else (code, predictor.embed_code(group, code))

    # Sampling goes through the forcers (the fused sampler would hide the logits); the math stays fused.
    frame.sample_code0 = lambda: code0(frame.logits)
    frame.sample_code = forced_code
    for _ in range(count):
        frame.step()
    return _result(code0, codes, count)


@torch.no_grad()
def teacher_forced_official(talker, plan: PromptPlan, frames: torch.Tensor) -> TeacherForced:
    """Logits of an official `Qwen3TTSTalkerForConditionalGeneration` (passed in; the package is not imported
    here) with its official generate's step pattern: prompt in one pass with a cache, then per frame the
    predictor's 2-position prefill and 14 single steps, the summed feedback and one talker step."""
    weight = talker.codec_head.weight
    groups = talker.config.num_code_groups
    _check_frames(frames, groups)
    plan, frames = cast_plan(plan, weight.device, weight.dtype), frames.to(weight.device)
    count, prompt_len = frames.shape[0], plan.prefill.shape[0]
    predictor = talker.code_predictor
    code_tables = predictor.get_input_embeddings()
    ones = torch.ones(1, prompt_len + count, dtype=torch.long, device=weight.device)
    positions = torch.arange(prompt_len + count, device=weight.device)[None]

    out = talker.model(inputs_embeds=plan.prefill[None], attention_mask=ones[:, :prompt_len],
                       position_ids=positions[:, :prompt_len], use_cache=True)
    cache, hidden = out.past_key_values, out.last_hidden_state[:, -1:]
    code0_logits, code_logits = [], []
    for k in range(count):
        codes = frames[k: k + 1]
        code0_logits.append(talker.codec_head(hidden[:, -1]).float())
        code0_embed = talker.get_input_embeddings()(codes[:, :1])
        step = predictor(inputs_embeds=torch.cat([hidden, code0_embed], dim=1), use_cache=True)
        code_logits.append(step.logits[:, -1].float())
        for group in range(1, groups - 1):
            step = predictor(input_ids=codes[:, group: group + 1], past_key_values=step.past_key_values,
                             generation_steps=group, use_cache=True)
            code_logits.append(step.logits[:, -1].float())
        if k + 1 < count:
            parts = [code0_embed] + [code_tables[g - 1](codes[:, g: g + 1]) for g in range(1, groups)]
            feedback = torch.cat(parts, dim=1).sum(1, keepdim=True) + _text_vector(plan, k)
            at = prompt_len + k
            out = talker.model(inputs_embeds=feedback, attention_mask=ones[:, : at + 1],
                               position_ids=positions[:, at: at + 1], past_key_values=cache, use_cache=True)
            cache, hidden = out.past_key_values, out.last_hidden_state
    return TeacherForced(torch.cat(code0_logits), torch.stack(code_logits).view(count, groups - 1, -1))


def agreement(reference: torch.Tensor, candidate: torch.Tensor, allowed: torch.Tensor | None = None) -> Agreement:
    """Compare logits [..., vocab] row by row, over the ids where the bool mask `allowed` [vocab] is True."""
    if reference.shape != candidate.shape:
        raise InputError(f"logits to compare differ in shape: {list(reference.shape)} vs {list(candidate.shape)}")
    ref = reference.detach().double().cpu().flatten(0, -2)
    cand = candidate.detach().double().cpu().flatten(0, -2)
    if allowed is not None:
        ref, cand = ref[:, allowed.cpu()], cand[:, allowed.cpu()]
    rel = (cand - ref).abs() / ref.std(-1, keepdim=True)
    log_p, log_q = ref.log_softmax(-1), cand.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return Agreement(
        top1=float((ref.argmax(-1) == cand.argmax(-1)).double().mean()),
        max_rel_diff=float(rel.max()), mean_rel_diff=float(rel.mean()), kl=float(kl.mean()), rows=ref.shape[0],
    )


def sampleable_code0(config: TalkerConfig) -> torch.Tensor:
    """Bool mask [vocab] of the ids code 0 can take (codebook-0 codes and EOS): control ids are suppressed
    before sampling, so their logits never matter."""
    ids = torch.arange(config.vocab_size)
    return (ids < config.vocab_size - 1024) | (ids == config.codec_eos_token_id)


def compare(reference: TeacherForced, candidate: TeacherForced, config: TalkerConfig) -> dict[str, Agreement]:
    """Agreement of code 0 (over sampleable ids) and of codes 1..15 between two teacher-forced runs."""
    return {
        "code0": agreement(reference.code0, candidate.code0, sampleable_code0(config)),
        "codes1_15": agreement(reference.codes, candidate.codes),
    }


def max_abs_diff(a: TeacherForced, b: TeacherForced) -> float:
    """Largest absolute logit difference between two runs (code 0 and codes 1..15)."""
    return max(float((a.code0 - b.code0).abs().max()), float((a.codes - b.codes).abs().max()))

