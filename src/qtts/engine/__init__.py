"""Generation engines: the plain PyTorch reference loop (`reference`) and the fast paths built beside it."""

from .reference import generate_codes, generate_codes_batch

__all__ = ["generate_codes", "generate_codes_batch"]
