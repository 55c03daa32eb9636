"""Audio in the forms the official package accepts: a path, an http(s) URL, a base64 string (raw or a
`data:` URL), or `(array, sample_rate)`; turned into what `qtts.audio` reads (a path, bytes, a tuple)."""

from __future__ import annotations

import base64
import binascii
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ..errors import InputError

DOWNLOAD_TIMEOUT_S = 30
DOWNLOAD_MAX_BYTES = 64 * 2**20  # a minute of 24 kHz float wav is 6 MB; anything this big is not a clip
_BASE64 = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$")
_MIN_BASE64_CHARS = 256  # the official heuristic's bound: shorter strings are paths


def audio_source(audio):
    """A `qtts.audio` source for one official audio input."""
    if isinstance(audio, tuple):
        return audio
    if isinstance(audio, np.ndarray):
        raise InputError("a numpy waveform needs its sample rate: pass (audio, sample_rate)")
    if isinstance(audio, Path):
        return audio
    if not isinstance(audio, str):
        raise InputError(f"unsupported audio input of type {type(audio).__name__}: pass a path, a URL, "
                         "a base64 string or (audio, sample_rate)")
    if _is_url(audio):
        return _download(audio)
    if audio.startswith("data:"):
        return _from_base64(audio.split(",", 1)[-1])
    # Base64 may contain "/", so unlike the official heuristic an existing file wins, then the alphabet decides.
    if len(audio) >= _MIN_BASE64_CHARS and not os.path.exists(audio) and _BASE64.match(audio):
        return _from_base64(audio)
    return audio


def _is_url(text: str) -> bool:
    parts = urlparse(text)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read(DOWNLOAD_MAX_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise InputError(f"cannot download reference audio from {url}: {exc}") from None
    if len(data) > DOWNLOAD_MAX_BYTES:
        raise InputError(f"audio at {url} is larger than {DOWNLOAD_MAX_BYTES // 2**20} MB; trim it to a clip")
    return data


def _from_base64(text: str) -> bytes:
    try:
        # Padding is often stripped in transit; add it back, and accept the URL-safe alphabet too.
        padded = "".join(text.split())
        padded += "=" * (-len(padded) % 4)
        return base64.b64decode(padded, altchars=b"-_" if ("-" in padded or "_" in padded) else None)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"audio string is neither a file path, a URL nor valid base64 ({exc})") from None
