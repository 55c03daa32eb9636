"""Audio response formats of the speech endpoint: whole files, and byte streams that start before the end.

PCM and WAV are written here (16-bit little-endian, mono), so a streamed response and a complete one carry
the very same samples; FLAC, MP3 and Ogg Opus go through libsndfile, and only when the installed build
can write them. Those three need the whole signal, so they are never streamed incrementally.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import soundfile

from ..audio import SAMPLE_RATE

BYTES_PER_SAMPLE = 2
# RIFF and data sizes of a WAV whose length is unknown when the header leaves: the largest value, which
# readers (libsndfile, ffmpeg, browsers) take as "read to the end of the stream".
UNKNOWN_SIZE = 0xFFFFFFFF


@dataclass(frozen=True)
class AudioFormat:
    name: str
    media_type: str
    incremental: bool  # bytes can leave chunk by chunk as samples are made
    soundfile_format: str | None = None  # libsndfile container, for formats written through it
    soundfile_subtype: str | None = None


_ALL = (
    AudioFormat("pcm", "audio/pcm", incremental=True),
    AudioFormat("wav", "audio/wav", incremental=True),
    AudioFormat("flac", "audio/flac", incremental=False, soundfile_format="FLAC", soundfile_subtype="PCM_16"),
    AudioFormat("mp3", "audio/mpeg", incremental=False, soundfile_format="MP3", soundfile_subtype="MPEG_LAYER_III"),
    AudioFormat("opus", "audio/ogg; codecs=opus", incremental=False, soundfile_format="OGG",
                soundfile_subtype="OPUS"),
)
# OpenAI also offers aac; libsndfile has no AAC encoder, so it is listed nowhere and answered with a 400.


def _writable(fmt: AudioFormat) -> bool:
    if fmt.soundfile_format is None:
        return True
    return (fmt.soundfile_format in soundfile.available_formats()
            and fmt.soundfile_subtype in soundfile.available_subtypes(fmt.soundfile_format))


FORMATS: dict[str, AudioFormat] = {fmt.name: fmt for fmt in _ALL if _writable(fmt)}
# OpenAI's default is mp3; where this libsndfile cannot write it, WAV is the safe default.
DEFAULT_FORMAT = "mp3" if "mp3" in FORMATS else "wav"


def pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as 16-bit little-endian PCM (clipped: wrap-around would be a loud click)."""
    scaled = np.round(np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0)
    return scaled.astype("<i2").tobytes()


def wav_header(num_samples: int | None, sample_rate: int = SAMPLE_RATE) -> bytes:
    """The 44-byte header of a 16-bit mono PCM WAV; `num_samples` None writes the streaming (unknown) sizes."""
    if num_samples is None:
        riff_size = data_size = UNKNOWN_SIZE
    else:
        data_size = num_samples * BYTES_PER_SAMPLE
        riff_size = 36 + data_size
    byte_rate = sample_rate * BYTES_PER_SAMPLE
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, byte_rate, BYTES_PER_SAMPLE, 16)
            + b"data" + struct.pack("<I", data_size))


def encode(samples: np.ndarray, fmt: AudioFormat, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A complete file of `samples` in `fmt`."""
    if fmt.name == "pcm":
        return pcm16(samples)
    if fmt.name == "wav":
        return wav_header(len(samples), sample_rate) + pcm16(samples)
    buffer = io.BytesIO()
    if fmt.soundfile_subtype == "PCM_16":
        # Lossless formats get the very integers the PCM and WAV responses carry.
        data = np.frombuffer(pcm16(samples), dtype="<i2")
    else:
        data = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    soundfile.write(buffer, data, sample_rate, format=fmt.soundfile_format, subtype=fmt.soundfile_subtype)
    return buffer.getvalue()


class StreamEncoder:
    """Bytes of an incremental format chunk by chunk: a WAV starts with the streaming header."""

    def __init__(self, fmt: AudioFormat, sample_rate: int = SAMPLE_RATE):
        if not fmt.incremental:
            raise ValueError(f"{fmt.name} cannot be encoded chunk by chunk")
        self._pending_header = wav_header(None, sample_rate) if fmt.name == "wav" else b""

    def encode(self, samples: np.ndarray) -> bytes:
        return self._take_header() + pcm16(samples)

    def finish(self) -> bytes:
        """What is still owed after the last chunk: the header, when no samples were made at all."""
        return self._take_header()

    def _take_header(self) -> bytes:
        header, self._pending_header = self._pending_header, b""
        return header
