"""The official package's keyword arguments, and what each becomes in qtts.

`from_pretrained` keywords are Hugging Face loading options; generation keywords are transformers
`generate()` options. Those with a qtts equivalent are mapped; those without one are accepted and ignored
with one debug line (the official package, too, drops generation keywords it does not know); a value
qtts cannot honour is an `InputError`.
"""

from __future__ import annotations

import logging

import torch

from ..errors import InputError

logger = logging.getLogger("qtts.compat")

# The official wrapper's generation keywords; qtts's sampling settings carry the same names.
SAMPLING_KEYWORDS = frozenset({
    "do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "subtalker_dosample",
    "subtalker_temperature", "subtalker_top_k", "subtalker_top_p", "max_new_tokens",
})
# qtts's own sampling settings, passed through for code that has moved on to them.
QTTS_SAMPLING_KEYWORDS = frozenset({"seed", "min_new_tokens"})


def load_options(kwargs: dict) -> dict:
    """`qtts.load` keywords (`device`, `dtype`, `engine`) for official `from_pretrained` keywords."""
    kwargs = dict(kwargs)
    options = {"device": device_of(kwargs.pop("device_map", None)), "dtype": dtype_of(kwargs)}
    if "engine" in kwargs:  # qtts's own choice of generation loop
        options["engine"] = kwargs.pop("engine")
    if kwargs.pop("attn_implementation", None) is not None:
        logger.debug("from_pretrained: attn_implementation ignored; qtts runs its own attention kernels")
    ignore("from_pretrained", kwargs)
    return options


def device_of(device_map) -> torch.device | None:
    """The one device a Hugging Face `device_map` names; None ("auto" or absent) lets qtts choose."""
    if device_map is None or device_map == "auto":
        return None
    if isinstance(device_map, dict):
        devices = {str(device_of(value)) for value in device_map.values()}
        if len(devices) != 1:
            raise InputError(f"device_map={device_map!r} spreads the model over several devices; qtts runs "
                             "the whole model on one: pass one device such as 'cuda:0' or 'cpu'")
        return torch.device(devices.pop())
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        return torch.device("cuda", device_map)  # Hugging Face reads a bare integer as a GPU index
    if isinstance(device_map, (str, torch.device)):
        try:
            return torch.device(device_map)
        except RuntimeError:
            pass
    raise InputError(f"device_map={device_map!r} is not a device; pass e.g. 'cuda:0', 'cpu' or 'auto'")


def dtype_of(kwargs: dict) -> torch.dtype | None:
    """The `dtype` (or its older name `torch_dtype`) taken out of `kwargs`; None ("auto") lets qtts choose."""
    given = {name: kwargs.pop(name) for name in ("dtype", "torch_dtype") if kwargs.get(name) is not None}
    values = {str(value) for value in given.values()}
    if len(values) > 1:
        raise InputError(f"dtype and torch_dtype disagree ({given['dtype']} and {given['torch_dtype']}); pass one")
    if not given:
        return None
    value = next(iter(given.values()))
    if value == "auto":
        return None
    dtype = getattr(torch, value, None) if isinstance(value, str) else value
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"dtype={value!r} is not a floating-point torch dtype; pass e.g. torch.bfloat16")
    return dtype


def sampling_options(kwargs: dict, eos_token_id: int) -> dict:
    """qtts sampling keywords for official generation keywords; the talker's EOS id is the only one allowed."""
    kwargs = dict(kwargs)
    eos = kwargs.pop("eos_token_id", None)
    if eos is not None and eos != eos_token_id:
        raise InputError(f"eos_token_id={eos!r}: qtts stops at the checkpoint's codec EOS id {eos_token_id}; "
                         "leave eos_token_id out")
    sampling = {name: kwargs.pop(name) for name in list(kwargs) if name in SAMPLING_KEYWORDS | QTTS_SAMPLING_KEYWORDS}
    ignore("generation", kwargs)
    return sampling


def ignore(where: str, kwargs: dict) -> None:
    if kwargs:
        logger.debug("%s: no qtts equivalent, ignored: %s", where, ", ".join(sorted(kwargs)))


def texts_of(text) -> list[str]:
    """One text or a list of texts (the official batch form), as a list."""
    texts = text if isinstance(text, list) else [text]
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InputError(f"text must be a string or a non-empty list of strings, got {type(text).__name__}")
    return texts


def per_text(name: str, value, count: int, default=None) -> list:
    """One value per text, as the official wrapper spreads them: a list is per text (one entry is shared),
    None is `default`, anything else is shared by every text."""
    if not isinstance(value, list):
        return [default if value is None else value] * count
    if len(value) == 1:
        return value * count
    if len(value) != count:
        raise InputError(f"{name} has {len(value)} entries for {count} texts")
    return list(value)
