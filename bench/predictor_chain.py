"""The task of issue 14's persistent-kernel probes (barrier_probe.py, stream_probe.py): the code predictor's
MLP at batch 1 (x [1024] -> RMSNorm -> gate/up [6144 x 1024] -> silu(gate) * up [3072] -> down [1024 x 3072]
+ x), 75 in a row over 5 distinct layers' weights as a frame cycles through them (15 steps x 5 layers; the
1.7B's predictor, bf16): its weights, the reference chain, and the frame's own path to beat."""

import sys
from pathlib import Path

import torch

from kernel_probe import graph_ms

sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))  # after PYTHONPATH: an older tree wins
from qtts.kernels.linear import fused_linear_reference, fused_linear_triton  # noqa: E402

H, F, LAYERS, CHAIN = 1024, 3072, 5, 75
EPS = 1e-6
WEIGHT_BYTES = CHAIN * (2 * F * H + H * F) * 2  # read by one chain


def weights(device: str = "cuda"):
    """(norms [LAYERS, H], gate_ups [LAYERS, 2F, H], downs [LAYERS, H, F], x0 [H]), bf16, seeded."""
    torch.manual_seed(0)
    dt = torch.bfloat16
    norms = (1 + 0.2 * torch.randn(LAYERS, H, device=device)).to(dt)
    gate_ups = (torch.randn(LAYERS, 2 * F, H, device=device) * H**-0.5).to(dt)
    downs = (torch.randn(LAYERS, H, F, device=device) * F**-0.5).to(dt)
    x0 = torch.randn(H, device=device).to(dt)
    return norms, gate_ups, downs, x0


def reference_chain(norms, gate_ups, downs, x0) -> torch.Tensor:
    """xs [CHAIN + 1, H]: x0 and the output of each MLP, by the eager reference ops."""
    xs = [x0[None]]
    for i in range(CHAIN):
        layer = i % LAYERS
        gated = fused_linear_reference(xs[-1], gate_ups[layer], norm_weight=norms[layer], eps=EPS, gated=True)
        xs.append(fused_linear_reference(gated, downs[layer], residual=xs[-1]))
    return torch.cat(xs)


def launches_chain(xs, norms, gate_ups, downs) -> None:
    """The frame's path (variant A): two fused_linear_triton launches per MLP with PDL; MLP i reads xs[i] and
    writes xs[i + 1]."""
    for i in range(CHAIN):
        layer = i % LAYERS
        gated = fused_linear_triton(xs[i:i + 1], gate_ups[layer], norm_weight=norms[layer], eps=EPS, gated=True,
                                    pdl=True)
        fused_linear_triton(gated, downs[layer], residual=xs[i:i + 1], out=xs[i + 1:i + 2], pdl=True)


def start(device: str = "cuda"):
    """What both probes do first: print the device, make the weights and the reference chain, check the frame's
    path against it and time it (one CUDA graph). Returns (SMs, norms, gate_ups, downs, x0, reference)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print("SMs", sms, torch.cuda.get_device_name(0), flush=True)
    norms, gate_ups, downs, x0 = weights(device)
    ref = reference_chain(norms, gate_ups, downs, x0)
    print("reference max |x|", ref.float().abs().max().item(), flush=True)
    xs = torch.zeros(CHAIN + 1, H, device=device, dtype=x0.dtype)
    xs[0] = x0

    def run():
        launches_chain(xs, norms, gate_ups, downs)

    run()
    torch.cuda.synchronize()
    print("A vs reference, max |diff|", (xs.float() - ref.float()).abs().max().item(), flush=True)
    print("A ms (75 MLPs, graph)", round(graph_ms(run), 3), flush=True)
    return sms, norms, gate_ups, downs, x0, ref
