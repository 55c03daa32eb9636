"""One frame of speech for the first b rows of a `RowStore`, as a static, sync-free step: the engine's
unit of work and of CUDA-graph capture (per batch bucket b, one graph for each of its two halves).

A frame samples code 0 from the talker's last logits, runs the 15 code-predictor steps with their sampling,
feeds back the sum of the 16 code embeddings plus each row's next text-track vector, and runs one talker
step, which leaves the next frame's logits. Every row carries its own frame counter, cache length and
sampling settings, so requests that started at different times and with different settings share it. It
reads the weights of the `Talker` module it is given (no copies). Nothing in `step` reads a tensor value on
the host, branches on one, or changes a shape, so the same code runs eagerly on CPU (CI) and replays as
CUDA graphs.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..kernels.decode_attention import decode_attention_reference, decode_attention_triton, default_splits
from ..kernels.linear import fused_linear_reference, fused_linear_triton
from ..kernels.qk_norm_rope import qk_norm_rope_cache_reference, qk_norm_rope_cache_triton
from ..kernels.rms_norm import add_rms_norm_reference, add_rms_norm_triton
from ..kernels.sample import sample_codes_reference, sample_codes_triton
from ..kernels.swiglu import silu_mul_reference, silu_mul_triton
from ..models.layers import DecoderStack
from ..models.talker import Talker
from ..prompt import prompt_positions
from .rows import LayerCache, RowStore


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
        self.sample = kernel(sample_codes_triton) if fused else sample_codes_reference

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


def run_stack(stack: DecoderStack, ops: LayerOps, caches: list, x: torch.Tensor, positions: torch.Tensor,
              cache_index: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor,
              attention_splits: int | None = None) -> torch.Tensor:
    """The residual stream after every layer of `stack` (final norm not applied: callers fuse it into the
    product that reads it). x [B, S, H] are new tokens at RoPE `positions` and cache rows `cache_index`
    [B, S] of `caches` (one `KVCache` [B, ...] per layer); attention sees cache rows `starts` [B] ..
    `lengths` [B] - 1, split `attention_splits` ways (default: by the caches' whole length).

    Each residual add is fused into the product in front of it and rounds to the activation dtype, as the
    official math does after every add."""
    for layer, cache in zip(stack.layers, caches):
        attn = layer.self_attn
        q, k, v = ops.qkv(layer, x)
        q = ops.qk_norm_rope_cache(q, k, v, attn.q_norm.weight, attn.k_norm.weight, attn.q_norm.eps,
                                   stack.inv_freq, positions, cache.k, cache.v, cache_index)
        attended = ops.decode_attention(q, cache.k, cache.v, lengths, attn.head_dim**-0.5, starts,
                                        splits=attention_splits)
        x = ops.linear(attended, attn.o_proj.weight, residual=x)
        x = ops.mlp(layer, x)
    return x


def row_caches(caches: list, rows: slice) -> list[LayerCache]:
    """`rows` of each layer's pooled KV cache, as views the kernels take like caches of their own."""
    return [LayerCache(cache.k[rows], cache.v[rows]) for cache in caches]


def talker_head(talker: Talker, ops: LayerOps, stream: torch.Tensor, hidden: torch.Tensor,
                logits: torch.Tensor) -> None:
    """The talker's final norm of its last residual stream [B, H] into `hidden`, codec logits into `logits`."""
    norm = talker.model.norm
    hidden.copy_(ops.add_rms_norm(stream, norm.weight, norm.eps)[0])
    logits.copy_(ops.linear(hidden, talker.codec_head.weight))


def prefill(talker: Talker, ops: LayerOps, store: RowStore, rows: slice, embeds: torch.Tensor,
            valid: torch.Tensor) -> None:
    """Run prompts [k, T, H] with validity [k, T] (False = left padding) through the talker into `rows` of
    the store: keys and values into cache rows 0..T-1, last hidden state and logits. Static shapes for a
    given (k, T), so it can be captured as a graph per arrival count and prompt length."""
    batch, length = valid.shape
    positions = prompt_positions(valid)
    starts = (~valid).sum(-1).to(torch.int32)
    cache_rows = torch.arange(length, device=valid.device).expand(batch, length)
    lengths = torch.full((batch,), length, device=valid.device, dtype=torch.int32)
    # No query of the prompt sees past its length: split the attention by that, not by the cache's whole
    # length (16 ways for 4096 rows, where a 64-token prompt fills at most 2 of them, plus a merge launch).
    stream = run_stack(talker.model, ops, row_caches(store.caches, rows), embeds, positions, cache_rows,
                       lengths, starts, attention_splits=default_splits(length))
    talker_head(talker, ops, stream[:, -1], store.hidden[rows], store.logits[rows])


class Frame:
    """The frame step over rows 0 .. batch-1 of `store`: views of its buffers, so frames of every bucket
    share one state and a request keeps its row whatever bucket runs it."""

    def __init__(self, talker: Talker, ops: LayerOps, store: RowStore, batch: int):
        rows = slice(0, batch)
        config = talker.config
        device = store.hidden.device
        self.talker, self.ops, self.batch = talker, ops, batch
        self.groups = config.num_code_groups
        self.eos = config.codec_eos_token_id
        self.suppress_from = config.vocab_size - 1024  # only codebook-0 codes and EOS may be emitted
        self.caches = row_caches(store.caches, rows)
        self.predictor_caches = row_caches(store.predictor_caches, rows)
        self.hidden, self.logits = store.hidden[rows], store.logits[rows]
        self.slot, self.position, self.first_row = store.slot[rows], store.position[rows], store.first_row[rows]
        self.step_count, self.seen, self.text = store.step[rows], store.seen[rows], store.text[rows]
        self.text_len, self.text_open = store.text_len[rows], store.text_open[rows]
        self.seeds, self.codes = store.seeds[rows], store.codes[rows]
        self.sampling = store.sampling.rows(batch)
        self.max_text = store.max_text
        self.last_cache_row = store.max_len - 1
        # The predictor's positions are the same every frame: [0, 1] for the talker hidden state and code 0,
        # then one position per code fed back.
        first = torch.arange(2, device=device).expand(batch, 2).contiguous()
        self.predictor_positions = [first] + [torch.full((batch, 1), g + 1, device=device)
                                              for g in range(1, self.groups - 1)]
        self.predictor_lengths = [torch.full((batch,), int(p[0, -1]) + 1, device=device, dtype=torch.int32)
                                  for p in self.predictor_positions]
        self.predictor_starts = torch.zeros(batch, device=device, dtype=torch.int32)
        self.row_index = torch.arange(batch, device=device)
        self.active = torch.zeros(batch, device=device, dtype=torch.bool)  # rows this frame advances

    def sample_code0(self) -> torch.Tensor:
        s = self.sampling
        return self.ops.sample(
            self.logits, self.seeds, self.step_count, s.talker, seen=self.seen, generated=self.step_count,
            penalty=s.repetition_penalty, min_new_tokens=s.min_new_tokens, eos_id=self.eos,
            suppress_from=self.suppress_from, counter_scale=self.groups)

    def sample_code(self, group: int, logits: torch.Tensor):
        """Code `group` [B], with its embedding [B, H] where the predictor takes it next (the fused sampler
        writes it as it draws the code)."""
        predictor = self.talker.code_predictor
        feeds_back = group + 1 < self.groups
        # the draw counter is step * 16 + group, formed in the sampler: no extra launches per draw
        counter = dict(counter_scale=self.groups, counter_offset=group)
        if self.ops.fused:
            table = predictor.model.codec_embedding[group - 1].weight if feeds_back else None
            return self.ops.sample(logits, self.seeds, self.step_count, self.sampling.predictor, embedding=table,
                                   **counter)
        code = self.ops.sample(logits, self.seeds, self.step_count, self.sampling.predictor, **counter)
        return (code, predictor.embed_code(group, code)) if feeds_back else code

    def _predict(self, x: torch.Tensor, index: int) -> torch.Tensor:
        predictor = self.talker.code_predictor
        projection = predictor.small_to_mtp_projection
        if isinstance(projection, nn.Linear):  # 1.7B: talker width to predictor width
            x = self.ops.linear(x, projection.weight, bias=projection.bias)
        positions = self.predictor_positions[index]
        out = run_stack(predictor.model, self.ops, self.predictor_caches, x, positions, positions,
                        self.predictor_lengths[index], self.predictor_starts)
        return out[:, -1]

    def _predictor_logits(self, stream: torch.Tensor, group: int) -> torch.Tensor:
        """Logits of codebook `group` from the predictor's residual stream, its final norm fused in."""
        predictor = self.talker.code_predictor
        norm = predictor.model.norm
        return self.ops.linear(stream, predictor.lm_head[group - 1].weight, norm_weight=norm.weight, eps=norm.eps)

    def step(self) -> None:
        """One frame for every row: its codes into `codes`, the talker's next hidden state and logits."""
        self.draw_codes()
        self.advance()

    def draw_codes(self) -> None:
        """The frame's first half: every row's 16 codes into `codes`, from the talker's last logits (code 0)
        and the code predictor. The codes are final here, before the talker's step: the engine copies them
        out between the halves, so a frame's audio need not wait for the step that only the next frame uses.

        A row waiting for text (its track open, its counter at the text it has) runs too but keeps its state
        (`advance`): its frame is dropped, and the frame it makes once text comes is the one it would have
        made at once."""
        talker = self.talker
        active = ~self.text_open | (self.step_count < self.text_len)
        self.active.copy_(active)
        code0 = self.sample_code0()
        self.seen.scatter_(1, code0[:, None], active[:, None] | self.seen.gather(1, code0[:, None]))

        codes = [code0]
        out = self._predict(torch.stack([self.hidden, talker.embed_codec(code0)], dim=1), 0)
        for group in range(1, self.groups):
            drawn = self.sample_code(group, self._predictor_logits(out, group))
            if group + 1 < self.groups:  # the code and its embedding, the predictor's next input
                code, embedded = drawn
                out = self._predict(embedded[:, None], group)
            else:
                code = drawn
            codes.append(code)
        self.codes.copy_(torch.stack(codes, dim=-1))

    def advance(self) -> None:
        """The frame's second half: the sum of the 16 code embeddings plus each row's next text-track vector
        through one talker step, which leaves the next frame's hidden state and logits; the active rows'
        counters move on."""
        talker, active = self.talker, self.active
        text = self.text[self.row_index, self.step_count.clamp(max=self.max_text)]
        x = talker.embed_frame(self.codes)[:, None] + text[:, None]
        lengths = (self.slot[:, 0] + 1).to(torch.int32)
        stream = run_stack(talker.model, self.ops, self.caches, x, self.position, self.slot, lengths,
                           self.first_row)
        # A waiting row's keys and values went to its next cache row, which its next real frame overwrites.
        hidden, logits = self.hidden.clone(), self.logits.clone()
        talker_head(talker, self.ops, stream[:, -1], hidden, logits)
        self.hidden.copy_(torch.where(active[:, None], hidden, self.hidden))
        self.logits.copy_(torch.where(active[:, None], logits, self.logits))
        advance = active.long()
        # Rows past the running ones run too (a bucket's padding): their cache row stays inside the cache.
        self.slot.add_(advance[:, None]).clamp_(max=self.last_cache_row)
        self.position += advance[:, None]
        self.step_count += advance
