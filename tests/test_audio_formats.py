"""Audio formats: every format writes a file its readers decode to the same audio, and the streamed formats'
bytes, joined, are such a file too."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from qtts.audio_formats import FORMATS, StreamEncoder, encode, format_for_path, pcm16
from qtts.errors import InputError

RATE = 24000
CHUNK = 1920  # one 80 ms frame


def tone(seconds: float = 1.6) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.4 * np.sin(2 * np.pi * 330 * t) * np.minimum(1, 4 * t)).astype(np.float32)


def decoded(data: bytes, fmt: str) -> np.ndarray:
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert rate == RATE
    return samples


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / RATE)[spectrum.argmax()])


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def best_shift(got: np.ndarray, want: np.ndarray, most: int = 4000) -> int:
    """How many leading samples `got` has before it lines up with `want` (an encoder's priming delay)."""
    span = len(want) // 2
    return min(range(most), key=lambda shift: np.abs(got[shift:shift + span] - want[:span]).mean())


def streamed(fmt: str, samples: np.ndarray, chunk_frames=(1, 1, 2, 4, 8)) -> list[bytes]:
    """Bytes per chunk, chunks ramping up as the server's decoder makes them, then the encoder's tail."""
    encoder = StreamEncoder(FORMATS[fmt], RATE)
    pieces, start = [], 0
    sizes = iter(chunk_frames)
    while start < len(samples):
        size = next(sizes, chunk_frames[-1]) * CHUNK
        pieces.append(encoder.encode(samples[start:start + size]))
        start += size
    pieces.append(encoder.finish())
    return pieces


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_decodes_to_the_audio_it_was_given(fmt):
    samples = tone()
    got = decoded(encode(samples, FORMATS[fmt], RATE), fmt)
    if fmt in ("pcm", "wav", "flac"):
        np.testing.assert_array_equal(got, np.frombuffer(pcm16(samples), dtype="<i2") / np.float32(32768))
    else:  # lossy, with the length restored from the container's own tags; Opus does not keep the phase
        assert len(got) == len(samples)
        assert dominant_hz(got) == pytest.approx(330, abs=2)
        assert rms(got) == pytest.approx(rms(samples), rel=0.1)


@pytest.mark.parametrize("fmt", [f for f in ("mp3", "opus") if f in FORMATS])
def test_streamed_lossy_bytes_joined_are_a_valid_file_of_the_same_audio(fmt):
    samples = tone()
    pieces = streamed(fmt, samples)
    assert sum(map(len, pieces[:3])) > 0 or fmt == "opus"  # mp3 leaves with the first frame
    assert len([p for p in pieces if p]) > 1  # bytes left before the end: it streamed
    got = decoded(b"".join(pieces), fmt)
    whole = decoded(encode(samples, FORMATS[fmt], RATE), fmt)
    # A stream cannot carry the length tag an encoder writes at the front last, so an MP3 stream keeps the
    # encoder's priming delay and its last frame's padding: under 0.1 s. Past the delay, the same samples.
    assert len(samples) <= len(got) <= len(samples) + 0.1 * RATE
    shift = best_shift(got, whole)
    assert shift < 0.1 * RATE
    np.testing.assert_allclose(got[shift:shift + len(whole)], whole[:len(got) - shift], atol=1e-4)


def test_a_wav_stream_starts_with_the_streaming_header_and_carries_the_same_samples():
    samples = tone()
    data = b"".join(streamed("wav", samples))
    assert data[4:8] == data[40:44] == b"\xff\xff\xff\xff"
    assert data[44:] == pcm16(samples)


def test_flac_is_never_streamed():
    with pytest.raises(ValueError, match="flac"):
        StreamEncoder(FORMATS["flac"], RATE)


@pytest.mark.parametrize("name, fmt", [("a.wav", "wav"), ("b.FLAC", "flac"), ("c.mp3", "mp3"), ("d.opus", "opus"),
                                       ("e.ogg", "opus"), ("f.pcm", "pcm")])
def test_file_names_pick_their_format(name, fmt):
    if fmt not in FORMATS:
        pytest.skip(f"this libsndfile cannot write {fmt}")
    assert format_for_path(name).name == fmt


@pytest.mark.parametrize("name, message", [("out.aac", "extension '.aac'"), ("out", "no extension")])
def test_unknown_file_names_are_refused_listing_the_formats(name, message):
    with pytest.raises(InputError, match=f"{message}; use one of .mp3, .opus, .ogg, .flac, .wav, .pcm"):
        format_for_path(name)
