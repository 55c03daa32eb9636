"""Frame probe: ms per frame of the fast frame (one CUDA graph) on random real-size weights, per variant.

A frame = code-0 sampling + 15 predictor steps with sampling + feedback + one talker step (no decoder).
Weights are random, built on the GPU with the released checkpoints' dimensions (never loaded); the talker
context starts at `--context` tokens (a prefill through the reference path) and grows one per frame.

Variants (names combine): `eager` = PyTorch ops captured in one graph; `fused` = the Triton kernels
(layers and sampling); `proj` = q/k/v and gate/up weights as one matrix each; `compiled` = torch.compile
of the frame step, then captured (compile time in setup_s); `greedy` = argmax picks instead of the
checkpoints' default sampling (as the earlier probe); `nosplit` = talker attention without the split;
`pdl` = the fused products launched as programmatic dependents (without it, PDL is off).

Measured on one H100 (2026-11-25, torch 2.11, Triton 3.6; context 300, median of 60 replays, ms/frame):
    0.6B b1: eager 21.65, fused 7.02, fused-proj 5.85 (greedy 5.38); b16: eager 29.12, fused 7.58, fused-proj 6.43
    1.7B b1: eager 22.43, fused 7.77, fused-proj 6.58;                b16: eager 30.25, fused 8.33, fused-proj 7.23
    with the talker attention split across programs (flash-decoding), 0.6B fused-proj:
    context 300: b1 5.53 (nosplit 5.88), b16 6.24 (6.46); context 1500: b1 5.59 (9.22), b16 8.28 (9.87)
    second session, fused products + PDL (fused-proj-pdl), same call as the old frame (fused-proj, ce0a4d8):
    0.6B b1 5.498 -> 3.054, 1.7B b1 6.239 -> 3.851
compiled-fused-proj failed in Inductor (it recompiles the user Triton kernels; error in a dtype cast), and
compiled (eager ops) had not finished compiling after ~5 minutes. fp32 check: fused == eager codes.
Checks: fused vs eager codes under greedy decoding, in float32 (must be identical) and bfloat16 (agreement).

    python bench/frame_probe.py --sizes 0.6b 1.7b --batches 1 16 --variants eager fused
Writes a JSON line per measurement and a table to $OUT (or ./frame_probe_out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import qtts.kernels.decode_attention as decode_attention  # noqa: E402
from qtts.config import TTSConfig  # noqa: E402
from qtts.engine.frame import Frame  # noqa: E402
from qtts.engine.graphs import FrameGraph  # noqa: E402
from qtts.engine.reference import DecodeState, prefill  # noqa: E402
from qtts.models.talker import Talker  # noqa: E402
from qtts.sampling import SamplingParams  # noqa: E402
from qtts.testing.configs import real_tts_config  # noqa: E402

default_splits = decode_attention.default_splits
SAMPLING = SamplingParams()  # the checkpoints' defaults: top-k 50, temperature 0.9, penalty 1.05
GREEDY = SamplingParams(do_sample=False, subtalker_dosample=False)


def random_talker(size: str, dtype: torch.dtype, seed: int = 0) -> Talker:
    torch.manual_seed(seed)
    config = TTSConfig.from_dict(real_tts_config("base", size))
    talker = Talker(config.talker_config, device="cuda", dtype=dtype)
    with torch.no_grad():
        for name, p in talker.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return talker.eval()


def ready_frame(talker: Talker, batch: int, context: int, frames: int, params: SamplingParams,
                fused: bool, compile: bool, fuse_weights: bool | None = None, pdl: bool = False):
    """A frame captured as one graph and loaded with a random `context`-token prefill."""
    hidden = talker.config.hidden_size
    frame = Frame(talker, batch, context + frames + 8, frames + 8, 4, params, fused=fused, fuse_weights=fuse_weights,
                  pdl=pdl)
    began = time.perf_counter()
    graph = FrameGraph(frame, compile=compile)
    setup_s = time.perf_counter() - began
    torch.manual_seed(1)
    dtype = talker.codec_head.weight.dtype
    embeds = torch.randn(batch, context, hidden, device="cuda", dtype=dtype)
    valid = torch.ones(batch, context, dtype=torch.bool, device="cuda")
    state = DecodeState(valid, frame.max_len, talker.config.vocab_size)
    with torch.no_grad():
        h, logits = prefill(talker, embeds, state)
    trailing = torch.randn(batch, 4, hidden, device="cuda", dtype=dtype)
    frame.start(h, logits, valid, trailing, torch.randn(hidden, device="cuda", dtype=dtype),
                torch.arange(batch, device="cuda"))
    return frame, graph, setup_s


def time_replays(graph: FrameGraph, n: int) -> list[float]:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        s.record()
        graph()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def greedy_codes(talker, batch, context, frames, fused, pdl=False) -> torch.Tensor:
    frame, graph, _ = ready_frame(talker, batch, context, frames, GREEDY, fused, compile=False, pdl=pdl)
    for _ in range(frames):
        graph()
    torch.cuda.synchronize()
    return frame.codes[:, :frames].clone()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["0.6b", "1.7b"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--variants", nargs="+", default=["eager", "fused"])
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--check", action="store_true", help="fused vs eager greedy codes (fp32 and bf16)")
    parser.add_argument("--compile-sizes", nargs="+", default=["0.6b"], help="sizes the compiled variants run at")
    parser.add_argument("--compile-batches", nargs="+", type=int, default=[1])
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "frame_probe_out"))
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "frame_probe.jsonl", "a")
    rows = []

    def emit(record):
        print(json.dumps(record), flush=True)
        log.write(json.dumps(record) + "\n")
        log.flush()
        rows.append(record)

    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    if args.check:
        for dtype in (torch.float32, torch.bfloat16):
            talker = random_talker("0.6b", dtype)
            a = greedy_codes(talker, 2, 64, 20, fused=False)
            for pdl in (False, True):
                b = greedy_codes(talker, 2, 64, 20, fused=True, pdl=pdl)
                emit({"check": str(dtype), "pdl": pdl, "frames": 20, "identical": bool(torch.equal(a, b)),
                      "code_agreement": float((a == b).float().mean()),
                      "first_diff_frame": int((a != b).any(-1).any(0).float().argmax())
                      if not torch.equal(a, b) else None})
            del talker
            torch.cuda.empty_cache()

    for size in args.sizes:
        talker = random_talker(size, torch.bfloat16)
        for batch in args.batches:
            for variant in args.variants:
                compile, fused, proj = "compiled" in variant, "fused" in variant, "proj" in variant
                # `nosplit`: the talker's attention in one serial pass per KV head, as before flash-decoding
                decode_attention.default_splits = (lambda n: 1) if "nosplit" in variant else default_splits
                params = GREEDY if "greedy" in variant else SAMPLING
                if compile and (size not in args.compile_sizes or batch not in args.compile_batches):
                    continue
                try:
                    frame, graph, setup_s = ready_frame(talker, batch, args.context, args.frames + 10, params,
                                                        fused, compile, proj, pdl="pdl" in variant)
                    time_replays(graph, 5)
                    ms = time_replays(graph, args.frames)
                    emit({"size": size, "batch": batch, "variant": variant, "context": args.context,
                          "ms_median": round(statistics.median(ms), 3), "ms_min": round(min(ms), 3),
                          "ms_max": round(max(ms), 3), "setup_s": round(setup_s, 1)})
                except Exception as error:  # report and go on to the next variant
                    emit({"size": size, "batch": batch, "variant": variant, "error": repr(error)[:500]})
                finally:
                    frame = graph = None
                    torch.cuda.empty_cache()
        del talker
        torch.cuda.empty_cache()

    table = ["| size | batch | variant | ms/frame (median) | min | setup s |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "ms_median" in r:
            table.append(f"| {r['size']} | {r['batch']} | {r['variant']} | {r['ms_median']} | {r['ms_min']} | "
                         f"{r['setup_s']} |")
        elif "error" in r:
            table.append(f"| {r['size']} | {r['batch']} | {r['variant']} | error | | |")
    (out / "frame_probe.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
