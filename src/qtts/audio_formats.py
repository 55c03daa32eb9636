"""Audio file formats qtts writes, for files, HTTP responses and byte streams that start before the end.

PCM and WAV are written here (16-bit little-endian, mono), so a streamed response and a complete one carry
the very same samples; FLAC, MP3 and Ogg Opus go through libsndfile, and only when the installed build
can write them. MP3 and Opus stream too: libsndfile writes them front to back into a buffer that is
drained as it fills. FLAC does not: its header is rewritten at the end, and readers need it.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from .errors import InputError

BYTES_PER_SAMPLE = 2
# RIFF and data sizes of a WAV whose length is unknown when the header leaves: the largest value, which
# readers (libsndfile, ffmpeg, browsers) take as "read to the end of the stream".
UNKNOWN_SIZE = 0xFFFFFFFF


@dataclass(frozen=True)
class AudioFormat:
    name: str
    media_type: str
    extensions: tuple[str, ...]  # file name endings that mean this format, the usual one first
    incremental: bool  # bytes can leave chunk by chunk as samples are made
    soundfile_format: str | None = None  # libsndfile container, for formats written through it
    soundfile_subtype: str | None = None
    soundfile_options: dict = field(default_factory=dict)  # more keywords of soundfile.SoundFile


_ALL = (  # in the order OpenAI lists them
    # Constant bitrate: every MP3 frame has the size its header says, so a stream without the length tag
    # (which libsndfile writes at the front when it closes) is still read to its end. 0.5: 80 kbit/s.
    AudioFormat("mp3", "audio/mpeg", (".mp3",), incremental=True, soundfile_format="MP3",
                soundfile_subtype="MPEG_LAYER_III",
                soundfile_options={"bitrate_mode": "CONSTANT", "compression_level": 0.5}),
    AudioFormat("opus", "audio/ogg; codecs=opus", (".opus", ".ogg"), incremental=True, soundfile_format="OGG",
                soundfile_subtype="OPUS"),
    AudioFormat("flac", "audio/flac", (".flac",), incremental=False, soundfile_format="FLAC",
                soundfile_subtype="PCM_16"),
    AudioFormat("wav", "audio/wav", (".wav",), incremental=True),
    AudioFormat("pcm", "audio/pcm", (".pcm",), incremental=True),
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


def format_for_path(path: str | Path) -> AudioFormat:
    """The format a file name's extension asks for; `InputError` when qtts cannot write it here."""
    suffix = Path(path).suffix.lower()
    for fmt in _ALL:
        if suffix in fmt.extensions:
            if fmt.name not in FORMATS:
                raise InputError(f"cannot write {Path(path).name!r}: the installed libsndfile "
                                 f"({soundfile.__libsndfile_version__}) has no {fmt.name} encoder; use one of "
                                 f"{', '.join(f.extensions[0] for f in FORMATS.values())}")
            return fmt
    given = f"extension {suffix!r}" if suffix else "no extension"
    raise InputError(f"cannot write audio to {Path(path).name!r}: {given}; use one of "
                     f"{', '.join(ext for fmt in FORMATS.values() for ext in fmt.extensions)}")


def pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as 16-bit little-endian PCM (clipped: wrap-around would be a loud click)."""
    scaled = np.round(np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0)
    return scaled.astype("<i2").tobytes()


def wav_header(num_samples: int | None, sample_rate: int) -> bytes:
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


def encode(samples: np.ndarray, fmt: AudioFormat, sample_rate: int) -> bytes:
    """A complete file of `samples` in `fmt`."""
    if fmt.name == "pcm":
        return pcm16(samples)
    if fmt.name == "wav":
        return wav_header(len(samples), sample_rate) + pcm16(samples)
    buffer = io.BytesIO()
    soundfile.write(buffer, _soundfile_data(samples, fmt), sample_rate, format=fmt.soundfile_format,
                    subtype=fmt.soundfile_subtype, **fmt.soundfile_options)
    return buffer.getvalue()


def _soundfile_data(samples: np.ndarray, fmt: AudioFormat) -> np.ndarray:
    if fmt.soundfile_subtype == "PCM_16":
        # Lossless formats get the very integers the PCM and WAV responses carry.
        return np.frombuffer(pcm16(samples), dtype="<i2")
    return np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)


class StreamEncoder:
    """Bytes of an incremental format chunk by chunk: `encode` each chunk, then `finish` once.

    A WAV starts with the streaming header; MP3 and Opus bytes are those libsndfile has written so far.
    """

    def __init__(self, fmt: AudioFormat, sample_rate: int):
        if not fmt.incremental:
            raise ValueError(f"{fmt.name} cannot be encoded chunk by chunk")
        self._fmt = fmt
        self._pending_header = wav_header(None, sample_rate) if fmt.name == "wav" else b""
        self._file = None
        if fmt.soundfile_format is not None:
            self._sink = _Drain()
            self._file = soundfile.SoundFile(self._sink, "w", sample_rate, 1, format=fmt.soundfile_format,
                                             subtype=fmt.soundfile_subtype, **fmt.soundfile_options)

    def encode(self, samples: np.ndarray) -> bytes:
        if self._file is not None:
            self._file.write(_soundfile_data(samples, self._fmt))
            return self._sink.take()
        return self._take_header() + pcm16(samples)

    def finish(self) -> bytes:
        """What is still owed after the last chunk: the encoder's tail, or the WAV header when no samples
        were made at all."""
        if self._file is not None:
            self._file.close()
            return self._sink.take()
        return self._take_header()

    def _take_header(self) -> bytes:
        header, self._pending_header = self._pending_header, b""
        return header


class _Drain:
    """A write-only file for libsndfile whose bytes are taken as they come.

    Writes behind the end are dropped: they patch bytes that have already left (the MP3 length tag that
    libsndfile writes at the front when it closes), and a stream's readers do without them.
    """

    def __init__(self):
        self._pending = bytearray()
        self._end = 0  # bytes written in order so far
        self._position = 0

    def write(self, data) -> int:
        data = bytes(data)
        if self._position == self._end:
            self._pending += data
            self._end += len(data)
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        origin = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._end}[whence]
        self._position = origin + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        return b""  # nothing is read back: the bytes have left

    def take(self) -> bytes:
        data, self._pending = bytes(self._pending), bytearray()
        return data
