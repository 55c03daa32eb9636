"""Kernel probe: where a frame's time goes, and what the fused matrix-vector kernel (`kernels/linear.py`)
gains over cuBLAS plus the separate norm / gate / residual kernels, with and without programmatic dependent
launch (PDL).

(The frame as a whole, per batch bucket, is timed by bench/engine_probe.py.)

1. `sweep`: for every decode product of both sizes, the fused kernel's block configurations (launched with
   PDL, as the frame launches them) against F.linear, each timed as one CUDA graph of 40 calls over
   distinct weights (more bytes than L2 holds, as in a frame).
2. `layers`: 75 predictor-sized layers' products in a row (qkv, o, gate/up, down, distinct weights): eager
   kernels (norm, F.linear, gate, add) vs fused vs fused with PDL.
3. `launch`: 1000 empty dependent kernels in one graph, with and without PDL: the cost of one launch.
4. `sample`: the fused sampler per top-k digit width.
5. `tiles`: the batch products (`--tile-rows`, default 16, 64 and 128 rows) of the 1.7B talker and predictor:
   the tensor-core tile kernel's block configurations against cuBLAS with the norm, gate and add as
   separate kernels.

    python bench/kernel_probe.py --parts sweep layers launch sample
Writes kernel_probe.jsonl and prints a summary; results go to $OUT (or ./kernel_probe_out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

# Appended: a qtts already on the path (PYTHONPATH set to another tree, to measure it with this script)
# comes first; without one, this checkout's.
sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qtts.kernels import jit, next_power_of_2, pdl_launch, tl, wait_for_previous  # noqa: E402
from qtts.kernels.linear import fused_linear_triton  # noqa: E402
from qtts.kernels.rms_norm import add_rms_norm_triton  # noqa: E402
from qtts.kernels.swiglu import silu_mul_halves_triton  # noqa: E402

# (name, N, K, kind): kind "norm" = pre-norm product, "gated" = pre-norm gate/up with SwiGLU, "res" =
# product plus residual, "plain" = product alone. N is the output width (gated: F, the weight has 2F rows).
SHAPES = {
    "0.6b": [("qkv", 4096, 1024, "norm"), ("o", 1024, 2048, "res"), ("gate_up", 3072, 1024, "gated"),
             ("down", 1024, 3072, "res"), ("lm_head", 2048, 1024, "norm"), ("codec_head", 3072, 1024, "plain")],
    "1.7b": [("qkv", 4096, 2048, "norm"), ("o", 2048, 2048, "res"), ("gate_up", 6144, 2048, "gated"),
             ("down", 2048, 6144, "res"), ("mtp", 1024, 2048, "plain")],
}
# First sweep (2026-11-25): BLOCK_N 8-32 x BLOCK_K 256-1024 x 4-8 warps; (8, 1024, 4) won every shape.
CONFIGS = [(bn, bk, w) for bn in (2, 4, 8) for bk in (1024, 2048, 4096) for w in (2, 4, 8)]


def graph_ms(fn, reps: int = 20) -> float:
    """Median ms of one replay of a graph that runs `fn` once."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def operands(n: int, k: int, kind: str, copies: int):
    dtype = torch.bfloat16
    rows = 2 * n if kind == "gated" else n
    weights = [torch.randn(rows, k, device="cuda", dtype=dtype) / k**0.5 for _ in range(copies)]
    x = torch.randn(1, k, device="cuda", dtype=dtype)
    norm = (1 + 0.1 * torch.randn(k, device="cuda")).to(dtype)
    residual = torch.randn(1, n, device="cuda", dtype=dtype)
    return weights, x, norm, residual


def eager_call(x, w, norm, residual, kind):
    """What the frame ran before the fused product: separate norm / gate / add kernels around F.linear."""
    if kind in ("norm", "gated"):
        x = add_rms_norm_triton(x, norm, 1e-6)[0]
    y = F.linear(x, w)
    if kind == "gated":
        y = silu_mul_halves_triton(y)
    if kind == "res":
        y = y + residual
    return y


def fused_call(x, w, norm, residual, kind, config=None, pdl=False):
    return fused_linear_triton(x, w, norm_weight=norm if kind in ("norm", "gated") else None,
                               residual=residual if kind == "res" else None, gated=kind == "gated",
                               config=config, pdl=pdl)


def sweep(emit):
    calls = 40
    for size, shapes in SHAPES.items():
        for name, n, k, kind in shapes:
            weights, x, norm, residual = operands(n, k, kind, copies=max(2, int(160e6 // (n * k * 2 * (2 if kind == "gated" else 1)))))
            ws = [weights[i % len(weights)] for i in range(calls)]
            ref = eager_call(x, ws[0], norm, residual, kind)
            linear_ms = graph_ms(lambda: [F.linear(x, w) for w in ws]) / calls
            eager_ms = graph_ms(lambda: [eager_call(x, w, norm, residual, kind) for w in ws]) / calls
            best = None
            for config in CONFIGS:
                if config[1] > max(1024, next_power_of_2(k)):
                    continue
                try:
                    out = fused_call(x, ws[0], norm, residual, kind, config)
                    err = (out.float() - ref.float()).abs().max().item()
                    ms = graph_ms(lambda: [fused_call(x, w, norm, residual, kind, config, pdl=True) for w in ws]) / calls
                except Exception as error:  # a config that does not compile is reported, not fatal
                    emit({"part": "sweep", "size": size, "shape": name, "config": config, "error": repr(error)[:300]})
                    continue
                emit({"part": "sweep", "size": size, "shape": name, "config": config, "us": round(ms * 1e3, 2),
                      "max_err": err})
                if best is None or ms < best[0]:
                    best = (ms, config)
            plain_ms = graph_ms(lambda: [fused_call(x, w, norm, residual, kind, best[1]) for w in ws]) / calls
            bytes_ = ws[0].numel() * 2
            emit({"part": "sweep_best", "size": size, "shape": name, "N": n, "K": k, "kind": kind,
                  "best_config": best[1], "fused_pdl_us": round(best[0] * 1e3, 2),
                  "fused_no_pdl_us": round(plain_ms * 1e3, 2),
                  "linear_us": round(linear_ms * 1e3, 2), "eager_us": round(eager_ms * 1e3, 2),
                  "weight_MB": round(bytes_ / 1e6, 2), "fused_GBps": round(bytes_ / best[0] / 1e6, 1)})


TILE_SHAPES = [("talker", *shape) for shape in SHAPES["1.7b"][:4]] + [
    ("predictor", *shape) for shape in SHAPES["0.6b"][:4]]
TILE_CONFIGS = [(bn, bk, w, st) for bn in (16, 32, 64) for bk in (64, 128, 256) for w, st in ((4, 4),)] + [
    (16, 128, 2, 4), (32, 128, 8, 3), (32, 256, 4, 3), (64, 64, 8, 4), (64, 128, 8, 3), (128, 32, 4, 4),
    (128, 64, 4, 3), (128, 64, 8, 3)]


def tiles(emit, row_counts=(16, 64, 128)):
    calls = 40
    for rows in row_counts:
        for model, name, n, k, kind in TILE_SHAPES:
            copies = max(2, int(160e6 // (n * k * 2 * (2 if kind == "gated" else 1))))
            weights, _, norm, _ = operands(n, k, kind, copies)
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            residual = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
            ws = [weights[i % len(weights)] for i in range(calls)]
            ref = eager_call(x, ws[0], norm, residual, kind)
            eager_ms = graph_ms(lambda: [eager_call(x, w, norm, residual, kind) for w in ws]) / calls
            best = None
            for bn, bk, warps, stages in TILE_CONFIGS:
                config = (min(64, max(16, next_power_of_2(rows))), bn, bk, warps, stages)
                try:
                    err = (fused_call(x, ws[0], norm, residual, kind, config).float() - ref.float()).abs().max().item()
                    ms = graph_ms(lambda: [fused_call(x, w, norm, residual, kind, config, pdl=True)
                                           for w in ws]) / calls
                except Exception as error:
                    emit({"part": "tiles", "rows": rows, "shape": f"{model} {name}", "config": config,
                          "error": repr(error)[:300]})
                    continue
                emit({"part": "tiles", "rows": rows, "shape": f"{model} {name}", "config": config,
                      "us": round(ms * 1e3, 2), "max_err": err})
                if best is None or ms < best[0]:
                    best = (ms, config)
            bytes_ = ws[0].numel() * 2
            emit({"part": "tiles_best", "rows": rows, "shape": f"{model} {name}", "N": n, "K": k, "kind": kind,
                  "best_config": best and best[1], "tile_pdl_us": best and round(best[0] * 1e3, 2),
                  "eager_us": round(eager_ms * 1e3, 2), "weight_MB": round(bytes_ / 1e6, 2),
                  "tile_GBps": best and round(bytes_ / best[0] / 1e6, 1)})


def layers(emit, configs):
    """75 predictor layers' four products with distinct weights: the frame's product pattern."""
    k, n_qkv, n_o_in, f = 1024, 4096, 2048, 3072
    dtype = torch.bfloat16
    count = 75
    mats = [dict(qkv=torch.randn(n_qkv, k, device="cuda", dtype=dtype) / 32,
                 o=torch.randn(k, n_o_in, device="cuda", dtype=dtype) / 45,
                 gate_up=torch.randn(2 * f, k, device="cuda", dtype=dtype) / 32,
                 down=torch.randn(k, f, device="cuda", dtype=dtype) / 55,
                 n1=torch.ones(k, device="cuda", dtype=dtype), n2=torch.ones(k, device="cuda", dtype=dtype))
            for _ in range(count)]
    stream = torch.randn(1, k, device="cuda", dtype=dtype)

    def eager():
        x = stream
        for m in mats:
            qkv = eager_call(x, m["qkv"], m["n1"], None, "norm")
            x = eager_call(qkv[:, :n_o_in].contiguous(), m["o"], None, x, "res")
            h = eager_call(x, m["gate_up"], m["n2"], None, "gated")
            x = eager_call(h, m["down"], None, x, "res")
        return x

    def fused(pdl):
        x = stream.clone()
        for m in mats:
            qkv = fused_linear_triton(x, m["qkv"], norm_weight=m["n1"], config=configs.get(("0.6b", "qkv")), pdl=pdl)
            fused_linear_triton(qkv[:, :n_o_in].contiguous(), m["o"], residual=x, out=x,
                                config=configs.get(("0.6b", "o")), pdl=pdl)
            h = fused_linear_triton(x, m["gate_up"], norm_weight=m["n2"], gated=True,
                                    config=configs.get(("0.6b", "gate_up")), pdl=pdl)
            fused_linear_triton(h, m["down"], residual=x, out=x, config=configs.get(("0.6b", "down")), pdl=pdl)
        return x

    ms_eager = graph_ms(eager)
    ms_fused = graph_ms(lambda: fused(False))
    record = {"part": "layers", "layers": count, "eager_ms": round(ms_eager, 3), "fused_ms": round(ms_fused, 3),
              "per_layer_us": {"eager": round(ms_eager / count * 1e3, 2), "fused": round(ms_fused / count * 1e3, 2)},
              "bytes_floor_ms": round(count * 30e6 / 3.0e12 * 1e3, 3)}
    try:
        ms_pdl = graph_ms(lambda: fused(True))
        record["fused_pdl_ms"] = round(ms_pdl, 3)
        record["per_layer_us"]["fused_pdl"] = round(ms_pdl / count * 1e3, 2)
        a, b = fused(False), fused(True)
        torch.cuda.synchronize()
        record["pdl_equal"] = bool(torch.equal(a, b))
    except Exception as error:
        record["pdl_error"] = repr(error)[:300]
    emit(record)


@jit
def _tick(x_ptr, PDL: tl.constexpr):
    wait_for_previous(PDL)
    tl.store(x_ptr, tl.load(x_ptr) + 1)


def launch(emit):
    x = torch.zeros(1, device="cuda")
    for pdl in (False, True):
        try:
            ms = graph_ms(lambda: [_tick[(1,)](x, PDL=pdl, **pdl_launch(pdl)) for _ in range(1000)])
            emit({"part": "launch", "pdl": pdl, "us_per_kernel": round(ms, 3)})
        except Exception as error:
            emit({"part": "launch", "pdl": pdl, "error": repr(error)[:300]})


def sample(emit):
    """The fused sampler (top-k 50, temperature 0.9) per top-k digit width and warp count, predictor (2048)
    and talker (3072) vocabularies, on bf16 logits (the engine's) of two spreads: N(0, 1) logits put 19 %
    of the mass in the top 50 of 2048, N(0, 16) ones 97 % (the sampler draws over every token first and
    needs top-k's threshold only where that winner is not among the 50)."""
    from qtts.kernels.sample import sample_codes_triton

    from qtts.sampling import RowSampling, SamplingParams

    seeds = torch.zeros(1, device="cuda", dtype=torch.int64)
    counter = torch.zeros(1, device="cuda", dtype=torch.int64)
    counters = torch.arange(50, device="cuda")
    rows = RowSampling.of(SamplingParams(), 1, "cuda")
    for vocab, talker in ((2048, False), (3072, True)):
        for std in (1.0, 4.0):
            logits = (std * torch.randn(1, vocab, device="cuda")).to(torch.bfloat16)
            extra = {}
            if talker:
                extra = {"seen": torch.zeros(1, vocab, device="cuda", dtype=torch.bool), "generated": counter,
                         "penalty": rows.repetition_penalty, "eos_id": 2150, "min_new_tokens": rows.min_new_tokens,
                         "suppress_from": 2048}
            for bits in (1, 2, 4):
                for warps in (4, 8):
                    def call(i, bits=bits, warps=warps):
                        # a counter of its own for each call: new noise, so the winner changes as in a stream
                        return sample_codes_triton(logits, seeds, counters[i:i + 1], rows.talker, pdl=False,
                                                   radix_bits=bits, num_warps=warps, **extra)
                    ms = graph_ms(lambda: [call(i) for i in range(50)]) / 50
                    emit({"part": "sample", "vocab": vocab, "logit_std": std, "radix_bits": bits, "warps": warps,
                          "us": round(ms * 1e3, 2)})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", nargs="+", default=["launch", "sweep", "layers"])
    parser.add_argument("--tile-rows", type=int, nargs="+", default=[16, 64, 128],
                        help="tiles: the row counts to sweep")
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "kernel_probe_out"))
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "kernel_probe.jsonl", "a")
    best = {}

    def emit(record):
        line = json.dumps(record)
        if record.get("part") not in ("sweep", "tiles"):
            print(line, flush=True)
        log.write(line + "\n")
        log.flush()
        if record.get("part") == "sweep_best":
            best[(record["size"], record["shape"])] = tuple(record["best_config"])

    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    for part in args.parts:
        try:
            {"sweep": sweep, "launch": launch, "sample": sample, "tiles": lambda e: tiles(e, args.tile_rows),
             "layers": lambda e: layers(e, best)}[part](emit)
        except Exception as error:
            emit({"part": part, "error": repr(error)[:500]})


if __name__ == "__main__":
    main()
