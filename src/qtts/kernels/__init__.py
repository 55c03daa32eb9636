"""Fused Triton kernels for the CUDA fast path, each module beside the plain PyTorch reference it must equal.

Every kernel module exports `<name>_reference` (the documentation of the function), `<name>_triton` (the
fused kernel) and `<name>` (dispatch: the kernel where `enabled(device)`, else the reference), so the same
caller code runs on CPU in CI and fused on a GPU. Without a GPU, the Triton versions run through Triton's
interpreter (`TRITON_INTERPRET=1`, set here on import), which is how CI tests them.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # Triton cannot compile without a GPU; its interpreter runs the kernels on CPU tensors (the tests do).
    # Decided here, before any kernel is decorated, so the import order of callers does not matter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # CPU-only installs: the references still work
    triton = tl = libdevice = None
try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # no grid dependency control in this Triton: PDL stays off
    gdc_launch_dependents = gdc_wait = None


def available() -> bool:
    """True when Triton imports (compiled on CUDA, or interpreted on CPU under TRITON_INTERPRET=1)."""
    return triton is not None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def enabled(device: torch.device | str | None = None) -> bool:
    """True where dispatch picks the fused kernels: a CUDA device with Triton (compiled, not interpreted)."""
    if triton is None or interpreted():
        return False
    device = torch.device("cuda" if device is None else device)
    return device.type == "cuda" and torch.cuda.is_available()


def pdl_supported(device: torch.device | str | None = None) -> bool:
    """True where compiled kernels may use programmatic dependent launch (PDL): Hopper (compute capability
    9) or later, and a Triton with grid dependency control, unless `QTTS_PDL=0` turns it off (to rule it
    out, or for a driver where it misbehaves)."""
    if not enabled(device) or gdc_wait is None or os.environ.get("QTTS_PDL", "1") == "0":
        return False
    return torch.cuda.get_device_capability(torch.device("cuda" if device is None else device))[0] >= 9


def pdl_launch(pdl: bool) -> dict:
    """Launch options of a kernel that calls `wait_for_previous(PDL)`: with `pdl`, it is launched as a
    programmatic dependent and may start while the kernel before it finishes."""
    if pdl and gdc_wait is None:
        from qtts.errors import InputError

        raise InputError("this Triton has no grid dependency control; programmatic dependent launch is off")
    return {"launch_pdl": True} if pdl else {}


def jit(fn):
    """`triton.jit`, or without Triton a stub that says why the kernel cannot run."""
    if triton is not None:
        return triton.jit(fn)

    return _MissingKernel(fn.__name__)


class _MissingKernel:
    def __init__(self, name: str):
        self.name = name

    def __getitem__(self, grid):
        from qtts.errors import QttsError

        raise QttsError(f"kernel {self.name} needs Triton; install qtts[gpu] or use the reference path")


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def cdiv(n: int, d: int) -> int:
    return -(-n // d)


def use_libdevice() -> bool:
    """Compiled kernels take sin/cos from libdevice: the fast hardware forms lose accuracy on RoPE angles of
    thousands of radians. The interpreter has no libdevice and uses numpy's (accurate) functions instead."""
    return not interpreted()


@jit
def wait_for_previous(PDL: tl.constexpr):
    """Under PDL, block until the kernel launched before this one has finished and its writes are visible,
    then let the next kernel start launching. A PDL kernel calls it before it writes anything (earlier, it
    may only read what no recent kernel writes, such as weights); since every PDL kernel waits before it
    finishes, finishing still orders the whole chain. Without PDL it is nothing."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@jit
def sin(x, LIBDEVICE: tl.constexpr):
    if LIBDEVICE:
        return libdevice.sin(x)
    else:
        return tl.sin(x)


@jit
def cos(x, LIBDEVICE: tl.constexpr):
    if LIBDEVICE:
        return libdevice.cos(x)
    else:
        return tl.cos(x)


@jit
def round_to(x, dtype: tl.constexpr):
    """float32 `x` rounded to nearest even in `dtype`, as PyTorch rounds. Done by hand for bfloat16 because
    Triton's interpreter truncates that cast (compiled code rounds; the bit trick agrees with it)."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)
    else:
        return x.to(dtype)
