"""Go/no-go for a persistent code-predictor kernel (issue 14): is a grid-wide barrier in Triton cheap enough
that one kernel beats the frame's launches?

The predictor's MLP at batch 1 (x [1024] -> RMSNorm -> gate/up [6144 x 1024] -> silu(gate) * up [3072]
-> down [1024 x 3072] + x), 75 of them in a row (a frame has 15 steps x 5 layers), over 5 distinct
layers' weights as a frame cycles through them:
  A  the frame's path: two fused_linear_triton launches per MLP, PDL on, one CUDA graph;
  B  one persistent kernel per MLP: gate/up rows, grid barrier, down rows (PREFETCH: this program's
     down rows loaded before the barrier);
  C  one persistent kernel for all 75 (two barriers each).
Every variant's output is checked against the reference chain; then each is timed in a CUDA graph.
Also times a kernel of N empty barriers (the barrier's own cost). Run under `timeout`: a wrong barrier
deadlocks. One barrier counter per use (zeroed before the launch). `--programs-per-sm K` runs B and C with
K programs on each SM (more loads in flight), in tilings with a down row block for every program; a
configuration whose K programs cannot all be resident on an SM (registers, threads, shared memory) is
skipped, since its barrier would wait for programs that never start.
    timeout 240 python bench/barrier_probe.py [--programs-per-sm 1 2 4]
"""

import argparse
import time

import torch
import triton
import triton.language as tl

from kernel_probe import graph_ms
from predictor_chain import CHAIN, EPS, LAYERS, F, H, start

from qtts.kernels import round_to


@triton.jit
def _barrier(counter_ptr, target):
    """Every program of the grid arrives here before any leaves. One counter per barrier instance, zeroed
    before the launch; the writes before it are visible after it (release/acquire at GPU scope)."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _mlp_body(x_ptr, norm_ptr, wgu_ptr, wd_ptr, act_ptr, out_ptr, counter_ptr, pid, eps,
              P: tl.constexpr, H: tl.constexpr, F: tl.constexpr, BN1: tl.constexpr, BN2: tl.constexpr,
              PREFETCH: tl.constexpr):
    """F = 3 * H here (the predictor's 3072 = 3 x 1024): the down rows are read as three [BN2, H] chunks,
    since a Triton block's length must be a power of two."""
    dtype = x_ptr.dtype.element_ty
    k = tl.arange(0, H)
    n2 = pid * BN2 + tl.arange(0, BN2)  # this program's down rows (H // BN2 <= P programs have one block)
    has_down = pid < H // BN2
    rows = wd_ptr + n2[:, None] * F + k[None, :]
    if PREFETCH:  # weights depend on nothing: load them before the barrier
        wd0 = tl.load(rows, mask=has_down, other=0.0)
        wd1 = tl.load(rows + H, mask=has_down, other=0.0)
        wd2 = tl.load(rows + 2 * H, mask=has_down, other=0.0)
    x = tl.load(x_ptr + k, cache_modifier=".cg").to(tl.float32)
    inv = tl.math.rsqrt(tl.sum(x * x, axis=0) / H + eps)
    g = tl.load(norm_ptr + k).to(tl.float32)
    h = round_to(round_to(x * inv, dtype).to(tl.float32) * g, dtype).to(tl.float32)
    for blk in range(pid, F // BN1, P):
        n = blk * BN1 + tl.arange(0, BN1)
        wg = tl.load(wgu_ptr + n[:, None] * H + k[None, :]).to(tl.float32)
        wu = tl.load(wgu_ptr + (F + n)[:, None] * H + k[None, :]).to(tl.float32)
        gate = round_to(tl.sum(wg * h[None, :], axis=1), dtype).to(tl.float32)
        up = round_to(tl.sum(wu * h[None, :], axis=1), dtype).to(tl.float32)
        silu = round_to(gate / (1.0 + tl.exp(-gate)), dtype).to(tl.float32)
        tl.store(act_ptr + n, round_to(silu * up, dtype))
    _barrier(counter_ptr, P)
    if has_down:
        if not PREFETCH:
            wd0 = tl.load(rows)
            wd1 = tl.load(rows + H)
            wd2 = tl.load(rows + 2 * H)
        a0 = tl.load(act_ptr + k, cache_modifier=".cg").to(tl.float32)
        a1 = tl.load(act_ptr + H + k, cache_modifier=".cg").to(tl.float32)
        a2 = tl.load(act_ptr + 2 * H + k, cache_modifier=".cg").to(tl.float32)
        acc = tl.sum(wd0.to(tl.float32) * a0[None, :], axis=1) + tl.sum(wd1.to(tl.float32) * a1[None, :], axis=1)
        acc += tl.sum(wd2.to(tl.float32) * a2[None, :], axis=1)
        y = round_to(acc, dtype).to(tl.float32)
        y += tl.load(x_ptr + n2, cache_modifier=".cg").to(tl.float32)
        tl.store(out_ptr + n2, round_to(y, dtype))


@triton.jit
def _mlp_kernel(x_ptr, norm_ptr, wgu_ptr, wd_ptr, act_ptr, out_ptr, counter_ptr, eps,
                P: tl.constexpr, H: tl.constexpr, F: tl.constexpr, BN1: tl.constexpr, BN2: tl.constexpr,
                PREFETCH: tl.constexpr):
    _mlp_body(x_ptr, norm_ptr, wgu_ptr, wd_ptr, act_ptr, out_ptr, counter_ptr, tl.program_id(0), eps,
              P, H, F, BN1, BN2, PREFETCH)


@triton.jit
def _chain_kernel(xs_ptr, norms_ptr, wgus_ptr, wds_ptr, act_ptr, counters_ptr, eps, CHAIN: tl.constexpr,
                  LAYERS: tl.constexpr, P: tl.constexpr, H: tl.constexpr, F: tl.constexpr, BN1: tl.constexpr,
                  BN2: tl.constexpr, PREFETCH: tl.constexpr):
    """xs [CHAIN + 1, H]: MLP i reads row i and writes row i + 1."""
    pid = tl.program_id(0)
    for i in range(CHAIN):
        layer = i % LAYERS
        _mlp_body(xs_ptr + i * H, norms_ptr + layer * H, wgus_ptr + layer * 2 * F * H, wds_ptr + layer * H * F,
                  act_ptr, xs_ptr + (i + 1) * H, counters_ptr + 2 * i, pid, eps, P, H, F, BN1, BN2, PREFETCH)
        _barrier(counters_ptr + 2 * i + 1, P)  # row i + 1 written before MLP i + 1 reads it


@triton.jit
def _barriers_kernel(counters_ptr, N: tl.constexpr, P: tl.constexpr):
    for i in range(N):
        _barrier(counters_ptr + i, P)


# (BN1 gate/up rows, BN2 down rows, warps) per program
TILINGS = ((8, 8, 4), (8, 8, 8), (16, 8, 8), (8, 4, 4), (4, 4, 4), (4, 4, 2), (4, 2, 2), (2, 2, 2))


def resident_per_sm(kernel, warps: int) -> int:
    """Programs of a compiled kernel that one SM holds at once, by registers, threads and shared memory."""
    kernel._init_handles()
    props = torch.cuda.get_device_properties(0)
    regs_per_warp = -(-max(kernel.n_regs, 1) * 32 // 256) * 256  # allocated per warp in units of 256
    by_regs = getattr(props, "regs_per_multiprocessor", 65536) // regs_per_warp // warps
    by_threads = props.max_threads_per_multi_processor // (32 * warps)
    shared = kernel.metadata.shared
    by_shared = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024) // shared if shared else 32
    return min(by_regs, by_threads, by_shared, 32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs-per-sm", type=int, nargs="+", default=[1])
    args = parser.parse_args()
    dev, dt = "cuda", torch.bfloat16
    sms, norms, wgus, wds, x0, ref = start(dev)

    act = torch.empty(F, device=dev, dtype=dt)
    for per_sm in args.programs_per_sm:
        P = per_sm * sms
        for prefetch in (False, True):
            for bn1, bn2, warps in TILINGS:
                if H // bn2 > P or (per_sm == 1 and bn2 != 8):  # every down block needs a program
                    continue
                label = f"per_sm={per_sm} prefetch={prefetch} bn1={bn1} bn2={bn2} warps={warps}"
                constants = dict(P=P, H=H, F=F, BN1=bn1, BN2=bn2, PREFETCH=prefetch, num_warps=warps)
                xs_b = torch.zeros(CHAIN + 1, H, device=dev, dtype=dt)
                xs_b[0] = x0
                counters = torch.zeros(CHAIN, device=dev, dtype=torch.int32)
                compiled = _mlp_kernel.warmup(xs_b[0], norms[0], wgus[0], wds[0], act, xs_b[1], counters, EPS,
                                              grid=(P,), **constants)
                resident = resident_per_sm(compiled, warps)
                if resident < per_sm:
                    print(f"{label}: skipped, {resident} resident per SM ({compiled.n_regs} registers)", flush=True)
                    continue

                def run_b():
                    counters.zero_()
                    for i in range(CHAIN):
                        layer = i % LAYERS
                        _mlp_kernel[(P,)](xs_b[i], norms[layer], wgus[layer], wds[layer], act, xs_b[i + 1],
                                          counters[i:], EPS, **constants)

                t = time.time()
                run_b()
                torch.cuda.synchronize()
                diff = (xs_b.float() - ref.float()).abs().max().item()
                print(f"B {label}: first run {time.time() - t:.1f} s, max |diff| {diff}", flush=True)
                print("B ms", round(graph_ms(run_b), 3), flush=True)

                xs_c = torch.zeros(CHAIN + 1, H, device=dev, dtype=dt)
                xs_c[0] = x0
                counters_c = torch.zeros(2 * CHAIN, device=dev, dtype=torch.int32)
                chained = _chain_kernel.warmup(xs_c, norms, wgus, wds, act, counters_c, EPS, CHAIN=CHAIN,
                                               LAYERS=LAYERS, grid=(P,), **constants)
                if resident_per_sm(chained, warps) < per_sm:
                    print(f"C {label}: skipped, not resident", flush=True)
                    continue

                def run_c():
                    counters_c.zero_()
                    _chain_kernel[(P,)](xs_c, norms, wgus, wds, act, counters_c, EPS, CHAIN=CHAIN, LAYERS=LAYERS,
                                        **constants)

                run_c()
                torch.cuda.synchronize()
                print(f"C {label}: max |diff| {(xs_c.float() - ref.float()).abs().max().item()}", flush=True)
                print("C ms", round(graph_ms(run_c), 3), flush=True)

    counters_n = torch.zeros(300, device=dev, dtype=torch.int32)

    def run_barriers():
        counters_n.zero_()
        _barriers_kernel[(sms,)](counters_n, N=300, P=sms, num_warps=4)

    print("300 empty barriers ms", round(graph_ms(run_barriers), 3), flush=True)
    print("weights per MLP MB", (2 * F * H + H * F) * 2 / 1e6, flush=True)


if __name__ == "__main__":
    main()
