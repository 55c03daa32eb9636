"""One frame of speech as a static, sync-free step over preallocated buffers: the fast path's unit of work
and of CUDA-graph capture.

A frame samples code 0 from the talker's last logits, runs the 15 code-predictor steps with their sampling,
feeds back the sum of the 16 code embeddings plus the next text-track vector, and runs one talker step,
which leaves the next frame's logits. It reads the weights of the `Talker` module it is given (no copies)
and works on that module's static KV caches. Nothing in `step` reads a tensor value on the host, branches on
one, or changes a shape, so the same code runs eagerly on CPU (CI) and replays as one CUDA graph.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .. import kernels
from ..errors import InputError
from ..kernels.decode_attention import decode_attention_reference, decode_attention_triton
from ..kernels.linear import fused_linear_reference, fused_linear_triton
from ..kernels.qk_norm_rope import qk_norm_rope_cache_reference, qk_norm_rope_cache_triton
from ..kernels.rms_norm import add_rms_norm_reference, add_rms_norm_triton
from ..kernels.sample import exponential_noise, sample_codes_triton
from ..kernels.swiglu import silu_mul_reference, silu_mul_triton
from ..models.layers import DecoderStack
from ..models.talker import Talker
from ..prompt import prompt_positions
from ..sampling import PredictorSampler, SamplingParams, TalkerSampler
from .fused_weights import fuse_projections


class LayerOps:
    """The fused kernels (Triton) or their PyTorch references: the frame's math is the same either way.

    `projections` ({layer: (qkv, gate_up)} from `fuse_projections`) turns 5 matrix products into 2. Each
    product carries its neighbour: the pre-norm in front of q/k/v and gate/up, the SwiGLU gate behind
    gate/up, the residual add behind o and down (`kernels/linear.py`). `pdl` launches the layer kernels as
    programmatic dependents of the kernel before them (Hopper and later, see `kernels.wait_for_previous`)."""

    def __init__(self, fused: bool, projections: dict | None = None, pdl: bool = False):
        self.fused, self.pdl = fused, pdl
        self.projections = projections or {}

        def kernel(fn):
            return functools.partial(fn, pdl=True) if pdl else fn

        self.linear = kernel(fused_linear_triton) if fused else fused_linear_reference
        self.add_rms_norm = add_rms_norm_triton if fused else add_rms_norm_reference
        self.qk_norm_rope_cache = kernel(qk_norm_rope_cache_triton) if fused else qk_norm_rope_cache_reference
        self.decode_attention = kernel(decode_attention_triton) if fused else decode_attention_reference
        self.silu_mul = silu_mul_triton if fused else silu_mul_reference

    def qkv(self, layer, x: torch.Tensor):
        """q, k, v of the residual stream x, its pre-norm included."""
        attn, norm = layer.self_attn, layer.input_layernorm
        if layer in self.projections:
            kv_width = attn.num_kv_heads * attn.head_dim
            sizes = (attn.num_heads * attn.head_dim, kv_width, kv_width)
            qkv = self.linear(x, self.projections[layer][0], norm_weight=norm.weight, eps=norm.eps)
            q, k, v = qkv.split(sizes, dim=-1)
        else:
            q, k, v = (self.linear(x, p.weight, norm_weight=norm.weight, eps=norm.eps)
                       for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        return (t.unflatten(-1, (-1, attn.head_dim)) for t in (q, k, v))

    def mlp(self, layer, x: torch.Tensor) -> torch.Tensor:
        """The residual stream after the MLP block: x + down(silu(gate) * up) of the post-attention norm."""
        mlp, norm = layer.mlp, layer.post_attention_layernorm
        if layer in self.projections:
            gated = self.linear(x, self.projections[layer][1], norm_weight=norm.weight, eps=norm.eps, gated=True)
        else:
            gate, up = (self.linear(x, p.weight, norm_weight=norm.weight, eps=norm.eps)
                        for p in (mlp.gate_proj, mlp.up_proj))
            gated = self.silu_mul(gate, up)
        return self.linear(gated, mlp.down_proj.weight, residual=x)


def run_stack(stack: DecoderStack, ops: LayerOps, x: torch.Tensor, positions: torch.Tensor,
              cache_index: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """The residual stream after every layer of `stack` (final norm not applied: callers fuse it into the
    product that reads it). x [B, S, H] are new tokens at RoPE `positions` and cache rows `cache_index`
    [B, S]; attention sees cache rows `starts` [B] .. `lengths` [B] - 1.

    Each residual add is fused into the product in front of it and rounds to the activation dtype, as the
    official math does after every add."""
    for layer in stack.layers:
        attn = layer.self_attn
        q, k, v = ops.qkv(layer, x)
        cache = attn.kv_cache
        q = ops.qk_norm_rope_cache(q, k, v, attn.q_norm.weight, attn.k_norm.weight, attn.q_norm.eps,
                                   stack.inv_freq, positions, cache.k, cache.v, cache_index)
        attended = ops.decode_attention(q, cache.k, cache.v, lengths, attn.head_dim**-0.5, starts)
        x = ops.linear(attended, attn.o_proj.weight, residual=x)
        x = ops.mlp(layer, x)
    return x


class Frame:
    """Static decode state of one batch bucket and the frame step over it.

    `fused` (default: where Triton runs compiled) picks the Triton kernels; `fuse_weights` (default: the
    same) makes the talker's q/k/v and gate/up weights views of one matrix each, see `fused_weights`;
    `pdl` (default: fused on a GPU that has programmatic dependent launch) lets each layer kernel start
    while the kernel before it finishes, see `kernels.wait_for_previous`.

    Buffers: the talker's last hidden state and logits, each row's next cache row / RoPE position / first
    valid row, the frame counter, the code-0 history table for the repetition penalty, finished flags,
    the text track, per-request seeds and the codes of every frame so far.
    """

    def __init__(self, talker: Talker, batch: int, max_len: int, max_frames: int, max_text: int,
                 params: SamplingParams, fused: bool | None = None, fuse_weights: bool | None = None,
                 projections: dict | None = None, pdl: bool | None = None):
        weight = talker.codec_head.weight
        device, dtype = weight.device, weight.dtype
        config = talker.config
        self.talker, self.params, self.batch = talker, params, batch
        self.max_len, self.max_frames, self.max_text = max_len, max_frames, max_text
        fused = kernels.enabled(device) if fused is None else fused
        # Fusing re-points the talker's q/k/v and gate/up weights into shared matrices (no copies kept).
        # `projections` from an earlier `fuse_projections(talker)` are reused: fusing again would copy every weight.
        if projections is None and (fused if fuse_weights is None else fuse_weights):
            projections = fuse_projections(talker)
        pdl = fused and kernels.pdl_supported(device) if pdl is None else pdl
        self.ops = LayerOps(fused, projections, pdl)
        # The fused sampler has no top-p; with top-p < 1 the frame keeps the PyTorch processors.
        self.fused_sampling = self.ops.fused and params.top_p >= 1.0 and params.subtalker_top_p >= 1.0
        self.groups = config.num_code_groups
        self.eos = config.codec_eos_token_id
        self.talker_sampler = TalkerSampler(config, params, device)
        self.predictor_sampler = PredictorSampler(params)
        talker.setup_caches(batch, max_len, device, dtype)

        def zeros(*shape, dtype=dtype):
            return torch.zeros(*shape, device=device, dtype=dtype)

        hidden = config.hidden_size
        self.hidden = zeros(batch, hidden)
        self.logits = zeros(batch, config.vocab_size)
        self.slot = zeros(batch, 1, dtype=torch.int64)
        self.position = zeros(batch, 1, dtype=torch.int64)
        self.first_row = zeros(batch, dtype=torch.int32)
        self.step_count = zeros((), dtype=torch.int64)
        self.seen = zeros(batch, config.vocab_size, dtype=torch.bool)
        self.finished = zeros(batch, dtype=torch.bool)
        self.text = zeros(batch, max_text + 1, hidden)
        self.seeds = zeros(batch, dtype=torch.int64)
        # EOS stays masked before this many code-0 tokens: a buffer, so requests that differ only in it share
        # the captured graph.
        self.min_new_tokens = torch.full((), params.min_new_tokens, device=device, dtype=torch.int64)
        self.codes = zeros(batch, max_frames, self.groups, dtype=torch.int64)
        # The predictor's positions are the same every frame: [0, 1] for the talker hidden state and code 0,
        # then one position per code fed back.
        first = torch.arange(2, device=device).expand(batch, 2).contiguous()
        self.predictor_positions = [first] + [torch.full((batch, 1), g + 1, device=device)
                                              for g in range(1, self.groups - 1)]
        self.predictor_lengths = [torch.full((batch,), int(p[0, -1]) + 1, device=device, dtype=torch.int32)
                                  for p in self.predictor_positions]
        self.predictor_starts = zeros(batch, dtype=torch.int32)

    def prefill(self, embeds: torch.Tensor, valid: torch.Tensor) -> None:
        """Run a prompt [B, T, H] with validity [B, T] (False = left padding) through the talker with the
        frame's kernels: its keys and values into cache rows 0..T-1, its last hidden state and logits into
        `hidden` and `logits`, ready for `start(None, None, valid, ...)`. Static shapes for a given T, so
        it can be captured as a graph per prompt length."""
        batch, length = valid.shape
        positions = prompt_positions(valid)
        starts = (~valid).sum(-1).to(torch.int32)
        rows = torch.arange(length, device=valid.device).expand(batch, length)
        lengths = torch.full((batch,), length, device=valid.device, dtype=torch.int32)
        stream = run_stack(self.talker.model, self.ops, embeds, positions, rows, lengths, starts)
        self._talker_head(stream[:, -1])

    def _talker_head(self, stream: torch.Tensor) -> None:
        """The talker's final norm of its last residual stream [B, H] into `hidden`, codec logits into `logits`."""
        norm = self.talker.model.norm
        self.hidden.copy_(self.ops.add_rms_norm(stream, norm.weight, norm.eps)[0])
        self.logits.copy_(self.ops.linear(self.hidden, self.talker.codec_head.weight))

    def start(self, hidden: torch.Tensor | None, logits: torch.Tensor | None, valid: torch.Tensor,
              trailing: torch.Tensor, tts_pad: torch.Tensor, seeds: torch.Tensor | None = None,
              min_new_tokens: int | None = None) -> None:
        """Load a prefilled batch: its last hidden state [B, H] and logits [B, V] (None: left in place by
        `prefill`), the prompt's validity [B, T] (False = left padding), trailing text track [B, N, H],
        tts_pad [H], seeds [B] and the request's min_new_tokens (default: the frame's params')."""
        batch, prompt_len = valid.shape
        if batch != self.batch or trailing.shape[1] > self.max_text or prompt_len >= self.max_len:
            raise InputError(f"batch {batch}, prompt {prompt_len}, text track {trailing.shape[1]} do not fit this "
                             f"frame (batch {self.batch}, max_len {self.max_len}, max_text {self.max_text})")
        pad = (~valid).sum(-1)
        if hidden is not None:
            self.hidden.copy_(hidden)
        if logits is not None:
            self.logits.copy_(logits)
        self.slot.fill_(prompt_len)
        self.position.copy_((prompt_len - pad)[:, None])
        self.first_row.copy_(pad)
        self.step_count.zero_()
        self.seen.zero_()
        self.finished.zero_()
        self.text.copy_(tts_pad.expand_as(self.text))
        self.text[:, : trailing.shape[1]] = trailing
        self.seeds.copy_(torch.zeros(batch, dtype=torch.int64) if seeds is None else seeds)
        self.min_new_tokens.fill_(self.params.min_new_tokens if min_new_tokens is None else min_new_tokens)

    def _sample_code0(self) -> torch.Tensor:
        p = self.params
        if self.fused_sampling:
            return sample_codes_triton(
                self.logits, self.seeds, self.step_count, do_sample=p.do_sample, temp=p.temperature, k=p.top_k,
                seen=self.seen, generated=self.step_count, penalty=p.repetition_penalty, eos_id=self.eos,
                min_new_tokens=self.min_new_tokens, suppress_from=self.talker_sampler.suppress_from,
                counter_scale=self.groups, pdl=self.ops.pdl)
        noise = self._noise(0, self.logits.shape[-1]) if p.do_sample else None
        return self.talker_sampler(self.logits, self.seen, self.step_count, noise=noise,
                                   min_new_tokens=self.min_new_tokens)

    def _sample_code(self, group: int, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Code `group` [B] and, where the predictor takes it next, its embedding [B, H] (the fused sampler
        writes it as it draws the code)."""
        p = self.params
        predictor = self.talker.code_predictor
        feeds_back = group + 1 < self.groups
        if self.fused_sampling:
            table = predictor.model.codec_embedding[group - 1].weight if feeds_back else None
            drawn = sample_codes_triton(
                logits, self.seeds, self.step_count, do_sample=p.subtalker_dosample, temp=p.subtalker_temperature,
                k=p.subtalker_top_k, counter_scale=self.groups, counter_offset=group, embedding=table,
                pdl=self.ops.pdl)
            return drawn if feeds_back else (drawn, None)
        noise = self._noise(group, logits.shape[-1]) if p.subtalker_dosample else None
        code = self.predictor_sampler(logits, noise=noise)
        return code, predictor.embed_code(group, code) if feeds_back else None

    def _noise(self, group: int, vocab: int) -> torch.Tensor:
        """Exp(1) noise of draw `group` of this frame, keyed by each row's seed."""
        return exponential_noise(self.seeds, self.step_count * self.groups + group, vocab)

    def _predict(self, x: torch.Tensor, index: int) -> torch.Tensor:
        predictor = self.talker.code_predictor
        projection = predictor.small_to_mtp_projection
        if isinstance(projection, nn.Linear):  # 1.7B: talker width to predictor width
            x = self.ops.linear(x, projection.weight, bias=projection.bias)
        positions = self.predictor_positions[index]
        out = run_stack(predictor.model, self.ops, x, positions, positions, self.predictor_lengths[index],
                        self.predictor_starts)
        return out[:, -1]

    def _predictor_logits(self, stream: torch.Tensor, group: int) -> torch.Tensor:
        """Logits of codebook `group` from the predictor's residual stream, its final norm fused in."""
        predictor = self.talker.code_predictor
        norm = predictor.model.norm
        return self.ops.linear(stream, predictor.lm_head[group - 1].weight, norm_weight=norm.weight, eps=norm.eps)

    def step(self) -> None:
        """One frame: codes of frame `step_count` into `codes`, the talker's next hidden state and logits."""
        talker = self.talker
        code0 = self._sample_code0()
        code0 = torch.where(self.finished, self.eos, code0)  # finished rows are fed EOS, as transformers does
        self.seen.scatter_(1, code0[:, None], True)
        self.finished |= code0 == self.eos

        codes = [code0]
        out = self._predict(torch.stack([self.hidden, talker.embed_codec(code0)], dim=1), 0)
        for group in range(1, self.groups):
            code, embedded = self._sample_code(group, self._predictor_logits(out, group))
            codes.append(code)
            if embedded is not None:
                out = self._predict(embedded[:, None], group)
        codes = torch.stack(codes, dim=-1)
        frame = self.step_count.clamp(max=self.max_frames - 1).view(1)
        self.codes.index_copy_(1, frame, codes[:, None])

        text = self.text.index_select(1, self.step_count.clamp(max=self.max_text).view(1))
        x = talker.embed_frame(codes)[:, None] + text
        lengths = (self.slot[:, 0] + 1).to(torch.int32)
        stream = run_stack(talker.model, self.ops, x, self.position, self.slot, lengths, self.first_row)
        self._talker_head(stream[:, -1])
        self.slot += 1
        self.position += 1
        self.step_count += 1
