"""Audio in and out of qtts: every signal constant, reference-audio loading, saving, and the mel front end.

Reference audio is treated exactly as the official package treats it (soundfile decode to float32, channels
averaged, soxr "HQ" resampling padded to librosa's length), then checked so a bad clip fails here with a
clear message instead of producing a silent or garbled voice later.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import soundfile
import soxr
import torch

from .audio_formats import encode, format_for_path
from .errors import InputError

SAMPLE_RATE = 24000  # codec input/output and speaker-encoder rate
SAMPLES_PER_FRAME = 1920  # one 12.5 Hz codec frame = 80 ms
N_FFT = 1024
WIN_LENGTH = 1024
HOP_LENGTH = 256
N_MELS = 128
MEL_FMIN = 0.0
MEL_FMAX = 12000.0
LOG_MEL_FLOOR = 1e-5  # magnitudes are clamped here before the log
MAGNITUDE_EPS = 1e-9  # added under the square root of |STFT|^2, as the official front end does

REFERENCE_MIN_SECONDS = 1.0
REFERENCE_MAX_SECONDS = 60.0
# Files beyond these are no recording of one voice, and decoding them would take memory out of proportion.
MAX_SAMPLE_RATE = 384000
MAX_CHANNELS = 16
UNKNOWN_FRAMES = 2**63 - 1  # what libsndfile reports as the length of a stream whose header does not say
# Peak below -80 dBFS: nothing a speaker encoder could hear (catches digital silence and bare dither).
SILENCE_PEAK = 1e-4

AudioSource = Union[str, Path, bytes, tuple[np.ndarray, int]]


@dataclass(frozen=True, eq=False)
class Audio:
    """Mono float32 samples in [-1, 1] at `sample_rate`."""

    samples: np.ndarray
    sample_rate: int = SAMPLE_RATE

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate

    def save(self, path: str | Path) -> None:
        save_audio(path, self.samples, self.sample_rate)


def load_audio(source: AudioSource) -> np.ndarray:
    """Reference audio as float32 mono at 24 kHz.

    `source` is a file path, the bytes of an audio file (wav, flac, ogg, or anything libsndfile reads), or
    `(array, sample_rate)` with the array shaped [samples] or [samples, channels]. Raises `InputError` when
    the audio cannot be read, is empty, silent, not finite, or outside 1-60 s.

    Differences from the official loader: no URL or base64 strings (decode them to bytes first); paths in
    formats libsndfile cannot read are rejected (librosa would try audioread/ffmpeg); integer arrays are
    scaled to [-1, 1); stereo arrays work (the official wrapper's array path fails on them); the checks.
    """
    samples, sample_rate = _decode_mono(source, REFERENCE_MAX_SECONDS)
    _check_reference(samples, sample_rate)
    return resample(samples, sample_rate, SAMPLE_RATE)


def read_audio(source: AudioSource) -> np.ndarray:
    """Any audio as float32 mono at 24 kHz, from the sources `load_audio` takes, without its reference-clip
    checks: the codec encodes clips of any length. Raises `InputError` when the audio cannot be read, is
    empty or not finite."""
    samples, sample_rate = _decode_mono(source, None)
    if samples.size == 0:
        raise InputError("audio is empty: it has no samples")
    if not np.isfinite(samples).all():
        raise InputError("audio contains NaN or infinite samples")
    return resample(samples, sample_rate, SAMPLE_RATE)


def _decode_mono(source: AudioSource, max_seconds: float | None) -> tuple[np.ndarray, int]:
    samples, sample_rate = _decode(source, max_seconds)
    if samples.ndim == 2:
        samples = samples.mean(axis=-1)  # channels averaged, like the official loader
    return samples, sample_rate


def resample(samples: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """soxr "HQ" resampling, padded to ceil(len * ratio) samples.

    This is what librosa.resample (the official package's resampler, res_type "soxr_hq") computes: the same
    soxr call, then zero-padding to its target length. The result is sample-identical to the official one.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if orig_sr == target_sr:
        return samples
    out = soxr.resample(samples, orig_sr, target_sr, quality="HQ")
    length = int(np.ceil(samples.shape[-1] * (float(target_sr) / orig_sr)))
    if len(out) < length:
        out = np.pad(out, (0, length - len(out)))
    return np.ascontiguousarray(out[:length], dtype=np.float32)


def save_audio(path: str | Path, samples: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono `samples` in the format the file extension names (wav, flac, mp3, opus/ogg, pcm), with the
    encoder the server uses."""
    path = Path(path)
    fmt = format_for_path(path)
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().to("cpu", torch.float32).numpy()
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise InputError(f"cannot save audio of shape {samples.shape}: expected mono samples [n]")
    if not np.isfinite(samples).all():
        raise InputError(f"cannot save audio to {path.name!r}: it contains NaN or infinite samples")
    data = encode(samples, fmt, int(sample_rate))
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise InputError(f"cannot write {str(path)!r}: {exc.strerror}") from None


def _decode(source: AudioSource, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Samples ([n] or [n, channels], float32) and their rate, from any accepted source; files are read no
    further than `max_seconds` (None: to their end)."""
    if isinstance(source, tuple):
        return _from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise InputError("reference audio is empty: got 0 bytes")
        return _read_file(io.BytesIO(bytes(source)), "audio bytes", max_seconds)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"reference audio file not found: {str(path)!r}")
        return _read_file(path, repr(str(path)), max_seconds)
    raise InputError(
        f"unsupported reference audio of type {type(source).__name__}: "
        "pass a file path, the bytes of an audio file, or (samples, sample_rate)"
    )


def _read_file(file, name: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Mono float32 samples (channels averaged block by block) and their rate.

    The header is checked before anything is decoded, and decoding stops one block past `max_seconds`:
    a small, well-compressed file can hold hours of audio, which would otherwise be decoded whole.
    """
    try:
        with soundfile.SoundFile(file) as f:
            rate, channels = f.samplerate, f.channels
            if not 0 < rate <= MAX_SAMPLE_RATE:
                raise InputError(f"{name} has a sample rate of {rate} Hz; qtts reads up to {MAX_SAMPLE_RATE} Hz")
            if not 0 < channels <= MAX_CHANNELS:
                raise InputError(f"{name} has {channels} channels; qtts reads up to {MAX_CHANNELS}")
            if max_seconds is not None and 0 < f.frames < UNKNOWN_FRAMES and f.frames / rate > max_seconds:
                raise InputError(_too_long(f.frames / rate))
            # One frame past the limit tells "too long"; -1 reads to the end.
            budget = -1 if max_seconds is None else int(max_seconds * rate) + 1
            blocks = [block.mean(axis=-1) if channels > 1 else block[:, 0]
                      for block in f.blocks(blocksize=rate, frames=budget, dtype="float32", always_2d=True)]
    except RuntimeError as exc:  # soundfile's LibsndfileError: unknown container, codec or truncated data
        raise InputError(
            f"cannot read {name} as audio ({exc}); use a wav, flac, ogg or mp3 file"
        ) from None
    samples = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    if budget != -1 and len(samples) >= budget:
        raise InputError(_too_long(None))
    return samples, int(rate)


def _from_array(source: tuple) -> tuple[np.ndarray, int]:
    if len(source) != 2:
        raise InputError(f"reference audio tuple must be (samples, sample_rate), got {len(source)} items")
    samples, sample_rate = source
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    samples = np.asarray(samples)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise InputError(f"sample rate must be a positive integer number of Hz, got {sample_rate!r}")
    if samples.ndim not in (1, 2):
        raise InputError(f"reference audio array must be [samples] or [samples, channels], got shape {samples.shape}")
    if samples.ndim == 2 and samples.shape[1] > samples.shape[0]:
        raise InputError(
            f"reference audio array of shape {samples.shape} looks channels-first; "
            "pass it as [samples, channels] (transpose it)"
        )
    if np.issubdtype(samples.dtype, np.signedinteger):
        # Integer PCM is scaled to [-1, 1) as soundfile does for files (the official loader would keep raw
        # integer values, which are far out of range for the mel front end).
        samples = samples.astype(np.float64) / (np.iinfo(samples.dtype).max + 1.0)
    elif not np.issubdtype(samples.dtype, np.floating):
        raise InputError(f"reference audio array must hold numbers, got dtype {samples.dtype}")
    return samples.astype(np.float32), int(sample_rate)


def _check_reference(samples: np.ndarray, sample_rate: int) -> None:
    """Reject clips that would give a meaningless voice; all checks run before resampling."""
    if samples.size == 0:
        raise InputError("reference audio is empty: it has no samples")
    if not np.isfinite(samples).all():
        raise InputError("reference audio contains NaN or infinite samples")
    duration = len(samples) / sample_rate
    if duration < REFERENCE_MIN_SECONDS:
        raise InputError(
            f"reference audio is too short: {duration:.2f} s; at least {REFERENCE_MIN_SECONDS:g} s is needed "
            "(3-10 s of clear speech works best)"
        )
    if duration > REFERENCE_MAX_SECONDS:
        raise InputError(_too_long(duration))
    if np.abs(samples).max() < SILENCE_PEAK:
        raise InputError("reference audio is silent: its peak is below -80 dBFS")


def _too_long(duration: float | None) -> str:
    length = f"{duration:.1f} s exceeds" if duration is not None else "it is longer than"
    return (f"reference audio is too long: {length} the {REFERENCE_MAX_SECONDS:g} s limit; "
            "trim it (3-10 s of clear speech works best)")


# ---- mel front end of the speaker encoder ---------------------------------------------------------------

def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_step = math.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * (200.0 / 3))


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    fmin: float = MEL_FMIN,
    fmax: float = MEL_FMAX,
) -> np.ndarray:
    """Slaney-normalised triangular mel filters [n_mels, n_fft // 2 + 1], float32 (librosa's default filters).

    Computed in float64 and rounded once; each triangle is scaled by 2 / (its bandwidth in Hz) so every
    band has about the same energy.
    """
    bin_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges_hz)
    offsets = edges_hz[:, None] - bin_hz[None, :]  # edge minus bin frequency
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return filters.astype(np.float32)


_FILTERBANK = mel_filterbank()


@functools.lru_cache(maxsize=8)
def _filterbank_on(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Kept on the device: a host-to-device copy per call would block the GPU voice-creation path.
    return torch.from_numpy(_FILTERBANK).to(device=device, dtype=dtype)


def mel_spectrogram(samples: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Log-mel features [..., frames, 128] of 24 kHz audio [..., n], frames = n // 256.

    The speaker encoder's front end: reflect-pad 384 samples per side, |STFT| with a periodic Hann window
    (no centring), Slaney mel filters, natural log floored at 1e-5. Computed in the input's float dtype
    (float32 for numpy input), on the input's device. The official model computes these in float32 and
    casts them to the speaker encoder's dtype afterwards; do the same for bf16 models.
    """
    if isinstance(samples, np.ndarray):
        samples = torch.from_numpy(np.asarray(samples, dtype=np.float32))
    if not samples.is_floating_point():
        samples = samples.float()
    pad = (N_FFT - HOP_LENGTH) // 2
    if samples.shape[-1] <= pad:
        raise InputError(
            f"audio is too short for mel features: {samples.shape[-1]} samples, need more than {pad}"
        )
    lead_shape = samples.shape[:-1]
    flat = samples.reshape(-1, 1, samples.shape[-1])
    # Padding (N_FFT - HOP) / 2 per side instead of centring gives exactly n // HOP frames.
    flat = torch.nn.functional.pad(flat, (pad, pad), mode="reflect").squeeze(1)
    window = torch.hann_window(WIN_LENGTH, dtype=samples.dtype, device=samples.device)
    spec = torch.stft(flat, N_FFT, hop_length=HOP_LENGTH, win_length=WIN_LENGTH, window=window,
                      center=False, onesided=True, return_complex=True)
    magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + MAGNITUDE_EPS)
    filters = _filterbank_on(samples.device, samples.dtype)
    mel = torch.log(torch.clamp(torch.matmul(filters, magnitude), min=LOG_MEL_FLOOR))
    return mel.transpose(-1, -2).reshape(*lead_shape, mel.shape[-1], N_MELS)
