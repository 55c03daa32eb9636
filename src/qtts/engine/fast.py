"""The fast generation loop: the reference prefill, then frames replayed from one CUDA graph (or run
eagerly where there is no GPU), with EOS flags read without stalling the device.

Produces the same codes as `engine.reference.generate_codes_batch` (same bookkeeping: at most
max_new_tokens - 1 frames, each row cut before its first EOS); frames run a little past the last EOS
because the flags are read a frame or more late, and those frames are dropped.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..models.talker import Talker
from ..prompt import PromptPlan, pad_batch
from ..sampling import SamplingParams
from .frame import Frame
from .graphs import FrameGraph
from .reference import DecodeState, prefill

__all__ = ["EosWatch", "Frame", "FrameGraph", "generate_codes_batch"]


class EosWatch:
    """Finished flags copied to pinned host memory after each frame, read once the copy has landed."""

    def __init__(self, frame: Frame):
        self.frame = frame
        pinned = frame.finished.is_cuda
        self.host = torch.zeros(frame.batch, dtype=torch.bool, pin_memory=pinned)
        self.landed = torch.cuda.Event() if pinned else None

    def after_frame(self) -> None:
        if self.landed is None:
            self.host.copy_(self.frame.finished)
            return
        if self.landed.query():  # the last copy is done: start the next one (never waits on the device)
            self.host.copy_(self.frame.finished, non_blocking=True)
            self.landed.record()

    def all_finished(self) -> bool:
        return bool(self.host.all())


@torch.no_grad()
def generate_codes_batch(talker: Talker, plans: list[PromptPlan], params: SamplingParams, *,
                         max_new_tokens: int | None = None, graphs: bool | None = None,
                         fused: bool | None = None, fuse_weights: bool | None = None,
                         seeds: list[int] | None = None) -> list[torch.Tensor]:
    """Codes [frames, 16] per plan. `graphs` (default: on CUDA) replays each frame from one CUDA graph;
    `fused` and `fuse_weights` are `Frame`'s; `seeds` (default: params.seed or 0) key each row's draws."""
    if not plans:
        raise InputError("no prompts to generate from")
    limit = params.max_new_tokens if max_new_tokens is None else max_new_tokens
    if not isinstance(limit, int) or limit < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {limit!r}")
    embeds, valid, trailing = pad_batch(plans)
    batch, prompt_len, _ = embeds.shape
    device = embeds.device
    graphs = device.type == "cuda" if graphs is None else graphs
    max_frames = max(limit - 1, 1)
    frame = Frame(talker, batch, prompt_len + limit, max_frames, trailing.shape[1], params, fused, fuse_weights)
    run = FrameGraph(frame) if graphs else frame.step

    state = DecodeState(valid, prompt_len + limit, talker.config.vocab_size)
    hidden, logits = prefill(talker, embeds, state)
    if seeds is None:
        seeds = [params.seed or 0] * batch
    frame.start(hidden, logits, valid, trailing, plans[-1].tts_pad, torch.tensor(seeds, device=device))
    eos = EosWatch(frame)
    done = 0
    while done < limit - 1 and not eos.all_finished():
        run()
        eos.after_frame()
        done += 1

    codes = frame.codes[:, :done]
    if done == 0:  # a one-token limit: the only code 0 never gets its residual codes
        return [codes[row].clone() for row in range(batch)]
    is_eos = codes[..., 0] == talker.config.codec_eos_token_id
    lengths = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), codes.shape[1]).tolist()
    return [codes[row, :n].clone() for row, n in enumerate(lengths)]
