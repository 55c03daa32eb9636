"""Go/no-go for a code-predictor MLP in one launch with no grid-wide dependency (issue 14): split the
intermediate dimension F over the programs.

The frame runs an MLP as two launches (gate/up, then down), because down needs every one of the 3072
activations. Here program p owns the activations f in [p * BF, (p + 1) * BF): it reads x (normalising it as
every program does), computes its BF gate/up pairs and their SwiGLU, multiplies them by down's columns f
(down relaid as [F, H] at load, so the columns are rows) and adds that partial [H] product into a float32
accumulator with relaxed atomics. No program waits for another; the launch after it (under PDL) reads the
accumulator. The down product is rounded and added to the residual by that reader, as the eager ops round:
MLP i reads accumulator i - 1 and the residual x[i - 1], forms x[i] = x[i - 1] + round(acc), and program 0
writes x[i] for the next MLP's residual. The sum's order differs from one run to the next (atomics).

    A  the frame's path, two fused_linear_triton launches per MLP with PDL (predictor_chain.py);
    S  one launch per MLP, BF activations a program, in W warps; every (BF, W) given.

Each is checked against the reference chain (max |diff| over the 75 outputs, as A's), then timed in a CUDA
graph that also zeroes the 75 accumulators (one memset, timed alone too).
    python bench/mlp_split_probe.py [--blocks 2 4 8] [--warps 2 4 8] [--rounds 2]
"""

import argparse

import torch
import triton
import triton.language as tl

from kernel_probe import graph_ms
from predictor_chain import CHAIN, EPS, LAYERS, WEIGHT_BYTES, F, H, launches_chain, start

from qtts.kernels import pdl_launch, round_to, wait_for_previous


@triton.jit
def _split_mlp(acc_in, res_in, x_out, norm_ptr, gu_ptr, down_t_ptr, acc_out, eps,
               F: tl.constexpr, H: tl.constexpr, BF: tl.constexpr, FIRST: tl.constexpr, PDL: tl.constexpr):
    dtype = res_in.dtype.element_ty
    f = tl.program_id(0) * BF + tl.arange(0, BF)
    kk = tl.arange(0, H)
    rows = f.to(tl.int64)[:, None] * H + kk[None, :]
    w_gate = tl.load(gu_ptr + rows)
    w_up = tl.load(gu_ptr + F * H + rows)
    w_down = tl.load(down_t_ptr + rows)
    wait_for_previous(PDL)  # only weights were read so far

    x = tl.load(res_in + kk).to(tl.float32)
    if not FIRST:  # x[i] = x[i - 1] + round(down product of MLP i - 1), rounded as the eager add
        x = round_to(x + round_to(tl.load(acc_in + kk), dtype).to(tl.float32), dtype).to(tl.float32)
        if tl.program_id(0) == 0:
            tl.store(x_out + kk, round_to(x, dtype))
    inv_rms = tl.math.rsqrt(tl.sum(x * x, axis=0) / H + eps)
    g = tl.load(norm_ptr + kk).to(tl.float32)
    h = round_to(round_to(x * inv_rms, dtype).to(tl.float32) * g, dtype).to(tl.float32)
    gate = round_to(tl.sum(h[None, :] * w_gate.to(tl.float32), axis=1), dtype).to(tl.float32)
    up = round_to(tl.sum(h[None, :] * w_up.to(tl.float32), axis=1), dtype).to(tl.float32)
    silu = round_to(gate / (1.0 + tl.exp(-gate)), dtype).to(tl.float32)
    act = round_to(silu * up, dtype).to(tl.float32)
    part = tl.sum(act[:, None] * w_down.to(tl.float32), axis=0)
    tl.atomic_add(acc_out + kk, part, sem="relaxed", scope="gpu")


def split_chain(xs, accs, norms, gate_ups, down_ts, block: int, warps: int) -> None:
    """MLP i reads x[i] (i = 0) or x[i - 1] and acc[i - 1], writes x[i] (i > 0) and adds into acc[i]; the
    chain's last output x[CHAIN] is formed by a last launch of the reading half alone (here: in torch)."""
    accs.zero_()
    for i in range(CHAIN):
        layer, before = i % LAYERS, max(i - 1, 0)  # (MLP 0 reads x[0] and no accumulator)
        _split_mlp[(F // block,)](
            accs[before], xs[before], xs[i], norms[layer], gate_ups[layer], down_ts[layer], accs[i], EPS,
            F=F, H=H, BF=block, FIRST=i == 0, PDL=True, num_warps=warps, **pdl_launch(True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--warps", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    _, norms, gate_ups, downs, x0, ref = start()
    down_ts = downs.transpose(1, 2).contiguous()
    xs = torch.zeros(CHAIN + 1, H, device="cuda", dtype=x0.dtype)
    xs[0] = x0
    accs = torch.zeros(CHAIN, H, device="cuda", dtype=torch.float32)
    print("memset of the accumulators ms", round(graph_ms(accs.zero_), 4), flush=True)
    ok = []
    for block in args.blocks:
        for warps in args.warps:
            try:
                split_chain(xs, accs, norms, gate_ups, down_ts, block, warps)
                torch.cuda.synchronize()
            except Exception as error:  # noqa: BLE001 (a configuration that does not compile is reported)
                print(f"S BF={block} W={warps}: {type(error).__name__}: {str(error)[:120]}", flush=True)
                continue
            last = (xs[CHAIN - 1].float() + accs[CHAIN - 1].to(x0.dtype).float()).to(x0.dtype)
            got = torch.cat([xs[:CHAIN], last[None]]).float()
            print(f"S BF={block} W={warps} vs reference, max |diff|", (got - ref.float()).abs().max().item(),
                  flush=True)
            ok.append((block, warps))
    xa = torch.zeros_like(xs)
    xa[0] = x0
    for r in range(args.rounds):
        ms = graph_ms(lambda: launches_chain(xa, norms, gate_ups, downs))
        print(f"round {r} A ms {ms:.3f} ({WEIGHT_BYTES / ms / 1e9:.2f} TB/s)", flush=True)
        for block, warps in ok:
            ms = graph_ms(lambda: split_chain(xs, accs, norms, gate_ups, down_ts, block, warps))
            print(f"round {r} S BF={block} W={warps} ms {ms:.3f} ({WEIGHT_BYTES / ms / 1e9:.2f} TB/s)", flush=True)


if __name__ == "__main__":
    main()
