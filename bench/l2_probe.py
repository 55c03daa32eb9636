"""L2 probe: does keeping part of the code predictor's weights in L2 shorten the frame?

A frame reads the predictor's 5 layers 15 times (about 150 MB each time, 3x the 50 MB L2 of an H100 or
H200), so with the cache's usual replacement every read comes from memory. CUDA can set part of L2 aside
for "persisting" lines (`cuCtxSetLimit(CU_LIMIT_PERSISTING_L2_CACHE_SIZE)`) and mark the accesses of a
stream's kernels, or of a graph's kernel nodes, to one address window as persisting (an access policy
window). The predictor's weights are packed into one buffer (views, as `fuse_projections` does) so that one
window covers them; the frame's graphs carry the window on every kernel node.

Parts, each timed with CUDA events (median of `--reps`), the variants alternating over `--rounds`:
  - `chain`: 20 one-row products over one 24 MB weight, captured as a graph, without a window, with one
    set on the capturing stream, and with one set on each kernel node after capture (hit ratio 1, or less
    where less may persist): whether a window reaches the kernels of a captured graph, and which way;
  - `frames`: the captured frame at each of `--buckets`, context 300, greedy rows, for
    `original` (the engine's graphs as loaded), `packed` (the predictor packed, no window), `layers` (a
    window over the pack's first bytes, as many as may persist, hit ratio 1: the first layer or so from
    L2 every step) and `spread` (a window over the whole pack with hit ratio = persisting bytes / window:
    every product finds about that share of its weight in L2).

    python bench/l2_probe.py --size 0.6b --checkpoint /tmp/cv-0.6b
Prints one JSON line per measurement; writes l2_probe_<size>.jsonl to $OUT (or ./engine_probe_out).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))
sys.path.append(str(Path(__file__).resolve().parent))

import qtts  # noqa: E402
from engine_probe import at_context, checkpoint_folder, cuda_ms  # noqa: E402
from qtts.engine.graphs import FrameGraph  # noqa: E402
from qtts.kernels.linear import fused_linear_triton  # noqa: E402

CU_LIMIT_PERSISTING_L2_CACHE_SIZE = 0x06
CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE = 38
CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE = 108
CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE = 109
CU_STREAM_ATTRIBUTE_ACCESS_POLICY_WINDOW = 1
CU_ACCESS_PROPERTY_STREAMING, CU_ACCESS_PROPERTY_PERSISTING = 1, 2
CU_KERNEL_NODE_ATTRIBUTE_ACCESS_POLICY_WINDOW = 1
CU_GRAPH_NODE_TYPE_KERNEL = 0


class AccessPolicyWindow(ctypes.Structure):
    _fields_ = [("base_ptr", ctypes.c_void_p), ("num_bytes", ctypes.c_size_t), ("hit_ratio", ctypes.c_float),
                ("hit_prop", ctypes.c_int), ("miss_prop", ctypes.c_int)]


class StreamAttrValue(ctypes.Union):  # CUlaunchAttributeValue: 64 bytes
    _fields_ = [("window", AccessPolicyWindow), ("pad", ctypes.c_char * 64)]


class Driver:
    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")

    def check(self, name: str, *args) -> None:
        result = getattr(self.lib, name)(*args)
        if result != 0:
            raise RuntimeError(f"{name} returned CUresult {result}")

    def attribute(self, attribute: int, device: int = 0) -> int:
        value = ctypes.c_int()
        self.check("cuDeviceGetAttribute", ctypes.byref(value), attribute, device)
        return value.value

    def persisting_limit(self, nbytes: int) -> int:
        self.check("cuCtxSetLimit", CU_LIMIT_PERSISTING_L2_CACHE_SIZE, ctypes.c_size_t(nbytes))
        value = ctypes.c_size_t()
        self.check("cuCtxGetLimit", ctypes.byref(value), CU_LIMIT_PERSISTING_L2_CACHE_SIZE)
        return value.value

    def window(self, stream: torch.cuda.Stream, base: int, nbytes: int, hit_ratio: float) -> None:
        """Accesses of `stream`'s kernels to [base, base + nbytes): `hit_ratio` of them persisting (0 bytes
        clears the window)."""
        value = StreamAttrValue()
        value.window = AccessPolicyWindow(base, nbytes, hit_ratio, CU_ACCESS_PROPERTY_PERSISTING,
                                          CU_ACCESS_PROPERTY_STREAMING)
        self.check("cuStreamSetAttribute", ctypes.c_void_p(stream.cuda_stream),
                   CU_STREAM_ATTRIBUTE_ACCESS_POLICY_WINDOW, ctypes.byref(value))

    def window_nodes(self, graph: torch.cuda.CUDAGraph, base: int, nbytes: int, hit_ratio: float) -> int:
        """The window on every kernel node of `graph` (captured with keep_graph=True, not yet instantiated);
        returns how many nodes got it."""
        handle = ctypes.c_void_p(graph.raw_cuda_graph())
        count = ctypes.c_size_t()
        self.check("cuGraphGetNodes", handle, None, ctypes.byref(count))
        nodes = (ctypes.c_void_p * count.value)()
        self.check("cuGraphGetNodes", handle, nodes, ctypes.byref(count))
        value = StreamAttrValue()
        value.window = AccessPolicyWindow(base, nbytes, hit_ratio, CU_ACCESS_PROPERTY_PERSISTING,
                                          CU_ACCESS_PROPERTY_STREAMING)
        kernels = 0
        for node in nodes:
            kind = ctypes.c_int()
            self.check("cuGraphNodeGetType", ctypes.c_void_p(node), ctypes.byref(kind))
            if kind.value == CU_GRAPH_NODE_TYPE_KERNEL:
                self.check("cuGraphKernelNodeSetAttribute", ctypes.c_void_p(node),
                           CU_KERNEL_NODE_ATTRIBUTE_ACCESS_POLICY_WINDOW, ctypes.byref(value))
                kernels += 1
        return kernels

    def reset_persisting(self) -> None:
        """Every persisting line back to normal: each variant starts from the same L2."""
        self.check("cuCtxResetPersistingL2Cache")


def capture_with_window(fn, driver, stream, window: tuple[int, int, float], *, warmup: int = 3, pool=None):
    """A CUDA graph of `fn()` (as `engine.graphs.capture`) whose kernel nodes all carry `window` (base,
    bytes, hit ratio)."""
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(graph, pool=pool, stream=stream), torch.no_grad():
        fn()
    nodes = driver.window_nodes(graph, *window)
    graph.instantiate()
    torch.cuda.synchronize()
    return graph, nodes


class WindowedFrame:
    """A frame's two halves as graphs whose kernels carry one access policy window."""

    def __init__(self, frame, driver, stream, window, pool):
        self.codes_graph, codes_nodes = capture_with_window(frame.draw_codes, driver, stream, window, pool=pool)
        self.advance_graph, advance_nodes = capture_with_window(frame.advance, driver, stream, window, pool=pool)
        self.kernel_nodes = codes_nodes + advance_nodes

    def step(self) -> None:
        self.codes_graph.replay()
        self.advance_graph.replay()


def pack_predictor(engine) -> torch.Tensor:
    """The predictor's matrices (its input projection where it has one, then per layer q/k/v, o, gate/up,
    down) copied into one buffer, each module's weight and the engine's fused matrices made views of it."""
    predictor = engine.frames[engine.buckets[0]].talker.code_predictor
    projections = engine.ops.projections
    slots = []  # (get, set) per matrix, in pack order
    projection = predictor.small_to_mtp_projection
    if isinstance(projection, torch.nn.Linear):
        slots.append((lambda p=projection: p.weight, lambda w, p=projection: setattr(p, "weight", w)))
    for layer in predictor.model.layers:
        def set_fused(w, layer=layer, i=0):
            qkv, gate_up = projections[layer]
            projections[layer] = (w, gate_up) if i == 0 else (qkv, w)
        slots.append((lambda layer=layer: projections[layer][0], set_fused))
        o = layer.self_attn.o_proj
        slots.append((lambda o=o: o.weight, lambda w, o=o: setattr(o, "weight", w)))
        slots.append((lambda layer=layer: projections[layer][1],
                      lambda w, layer=layer: set_fused(w, layer, 1)))
        down = layer.mlp.down_proj
        slots.append((lambda d=down: d.weight, lambda w, d=down: setattr(d, "weight", w)))
    tensors = [get() for get, _ in slots]
    pack = torch.empty(sum(t.numel() for t in tensors), dtype=tensors[0].dtype, device=tensors[0].device)
    offset = 0
    for (get, put), t in zip(slots, tensors):
        view = pack[offset: offset + t.numel()].view_as(t)
        view.copy_(t)
        put(torch.nn.Parameter(view, requires_grad=False) if isinstance(t, torch.nn.Parameter) else view)
        offset += t.numel()
    return pack


def chain(driver, emit, persist_bytes, reps, rounds):
    """20 one-row products over one 24 MB weight in a graph: no window, a window on the capturing stream, a
    window on each kernel node."""
    weight = torch.randn(12288, 1024, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(1, 12288, device="cuda", dtype=torch.bfloat16)

    def products():
        for _ in range(20):
            fused_linear_triton(x, weight, out=out, pdl=True)

    nbytes = weight.numel() * weight.element_size()
    whole = (weight.data_ptr(), nbytes, min(1.0, persist_bytes / nbytes))  # no more than may persist
    graphs = {}
    for name in ("none", "stream", "nodes"):
        stream = torch.cuda.Stream()
        if name == "stream":
            driver.window(stream, *whole)
        if name == "nodes":
            graphs[name] = capture_with_window(products, driver, stream, whole)[0]
            continue
        with torch.cuda.stream(stream):
            products()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            products()
        graphs[name] = graph
    for r in range(rounds):
        for name, graph in graphs.items():
            driver.reset_persisting()
            ms = cuda_ms(graph.replay, reps)
            emit({"part": "chain", "variant": name, "round": r, "persist_mb": round(persist_bytes / 2**20, 1),
                  "ms_per_product": round(ms / 20, 4), "tb_s": round(nbytes * 20 / ms / 1e9, 2)})


@torch.inference_mode()
def frames(tts, driver, emit, persist_bytes, max_window, buckets, reps, rounds):
    engine = tts.engine
    store = engine.store
    runs = {"original": {b: engine._run_frame[b] for b in buckets}}
    pack = pack_predictor(engine)
    pack_bytes = pack.numel() * pack.element_size()
    window = min(pack_bytes, max_window)
    variants = {"packed": (0, 0.0), "layers": (min(persist_bytes, window), 1.0),
                "spread": (window, min(1.0, persist_bytes / window))}
    emit({"part": "pack", "pack_mb": round(pack_bytes / 2**20, 1), "window_mb": round(window / 2**20, 1),
          "persist_mb": round(persist_bytes / 2**20, 1)})
    for name, (nbytes, hit_ratio) in variants.items():
        pool = torch.cuda.graph_pool_handle()
        if nbytes == 0:
            runs[name] = {b: FrameGraph(engine.frames[b], stream=engine.stream, pool=pool) for b in buckets}
            continue
        runs[name] = {b: WindowedFrame(engine.frames[b], driver, engine.stream,
                                       (pack.data_ptr(), nbytes, hit_ratio), pool) for b in buckets}
        emit({"part": "window", "variant": name, "mb": round(nbytes / 2**20, 1), "hit_ratio": round(hit_ratio, 3),
              "kernel_nodes": {b: run.kernel_nodes for b, run in runs[name].items()}})
    for r in range(rounds):
        for name, by_bucket in runs.items():
            for b, run in by_bucket.items():
                at_context(store, 300)
                driver.reset_persisting()
                for _ in range(3):
                    run.step()
                emit({"part": "frames", "variant": name, "round": r, "batch": b,
                      "ms": round(cuda_ms(run.step, reps), 3)})
    for tensor in store.per_row():
        tensor.zero_()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.6b", choices=["0.6b", "1.7b"])
    parser.add_argument("--checkpoint")
    parser.add_argument("--parts", nargs="+", default=["chain", "frames"])
    parser.add_argument("--buckets", type=int, nargs="+", default=[1, 4, 64])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "engine_probe_out"))
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / f"l2_probe_{args.size}.jsonl", "a")

    def emit(record):
        line = json.dumps({"size": args.size, **record})
        print(line, flush=True)
        log.write(line + "\n")

    tts = qtts.load(checkpoint_folder(args.checkpoint, args.size), max_batch=max(args.buckets))
    driver = Driver()
    l2 = driver.attribute(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
    max_persist = driver.attribute(CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE)
    max_window = driver.attribute(CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE)
    persist = driver.persisting_limit(max_persist)
    emit({"part": "l2", "gpu": torch.cuda.get_device_name(), "l2_mb": round(l2 / 2**20, 1),
          "max_persisting_mb": round(max_persist / 2**20, 1), "max_window_mb": round(max_window / 2**20, 1),
          "persisting_limit_mb": round(persist / 2**20, 1)})
    if "chain" in args.parts:
        chain(driver, emit, persist, args.reps, args.rounds)
    if "frames" in args.parts:
        frames(tts, driver, emit, persist, max_window, args.buckets, args.reps, args.rounds)
    tts.close()


if __name__ == "__main__":
    main()
