"""What both peer runners share: the measurement definitions of qtts.bench, loaded by file path.

Each peer runs in its own process and wheel set (transformers 4.57.3 or 5.16.1), so the qtts package and its
dependencies must not be imported there; qtts/bench.py imports only the standard library at load time.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

_BENCH_PY = Path(__file__).resolve().parents[1] / "src" / "qtts" / "bench.py"
_spec = importlib.util.spec_from_file_location("qtts_bench_definitions", _BENCH_PY)
measure = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = measure  # dataclasses look their module up by name
_spec.loader.exec_module(measure)


def parse_args(description: str) -> argparse.Namespace:
    return measure.parse_args(None, None, description)


def dtype_for(device: str):
    import torch

    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def decode_ms_per_frame(decode, frames: int, device: str, repeats: int = 3) -> "measure.Spread":
    """Codec decode time per frame on random codes (cost does not depend on code values).

    `decode(codes)` takes a (1, frames, 16) int64 tensor on `device`.
    """
    import torch

    codes = torch.randint(0, 2048, (1, frames, 16), device=device)
    decode(codes)  # warm-up: new shapes
    walls = [measure.synced_wall(lambda: decode(codes))[0] for _ in range(repeats)]
    return measure.Spread.of(1000.0 * w / frames for w in walls)


def versions(*names: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found
