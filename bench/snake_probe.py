"""Snake probe: the codec decoder's activation kernel at the shapes of its snake calls in a 64 x 16 decode
and a one-frame one (one call per decoder block's width: a conv output cut to its valid samples, its bias
added, written behind the left context of a padded buffer), each timed as a CUDA graph of 20 calls: this
tree's kernel on time-major activations per block shape, beside the `snake.py` of other trees given with
`--channel-major PATH` (activations [B, C, T] in memory, the kernel before 2026-12-07d) or
`--time-major PATH`. Each run is checked against the reference.

    python bench/snake_probe.py --channel-major old/src/qtts/kernels/snake.py

Prints and writes snake_probe.jsonl to $OUT (or .): one line per shape, then the totals per batch.
"""
import argparse
import importlib.util
import json
import os
import sys

from pathlib import Path

import torch

# Appended: a qtts already on the path (PYTHONPATH set to another tree) comes first; without one, this
# checkout's.
sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_probe import graph_ms  # noqa: E402
from qtts.kernels import snake  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--channel-major", nargs="*", default=[], help="snake.py files of kernels reading [B, C, T]")
parser.add_argument("--time-major", nargs="*", default=[], help="snake.py files of kernels reading [B, T, C]")
args = parser.parse_args()

out = open(os.path.join(os.environ.get("OUT", "."), "snake_probe.jsonl"), "a")


def emit(r):
    print(json.dumps(r), flush=True)
    out.write(json.dumps(r) + "\n")


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


others = [(f"cm{i}", load(f"snake_cm{i}", path), False) for i, path in enumerate(args.channel_major)] + [
    (f"tm{i}", load(f"snake_tm{i}", path), True) for i, path in enumerate(args.time_major)]


def graph_us(fn, calls=20):
    """Median us of one of `calls` calls of `fn` captured in one graph."""
    return graph_ms(lambda: [fn() for _ in range(calls)]) / calls * 1e3


SHAPES = [(64, 1536, 64), (64, 768, 512), (64, 384, 2560), (64, 192, 10240), (64, 96, 30720),
          (1, 1536, 4), (1, 768, 32), (1, 384, 160), (1, 192, 640), (1, 96, 1920)]
# (BLOCK_T, BLOCK_C, warps): 2048, 4096 and 8192 values a program
SHAPE_CONFIGS = [(2048 // bc, bc, 4) for bc in (16, 32, 64, 128)] + [
    (4096 // bc, bc, w) for bc in (16, 32, 64, 128) for w in (4, 8)] + [(8192 // bc, bc, 8) for bc in (32, 64, 128)]
dt = torch.bfloat16
totals = {}
for b, c, t in SHAPES:
    x_cm = (2 * torch.randn(b, c, t + 6, device="cuda")).to(dt)
    alpha, beta, bias = (0.5 * torch.randn(c, device="cuda") for _ in range(3))
    pad_cm = torch.empty(b, c, t + 10, device="cuda", dtype=dt)
    x_tm = x_cm.transpose(1, 2).contiguous().transpose(1, 2)
    pad_tm = torch.empty(b, t + 10, c, device="cuda", dtype=dt).transpose(1, 2)
    want = snake.snake_beta_reference((x_cm[..., :t].float() + bias[:, None]).to(dt), alpha, beta).to(dt)
    row = {"B": b, "C": c, "T": t}

    def check(got):
        return round((got.float() - want.float()).abs().max().item(), 4)

    for name, module, time_major in others:
        x, pad = (x_tm, pad_tm) if time_major else (x_cm, pad_cm)
        row[name + "_us"] = graph_us(lambda: module.snake_beta_triton(x[..., :t], alpha, beta, bias,
                                                                      out=pad[..., 4:4 + t]))
        row[name + "_err"] = check(pad[..., 4:4 + t])
    row["chosen"] = snake.block_shape(c)
    best = None
    for shape in SHAPE_CONFIGS:
        if shape[1] > max(16, c):
            continue
        x = x_tm[..., :t]
        o = pad_tm[..., 4:4 + t]
        us = graph_us(lambda: snake._launch(x, None, bias, alpha, beta, None, o, shape=shape))
        row[str(shape)] = round(us, 2)
        row[str(shape) + "_err"] = check(o)
        if best is None or us < best[0]:
            best = (us, shape)
        if shape == snake.block_shape(c):
            row["chosen_us"] = us
    row["best"] = best[1]
    row["best_us"] = round(best[0], 2)
    for k in [name + "_us" for name, _, _ in others] + ["chosen_us", "best_us"]:
        totals.setdefault((b, k), 0.0)
        totals[(b, k)] += row[k]
        row[k] = round(row[k], 2)
    emit(row)
emit({"totals_us": {f"B{b} {k}": round(v, 1) for (b, k), v in totals.items()}})
