"""One-row product blocks chosen by the frame's own time, not the product's alone.

`linear.DECODE_CONFIGS` holds the (BLOCK_N, BLOCK_K, warps) of each one-row product, each the fastest in
`kernel_probe.py --parts sweep`: 40 launches of that product alone. In the frame a product follows other
kernels, which PDL lets it overlap only where their programs leave it room on the SMs (a product with 255
registers a thread fills them), and the ninth session measured the predictor's products at 1.3 TB/s in the
frame (`hop_probe.py`) against 1.5-2.6 TB/s alone. So here each candidate block of each product shape is
timed inside the captured one-row frame, every other shape at the table's; then the best of each shape
together against the table, in alternating rounds.

The shapes are those the frame asks `linear_config` for (recorded while the engine captures its frame).
The engine is loaded once (two rows at most); each candidate captures the one-row frame again with that
block (a product's block is looked up when the kernel is launched, so a fresh capture takes the override),
about a second where reloading the engine took half a minute. The verify rounds time the two-row frame too:
a one-row block also runs every product of two rows, and batched frames must not get slower.

    python bench/frame_tune.py --size 0.6b --checkpoint /tmp/cv-0.6b [--shapes 4096x1024 ...] [--budget-s 500]
Writes frame_tune_SIZE.jsonl to $OUT (or ./frame_tune_out). Needs a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))  # after PYTHONPATH: an older tree wins

import torch  # noqa: E402

import qtts  # noqa: E402
from qtts.engine.graphs import FrameGraph  # noqa: E402
from qtts.kernels import linear, next_power_of_2  # noqa: E402

from engine_probe import at_context, checkpoint_folder, frame_ms  # noqa: E402
from kernel_probe import CONFIGS  # noqa: E402

# Beside the isolated sweep's blocks, ones that hold fewer weights in registers, so that the next kernel's
# programs fit beside them: 48-128 registers a thread in every product of both sizes under Triton 3.6 (182
# for gate/up with (16, 512, 8)), against 255 for the table's q/k/v and gate/up blocks of the 0.6B
# (compiled for sm_90 as bench/sass_probe.py compiles).
FEW_REGISTERS = [(4, 512, 2), (8, 512, 4), (16, 512, 8), (4, 1024, 8)]


def candidates(n: int, k: int, gated: bool) -> list[tuple[int, int, int]]:
    """The table's block for this shape first, then the others, BLOCK_K no longer than K needs."""
    table = linear.linear_config(1, n, k, gated)
    out = [table]
    for block_n, block_k, warps in CONFIGS + FEW_REGISTERS:
        config = (block_n, min(block_k, next_power_of_2(k)), warps)
        if config not in out:
            out.append(config)
    return out


@contextlib.contextmanager
def recording_shapes(into: set):
    """While inside, every one-row product shape (n, k, gated) the kernels look up goes into `into`."""
    original = linear.linear_config

    def record(rows, n, k, gated):
        into.add((n, k, gated))
        return original(rows, n, k, gated)

    linear.linear_config = record
    try:
        yield
    finally:
        linear.linear_config = original


@contextlib.contextmanager
def blocks(overrides: dict):
    """`linear.DECODE_CONFIGS` with `overrides` ({(n, k, gated): config}) in place of the table's entries."""
    original = linear.DECODE_CONFIGS
    linear.DECODE_CONFIGS = {**original, **overrides}
    try:
        yield
    finally:
        linear.DECODE_CONFIGS = original


@torch.inference_mode()
def frame_ms_with(engine, rows: int, overrides: dict, reps: int, context: int) -> float:
    """The `rows`-row frame captured afresh with `overrides` in the block table, its replay's median ms."""
    with blocks(overrides):
        graph = FrameGraph(engine.frames[rows], stream=engine.stream)
    at_context(engine.store, context)
    ms = frame_ms(graph.step, reps)
    del graph
    torch.cuda.empty_cache()
    return ms


def parse_shape(text: str) -> tuple[int, int, bool]:
    """"4096x1024" or "3072x1024g" (gated)."""
    gated = text.endswith("g")
    n, k = text.rstrip("g").split("x")
    return int(n), int(k), gated


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.6b", choices=["0.6b", "1.7b"])
    parser.add_argument("--checkpoint", help="a CustomVoice checkpoint folder (default: write a random one)")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, help="NxK or NxKg (gated); default: the frame's")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the best blocks against the table")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--budget-s", type=float, default=1e9, help="stop trying candidates after this long")
    args = parser.parse_args()
    began = time.monotonic()
    out = Path(os.environ.get("OUT", "frame_tune_out"))
    out.mkdir(parents=True, exist_ok=True)
    folder = checkpoint_folder(args.checkpoint, args.size)

    with open(out / f"frame_tune_{args.size}.jsonl", "a") as log:
        def emit(record):
            record = {"size": args.size, **record}
            print(json.dumps(record), flush=True)
            log.write(json.dumps(record) + "\n")

        shapes: set = set()
        with recording_shapes(shapes):
            tts = qtts.load(folder, max_batch=2)
        engine = tts.engine
        table_ms = frame_ms_with(engine, 1, {}, args.reps, args.context)
        emit({"part": "table", "frame_ms": round(table_ms, 3), "load_s": round(time.monotonic() - began, 1)})
        best = {}
        for shape in args.shapes or sorted(shapes):
            for config in candidates(*shape):
                if time.monotonic() - began > args.budget_s:
                    break
                ms = frame_ms_with(engine, 1, {shape: config}, args.reps, args.context)
                emit({"part": "candidate", "shape": shape, "config": config, "frame_ms": round(ms, 3)})
                if shape not in best or ms < best[shape][0]:
                    best[shape] = (ms, config)
        chosen = {shape: config for shape, (_, config) in best.items()
                  if config != linear.linear_config(1, *shape)}
        emit({"part": "chosen", "blocks": [[list(shape), list(config)] for shape, config in chosen.items()]})
        if chosen:
            both = [("table", {}), ("chosen", chosen)]
            for round_ in range(args.rounds):
                for name, overrides in both if round_ % 2 == 0 else both[::-1]:
                    for rows in (1, 2):
                        ms = frame_ms_with(engine, rows, overrides, args.reps, args.context)
                        emit({"part": "verify", "round": round_, "blocks": name, "rows": rows,
                              "frame_ms": round(ms, 3)})
        tts.close()


if __name__ == "__main__":
    main()
