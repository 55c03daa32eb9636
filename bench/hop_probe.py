"""What each part of a frame costs it: the captured one-row frame replayed with a part's launches left out.
The frame's results are then garbage; only its time is real. The difference from the whole frame bounds
what fusing that part into its neighbours could save, before any fusion is written (the fifth and eighth
sessions built one-launch attentions that came out slower).

Parts left out (each replaced by zeros of its output's shape, so that no NaN reaches a sampler and every
code stays a valid index; one tensor per shape, made once, so that a left-out launch leaves no fill in the
captured graph, whose cost, and the break it makes in the chain of programmatic launches, would be
counted against the part):
  - `rope`: the q/k norm, RoPE and cache write before each attention (103 a frame);
  - `attention`: decode attention itself (103) and the talker's split merges (28);
  - `rope+attention`: both;
  - `sampler`: the 16 draws (their codes zeros; each predictor step then takes code 0's embedding);
  - `talker`: the talker's layers (its input passed through; its head stays), and `predictor`: the code
    predictor's 75 layer passes (its 15 heads and draws stay): with the weight bytes each stage reads and
    the device's copy rate, the frame's distance from the memory floor by stage;
  - `STAGE:PRODUCT`, STAGE `talker` or `predictor` and PRODUCT `qkv`, `o`, `gate_up` or `down`: that one
    matrix product of every layer of the stage (a product that adds the residual stream hands it on
    unchanged; the others give zeros): with the bytes of those weights (`product_bytes`), the rate each kind
    of product reaches inside the frame, which says which of them the gap to the floor is in.
And one variant that computes the frame's own results: `unsplit`, the talker's attention walking each row's
cache in one program per KV head, so without the 28 merge launches (at the probe's context).

    python bench/hop_probe.py --size 0.6b [--leave-out none rope unsplit attention rope+attention sampler
        talker predictor predictor:qkv predictor:o predictor:gate_up predictor:down talker:qkv ...]
Run under `PYTHONPATH=OTHER_TREE/src` to probe another tree's frame. Needs a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))  # after PYTHONPATH: an older tree wins

import qtts  # noqa: E402
from qtts.engine import frame as frame_module  # noqa: E402
from qtts.kernels import decode_attention  # noqa: E402
from qtts.models.talker import TalkerModel  # noqa: E402

from engine_probe import at_context, checkpoint_folder, cuda_ms, frame_ms, frame_steps  # noqa: E402


ZEROS = {}  # (shape, dtype, device): the one zero tensor the left-out launches of that shape hand on


def zeros(*shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Zeros of `shape`, made once (nothing downstream writes a stage's output in place)."""
    key = (shape, dtype or like.dtype, like.device)
    if key not in ZEROS:
        ZEROS[key] = torch.zeros(shape, device=like.device, dtype=key[1])
    return ZEROS[key]


def no_rope(q, k, v, *args, **kwargs):
    batch, seq, heads, head_dim = q.shape
    return zeros(batch, heads, seq, head_dim, like=q)


def no_attention(q, k_cache, v_cache, lengths, scale, *args, **kwargs):
    batch, heads, seq, head_dim = q.shape
    return zeros(batch, seq, heads * head_dim, like=q)


def no_sampler(logits, *args, embedding=None, **kwargs):
    codes = zeros(logits.shape[0], like=logits, dtype=torch.long)
    return codes if embedding is None else (codes, embedding[codes])


def stack_left_out(talker: bool):
    """run_stack with the talker's (or else the predictor's) layers not run: its input passes through."""
    run_stack = frame_module.run_stack

    def run(stack, ops, caches, x, *args, **kwargs):
        return x if isinstance(stack, TalkerModel) == talker else run_stack(stack, ops, caches, x, *args, **kwargs)

    return run


PRODUCTS = ("qkv", "o", "gate_up", "down")


def products_left_out(talker: bool, kind: str) -> list:
    """Patches that leave out the `kind` product of every layer of the talker (or else the predictor): o
    and down are known by their weights (their layers' own), gate/up by its gate, q/k/v as the rest.
    Products outside the stack's layers (heads, the 1.7B predictor's input projection) stay."""
    run_stack, linear = frame_module.run_stack, frame_module.fused_linear_triton
    running = {}  # while the stack's layers run: the data pointers of their o and down weights

    def run(stack, *args, **kwargs):
        if isinstance(stack, TalkerModel) == talker:
            running["o"] = {layer.self_attn.o_proj.weight.data_ptr() for layer in stack.layers}
            running["down"] = {layer.mlp.down_proj.weight.data_ptr() for layer in stack.layers}
        try:
            return run_stack(stack, *args, **kwargs)
        finally:
            running.clear()

    def product(x, weight, *, residual=None, gated=False, **kwargs):
        if running:
            this = ("gate_up" if gated else "o" if weight.data_ptr() in running["o"]
                    else "down" if weight.data_ptr() in running["down"] else "qkv")
            if this == kind:
                if residual is not None:
                    return residual
                return zeros(*x.shape[:-1], weight.shape[0] // 2 if gated else weight.shape[0], like=x)
        return linear(x, weight, residual=residual, gated=gated, **kwargs)

    return [(frame_module, "run_stack", run), (frame_module, "fused_linear_triton", product)]


@contextlib.contextmanager
def leaving_out(name: str):
    """The frame's kernels with the class `name` not launched ("none": as they are; "unsplit": attention in
    one program per row and KV head). Patched where the frame looks them up when it is built and captured."""
    patches = {
        "none": [],
        "rope": [(frame_module, "qk_norm_rope_cache_triton", no_rope)],
        "unsplit": [(decode_attention, "default_splits", lambda cache_len: 1)],
        "attention": [(frame_module, "decode_attention_triton", no_attention)],
        "rope+attention": [(frame_module, "qk_norm_rope_cache_triton", no_rope),
                           (frame_module, "decode_attention_triton", no_attention)],
        "sampler": [(frame_module, "sample_codes_triton", no_sampler)],
        "talker": [(frame_module, "run_stack", stack_left_out(talker=True))],
        "predictor": [(frame_module, "run_stack", stack_left_out(talker=False))],
    }.get(name)
    if patches is None:
        stage, _, kind = name.partition(":")
        if stage not in ("talker", "predictor") or kind not in PRODUCTS:
            raise ValueError(f"nothing to leave out called {name!r}")
        patches = products_left_out(stage == "talker", kind)
    saved = [(module, attr, getattr(module, attr)) for module, attr, _ in patches]
    for module, attr, replacement in patches:
        setattr(module, attr, replacement)
    try:
        yield
    finally:
        for module, attr, original in saved:
            setattr(module, attr, original)


@torch.inference_mode()
def one_row_frame_ms(tts, reps: int, context: int) -> float:
    at_context(tts.engine.store, context)
    return frame_ms(frame_steps(tts.engine)[1], reps)


def weight_bytes(*modules) -> int:
    return sum(p.numel() * p.element_size() for module in modules for p in module.parameters())


def stage_bytes(tts) -> dict:
    """Weight bytes a one-row frame reads: the talker's layers once, the predictor's layers once per step
    (15), each of the predictor's 15 heads and the talker's codec head once."""
    talker = tts.engine.talker
    predictor = talker.code_predictor
    predictor_step = weight_bytes(predictor.model.layers, predictor.small_to_mtp_projection)  # (1.7B: 2048 -> 1024)
    return {"talker_layers": weight_bytes(talker.model.layers), "predictor_layers": 15 * predictor_step,
            "heads": weight_bytes(predictor.lm_head, talker.codec_head)}


# each kind of product and the projections whose weights it reads, as (block, projection) names of a layer
PRODUCT_WEIGHTS = {"qkv": (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj")),
                   "o": (("self_attn", "o_proj"),), "gate_up": (("mlp", "gate_proj"), ("mlp", "up_proj")),
                   "down": (("mlp", "down_proj"),)}


def product_bytes(tts) -> dict:
    """Weight bytes a one-row frame reads per kind of product, "STAGE:PRODUCT" as `leaving_out` names them."""
    talker = tts.engine.talker

    def projections(layers, kind):
        return (getattr(getattr(layer, block), name) for layer in layers for block, name in PRODUCT_WEIGHTS[kind])

    return {f"{stage}:{kind}": passes * weight_bytes(*projections(layers, kind))
            for stage, layers, passes in (("talker", talker.model.layers, 1),
                                          ("predictor", talker.code_predictor.model.layers, 15))
            for kind in PRODUCTS}


def copy_tbps(gib: int = 2) -> float:
    """The device's copy rate, bytes read and written per second (the rate a weight stream can reach)."""
    src = torch.empty(gib << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda: dst.copy_(src), 10)
    return 2 * src.numel() / (ms / 1e3) / 1e12


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.6b", choices=["0.6b", "1.7b"])
    parser.add_argument("--checkpoint", help="a CustomVoice checkpoint folder (default: write a random one)")
    parser.add_argument("--leave-out", nargs="+", default=["none", "rope", "unsplit", "attention", "rope+attention",
                                                            "sampler", "talker", "predictor"])
    parser.add_argument("--rounds", type=int, default=2, help="times through the list, alternating")
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--context", type=int, default=300)
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "hop_probe_out"))
    out.mkdir(parents=True, exist_ok=True)
    folder = checkpoint_folder(args.checkpoint, args.size)
    with open(out / f"hop_probe_{args.size}.jsonl", "a") as log:
        tts = qtts.load(folder, max_batch=1)
        record = {"size": args.size, "copy_tbps": round(copy_tbps(), 2), "weight_bytes": stage_bytes(tts),
                  "product_bytes": product_bytes(tts)}
        tts.close()
        print(json.dumps(record), flush=True)
        log.write(json.dumps(record) + "\n")
        for round_ in range(args.rounds):
            for name in args.leave_out:
                with leaving_out(name):
                    tts = qtts.load(folder, max_batch=1)
                    try:
                        ms = one_row_frame_ms(tts, args.reps, args.context)
                    finally:
                        tts.close()
                record = {"size": args.size, "round": round_, "left_out": name, "frame_ms": round(ms, 3)}
                print(json.dumps(record), flush=True)
                log.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
