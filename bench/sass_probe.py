"""Static cost of a frame's per-layer kernels, on a machine without a GPU: each kernel compiled by Triton for
sm_90 (the H100's and H200's architecture) with the arguments a frame of `--rows` rows gives it, and its
registers, local memory (spills), shared memory and SASS instructions by opcode (read with the cuobjdump
that Triton ships).

At one row these kernels run a few programs of one serial instruction stream per thread, so the length of
that stream is a first measure of their latency where launches are not the cost: the eighth session's fused
frame attention was 2744 instructions against 664 + 808 for the two kernels it replaced, and 0.3 ms a frame
slower on the GPU. Timings still need the GPU (`engine_probe.py --parts frames`). The counts come from this
machine's Triton, which may compile differently from the device's; compare kernels within one run. Another
Triton runs it from its wheel: `pip install --no-deps --target DIR triton==3.6.0` (the device's), then
`PYTHONPATH=DIR`.

    python bench/sass_probe.py [--size 0.6b] [--rows 1]
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compile, even without a GPU (qtts.kernels would pick the interpreter)
sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))  # after PYTHONPATH: an older tree wins

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import qtts  # noqa: E402
from qtts.kernels import decode_attention, linear, qk_norm_rope  # noqa: E402
from qtts.kernels.decode_attention import decode_attention_triton  # noqa: E402
from qtts.kernels.linear import fused_linear_triton  # noqa: E402
from qtts.kernels.qk_norm_rope import qk_norm_rope_cache_triton  # noqa: E402
from qtts.testing import real_tts_config  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
POINTER_TYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int64: "*i64",
                 torch.int32: "*i32", torch.bool: "*i1", torch.uint8: "*u8"}


@contextmanager
def launches(module, names: tuple[str, ...], into: list):
    """While inside, `module.<name>[grid](...)` of each name records (kernel, args, kwargs) into `into`
    instead of launching."""
    kernels = {name: getattr(module, name) for name in names}

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: into.append((self.kernel, args, kwargs))

    for name, kernel in kernels.items():
        setattr(module, name, Recorder(kernel))
    try:
        yield
    finally:
        for name, kernel in kernels.items():
            setattr(module, name, kernel)


def compile_launch(kernel, args: tuple, kwargs: dict):
    """The kernel compiled for sm_90 with these arguments' types and constants."""
    kwargs = dict(kwargs)
    options = {key: kwargs.pop(key) for key in ("num_warps", "num_stages") if key in kwargs}
    kwargs.pop("launch_pdl", None)
    values = dict(zip(kernel.arg_names, args)) | kwargs
    signature, constants, attrs = {}, {}, {}
    for index, param in enumerate(kernel.params):
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name], constants[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = POINTER_TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -2**31 <= value < 2**31 else "i64"
        else:
            signature[param.name] = "fp32"
        # as the launch specialises: pointers and integers divisible by 16 are marked so, which lets the
        # compiler vectorise loads (without it every bf16 element is a load of its own)
        divisible = (value.data_ptr() if isinstance(value, torch.Tensor)
                     else value if isinstance(value, int) and not isinstance(value, bool) else 1)
        if not param.is_constexpr and not param.do_not_specialize and divisible % 16 == 0:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(kernel, signature, constants, attrs), target=TARGET, options=options)


def static_cost(compiled) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([TOOLS / "cuobjdump", "--dump-resource-usage", cubin.name], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([TOOLS / "cuobjdump", "-sass", cubin.name], capture_output=True, text=True,
                              check=True).stdout
    resources = dict(re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", usage))
    opcodes = Counter()
    for line in sass.splitlines():
        found = re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", line)
        if found:
            opcodes[found.group(1)] += 1
    return {"registers": int(resources.get("REG", 0)),
            "spilled": int(resources.get("STACK", 0)) + int(resources.get("LOCAL", 0)),
            "shared": int(resources.get("SHARED", 0)), "instructions": sum(opcodes.values()), "opcodes": opcodes}


def frame_launches(size: str, rows: int) -> list[tuple[str, tuple]]:
    """(label, recorded launch) of one talker layer and one predictor layer of a frame, with the shapes of
    `size`'s config (the recorded wrappers run on CPU tensors; nothing is computed)."""
    config = real_tts_config("custom_voice", size)
    talker, predictor = config["talker_config"], config["talker_config"]["code_predictor_config"]
    dt = torch.bfloat16
    out = []
    # the talker's cache as `qtts.load` makes it by default; the predictor's holds one position per code group
    # (`CodePredictor.num_positions`)
    talker_cache = inspect.signature(qtts.load).parameters["max_len"].default
    for stack, label, cache_len in ((talker, "talker", talker_cache),
                                    (predictor, "predictor", predictor["num_code_groups"])):
        hidden, heads, kv_heads = stack["hidden_size"], stack["num_attention_heads"], stack["num_key_value_heads"]
        head_dim, inter = stack["head_dim"], stack["intermediate_size"]
        x = torch.zeros(rows, 1, hidden, dtype=dt)
        norm = torch.ones(hidden, dtype=dt)
        qkv_w = torch.zeros((heads + 2 * kv_heads) * head_dim, hidden, dtype=dt)
        o_w, gate_up_w = torch.zeros(hidden, heads * head_dim, dtype=dt), torch.zeros(2 * inter, hidden, dtype=dt)
        down_w = torch.zeros(hidden, inter, dtype=dt)
        head_norm = torch.ones(head_dim, dtype=dt)
        inv_freq = torch.ones(head_dim // 2)
        positions = torch.zeros(rows, 1, dtype=torch.int64)
        caches = [torch.zeros(rows, kv_heads, cache_len, head_dim, dtype=dt) for _ in range(2)]
        lengths, starts = torch.ones(rows, dtype=torch.int32), torch.zeros(rows, dtype=torch.int32)
        attended = torch.zeros(rows, heads, 1, head_dim, dtype=dt)
        calls = [
            (("q/k/v product",), linear, ("_fused_linear_kernel",),
             lambda: fused_linear_triton(x, qkv_w, norm_weight=norm, pdl=True)),
            (("q/k norm, RoPE, cache",), qk_norm_rope, ("_qk_norm_rope_cache_kernel",),
             lambda: qk_norm_rope_cache_triton(*_qkv_views(rows, heads, kv_heads, head_dim), head_norm, head_norm,
                                               1e-6, inv_freq, positions, *caches, positions, pdl=True)),
            (("attention", "attention split merge"), decode_attention,
             ("_decode_attention_kernel", "_merge_splits_kernel"),
             lambda: decode_attention_triton(attended, *caches, lengths, head_dim**-0.5, starts, pdl=True)),
            (("o product + residual",), linear, ("_fused_linear_kernel",),
             lambda: fused_linear_triton(torch.zeros(rows, 1, heads * head_dim, dtype=dt), o_w, residual=x,
                                         pdl=True)),
            (("gate/up product + SwiGLU",), linear, ("_fused_linear_kernel",),
             lambda: fused_linear_triton(x, gate_up_w, norm_weight=norm, gated=True, pdl=True)),
            (("down product + residual",), linear, ("_fused_linear_kernel",),
             lambda: fused_linear_triton(torch.zeros(rows, 1, inter, dtype=dt), down_w, residual=x, pdl=True)),
        ]
        for names, module, kernel_names, call in calls:
            recorded = []
            with launches(module, kernel_names, recorded):
                call()
            # (the merge runs only where the cache is split)
            out += [(f"{label}: {name}", launch) for name, launch in zip(names, recorded)]
    return out


def _qkv_views(rows: int, heads: int, kv_heads: int, head_dim: int):
    qkv = torch.zeros(rows, 1, (heads + 2 * kv_heads) * head_dim, dtype=torch.bfloat16)
    parts = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    return (t.unflatten(-1, (-1, head_dim)) for t in parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.6b", choices=["0.6b", "1.7b"])
    parser.add_argument("--rows", type=int, default=1, choices=[1, 2],
                        help="rows of the frame (more rows take the tile kernels, not compiled here)")
    args = parser.parse_args()
    print(f"Triton {triton.__version__}, sm_90, {args.size}, {args.rows} row(s)")
    print("| kernel | registers | stack bytes (spills) | shared bytes | SASS instructions | most frequent |")
    print("|---|---|---|---|---|---|")
    for label, (kernel, call_args, kwargs) in frame_launches(args.size, args.rows):
        cost = static_cost(compile_launch(kernel, call_args, kwargs))
        top = ", ".join(f"{op} {n}" for op, n in cost["opcodes"].most_common(5))
        print(f"| {label} | {cost['registers']} | {cost['spilled']} | {cost['shared']} | "
              f"{cost['instructions']} | {top} |", flush=True)


if __name__ == "__main__":
    main()
