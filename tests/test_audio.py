"""audio.py against librosa and the official package: filterbank, mel front end, reference loading, saving."""

from __future__ import annotations

import io
import types

import numpy as np
import pytest
import soundfile
import torch

from oracle import official
from qtts import audio
from qtts.errors import InputError


def sweep(seconds: float, sample_rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A 100 Hz -> 8 kHz log sweep plus a little noise, [n] or [n, channels], float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0, f1 = 100.0, min(8000.0, sample_rate / 2.2)
    phase = 2 * np.pi * f0 * seconds / np.log(f1 / f0) * (np.exp(t / seconds * np.log(f1 / f0)) - 1)
    tracks = [0.5 * np.sin(phase + c) + 0.05 * rng.standard_normal(len(t)) for c in range(channels)]
    out = np.stack(tracks, axis=-1) if channels > 1 else tracks[0]
    return out.astype(np.float32)


def encoded(samples: np.ndarray, sample_rate: int, file_format: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format=file_format, subtype=subtype)
    return buffer.getvalue()


def official_reference(source) -> np.ndarray:
    """What the official package makes of reference audio at 24 kHz.

    Paths go through the model wrapper's loader and resampling (the speaker-encoder input); arrays through
    the speech tokenizer's (the wrapper's own array path crashes on stereo input: it assigns into a tuple).
    """
    import librosa

    qwen_tts = official()
    if isinstance(source, tuple):
        tokenizer = object.__new__(qwen_tts.Qwen3TTSTokenizer)  # its loader reads only this attribute
        tokenizer.feature_extractor = types.SimpleNamespace(sampling_rate=audio.SAMPLE_RATE)
        [wav] = tokenizer._normalize_audio_inputs([source[0]], sr=source[1])
        return wav
    wrapper = object.__new__(qwen_tts.Qwen3TTSModel)  # its loaders use no instance state
    [(wav, sr)] = wrapper._normalize_audio_inputs([source])
    if sr != audio.SAMPLE_RATE:
        wav = librosa.resample(y=wav.astype(np.float32), orig_sr=int(sr), target_sr=audio.SAMPLE_RATE)
    return wav


def official_mel(samples: np.ndarray) -> torch.Tensor:
    """The official log-mel, called with the arguments `extract_speaker_embedding` passes: [1, frames, 128]."""
    official()
    from qwen_tts.core.models.modeling_qwen3_tts import mel_spectrogram

    return mel_spectrogram(torch.from_numpy(samples).unsqueeze(0), n_fft=1024, num_mels=128, sampling_rate=24000,
                           hop_size=256, win_size=1024, fmin=0, fmax=12000).transpose(1, 2)


# ---- filterbank and mel front end ----------------------------------------------------------------------

def test_mel_filterbank_equals_librosa_slaney_filters():
    import librosa

    expected = librosa.filters.mel(sr=24000, n_fft=1024, n_mels=128, fmin=0, fmax=12000)
    ours = audio.mel_filterbank()
    assert ours.shape == expected.shape == (128, 513)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sample_rate,n_mels,fmax", [(16000, 80, 8000.0), (22050, 64, 6000.0)])
def test_mel_filterbank_matches_librosa_at_other_settings(sample_rate, n_mels, fmax):
    import librosa

    expected = librosa.filters.mel(sr=sample_rate, n_fft=512, n_mels=n_mels, fmin=30.0, fmax=fmax)
    ours = audio.mel_filterbank(sample_rate, 512, n_mels, 30.0, fmax)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("length", [24000, 24000 * 3 + 137, 1000])
def test_mel_spectrogram_equals_official_front_end(length):
    # Digital silence and -100 dB noise exercise the magnitude epsilon and the log floor, not just the filters.
    rng = np.random.default_rng(length)
    quiet = length // 4
    samples = np.concatenate([
        np.zeros(quiet // 2, dtype=np.float32),
        (1e-5 * rng.standard_normal(quiet - quiet // 2)).astype(np.float32),
        sweep(1.0 + length / 24000, 24000, seed=length)[: length - quiet],
    ])
    expected = official_mel(samples)[0]  # [frames, 128] as extract_speaker_embedding builds it
    ours = audio.mel_spectrogram(samples)
    assert ours.shape == (length // audio.HOP_LENGTH, audio.N_MELS)
    assert ours.dtype == torch.float32
    assert (ours - expected).norm() / expected.norm() <= 1e-5
    assert (ours - expected).abs().max() <= 1e-4


def test_mel_spectrogram_keeps_leading_batch_dimensions():
    batch = np.stack([sweep(1.0, 24000, seed=s) for s in range(3)])
    stacked = audio.mel_spectrogram(torch.from_numpy(batch))
    assert stacked.shape == (3, 24000 // 256, 128)
    for i in range(3):
        torch.testing.assert_close(stacked[i], audio.mel_spectrogram(batch[i]), rtol=1e-6, atol=1e-6)


def test_mel_spectrogram_rejects_audio_shorter_than_its_padding():
    with pytest.raises(InputError, match="too short for mel features"):
        audio.mel_spectrogram(np.zeros(300, dtype=np.float32))


# ---- loading reference audio ---------------------------------------------------------------------------

@pytest.mark.parametrize("sample_rate", [24000, 16000, 44100])
def test_load_audio_from_path_equals_official_reference_audio(tmp_path, sample_rate):
    path = tmp_path / "ref.wav"
    soundfile.write(path, sweep(1.5, sample_rate), sample_rate, subtype="FLOAT")
    ours = audio.load_audio(path)
    expected = official_reference(str(path))
    assert ours.dtype == np.float32 and ours.ndim == 1
    assert len(ours) == len(expected) == int(np.ceil(1.5 * sample_rate * 24000 / sample_rate))
    np.testing.assert_array_equal(ours, expected)


def test_load_audio_mixes_stereo_down_like_the_official_loader(tmp_path):
    stereo = sweep(1.2, 44100, channels=2)
    path = tmp_path / "stereo.flac"
    soundfile.write(path, stereo, 44100, subtype="PCM_24")
    np.testing.assert_array_equal(audio.load_audio(path), official_reference(str(path)))
    np.testing.assert_array_equal(audio.load_audio((stereo, 44100)), official_reference((stereo, 44100)))


@pytest.mark.parametrize("file_format,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_load_audio_from_bytes_decodes_each_container(file_format, subtype):
    original = sweep(1.5, 16000, channels=2)
    data = encoded(original, 16000, file_format, subtype)
    loaded = audio.load_audio(data)
    assert loaded.dtype == np.float32
    assert len(loaded) == 36000
    # Lossy/quantised containers: compare with resampling the original, loosely (vorbis is lossy).
    reference = audio.resample(original.mean(axis=-1), 16000)
    tolerance = 0.05 if file_format == "OGG" else 1e-3
    assert np.sqrt(np.mean((loaded - reference) ** 2)) < tolerance


def test_load_audio_from_bytes_equals_loading_the_same_file(tmp_path):
    data = encoded(sweep(1.3, 22050), 22050, "FLAC")
    path = tmp_path / "ref.flac"
    path.write_bytes(data)
    np.testing.assert_array_equal(audio.load_audio(data), audio.load_audio(path))


def test_load_audio_resamples_a_tone_without_moving_its_pitch():
    rate = 44100
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(2 * rate) / rate)).astype(np.float32)
    loaded = audio.load_audio((tone, rate))
    # librosa's float length ceil(88200 * (24000 / 44100)) is 48001; we keep its length on purpose.
    assert len(loaded) in (48000, 48001)
    spectrum = np.abs(np.fft.rfft(loaded * np.hanning(len(loaded))))
    assert abs(np.argmax(spectrum) * 24000 / len(loaded) - 440.0) < 1.0


def test_load_audio_scales_integer_pcm_arrays_like_soundfile():
    floats = sweep(1.1, 24000)
    pcm = np.round(floats * 32767).astype(np.int16)
    np.testing.assert_allclose(audio.load_audio((pcm, 24000)), pcm / 32768.0, atol=1e-7)


@pytest.mark.parametrize(
    "source,message",
    [
        ((np.zeros(0, dtype=np.float32), 24000), "empty"),
        (b"", "empty"),
        ((np.zeros(48000, dtype=np.float32), 24000), "silent"),
        ((np.full(48000, 1e-6, dtype=np.float32), 24000), "silent"),
        ((np.where(np.arange(48000) == 7, np.nan, 0.1).astype(np.float32), 24000), "NaN or infinite"),
        ((np.where(np.arange(48000) == 7, np.inf, 0.1).astype(np.float32), 24000), "NaN or infinite"),
        ((sweep(0.5, 24000), 24000), r"too short: 0\.50 s; at least 1 s"),
        ((sweep(61.0, 8000), 8000), r"too long: 61\.0 s exceeds the 60 s limit"),
        ((sweep(1.5, 24000), 0), "sample rate must be a positive integer"),
        ((sweep(1.5, 24000, channels=2).T, 24000), "channels-first"),
        ((np.zeros((2, 2, 2)), 24000), "shape"),
        ((np.array(["a"] * 30000), 24000), "dtype"),
        (b"RIFF not really a wave file", "cannot read audio bytes as audio"),
        (12345, "unsupported reference audio of type int"),
        ("/nonexistent/ref.wav", "file not found"),
    ],
)
def test_load_audio_rejects_bad_reference_audio_naming_the_problem(source, message):
    with pytest.raises(InputError, match=message):
        audio.load_audio(source)


def test_load_audio_rejects_a_file_that_is_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are not samples")
    with pytest.raises(InputError, match="cannot read .*notes.wav.* as audio"):
        audio.load_audio(path)


def _flac_with_unknown_length(data: bytes) -> bytes:
    """The same FLAC with STREAMINFO's total-samples field zeroed, as a streaming encoder leaves it."""
    patched = bytearray(data)
    start = 8 + 13  # "fLaC", the block header, then 13 bytes into STREAMINFO: 4 bits of rate/bits, 36 of count
    patched[start] &= 0xF0
    patched[start + 1:start + 5] = bytes(4)
    return bytes(patched)


def test_long_reference_audio_is_refused_without_decoding_it_whole():
    import tracemalloc

    hour = np.zeros(24000 * 3600, dtype=np.int16)  # one hour of silence compresses to a small FLAC
    data = encoded(hour, 24000, "FLAC", "PCM_16")
    del hour
    unknown = _flac_with_unknown_length(data)
    assert soundfile.info(io.BytesIO(unknown)).frames > 24000 * 3600  # the header no longer tells
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="too long: 3600.0 s exceeds the 60 s limit"):
            audio.load_audio(data)
        # Without a length in the header, decoding stops one block past the limit.
        with pytest.raises(InputError, match="too long: it is longer than the 60 s limit"):
            audio.load_audio(unknown)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # An hour decoded as float32 is 345 MB; 61 s is 5.9 MB, plus the file and one block.
    assert peak < 2 * len(data) + 20 * 2**20, peak


@pytest.mark.parametrize("rate, channels, message", [
    (400_000, 1, "sample rate of 400000 Hz"),
    (24000, 20, "20 channels"),
])
def test_reference_files_beyond_any_recording_are_refused(rate, channels, message):
    data = encoded(np.zeros((rate // 10, channels), dtype=np.int16), rate, "WAV", "PCM_16")
    with pytest.raises(InputError, match=message):
        audio.load_audio(data)


def test_read_audio_takes_any_length_that_load_audio_refuses_as_a_reference():
    short = sweep(0.4, 16000, channels=2)
    with pytest.raises(InputError, match="too short"):
        audio.load_audio((short, 16000))
    np.testing.assert_array_equal(audio.read_audio((short, 16000)),
                                  audio.resample(short.mean(axis=-1), 16000, audio.SAMPLE_RATE))
    with pytest.raises(InputError, match="NaN"):
        audio.read_audio((np.full(100, np.nan, dtype=np.float32), 24000))
    with pytest.raises(InputError, match="empty"):
        audio.read_audio((np.zeros(0, dtype=np.float32), 24000))
    # Files too: the reference clip's 60 s cap on decoding is load_audio's alone.
    long = encoded(np.zeros(8000 * 70, dtype=np.int16), 8000, "WAV", "PCM_16")
    with pytest.raises(InputError, match="too long"):
        audio.load_audio(long)
    assert len(audio.read_audio(long)) == 24000 * 70


# ---- saving --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_save_audio_round_trips_within_16_bit_precision(tmp_path, suffix):
    samples = sweep(1.0, 24000)
    samples[:10] = 1.7  # out of range: must be clipped, not wrapped
    path = tmp_path / f"out{suffix}"
    audio.Audio(samples).save(path)
    read, rate = soundfile.read(path, dtype="float32")
    assert rate == 24000 and len(read) == len(samples)
    assert soundfile.info(path).subtype == "PCM_16"
    # Half a step of rounding, plus up to one more from scale: written * 32767, read back / 32768.
    np.testing.assert_allclose(read, np.clip(samples, -1, 1), atol=1.5 / 32768)


def test_save_audio_rejects_unknown_extension_and_bad_samples(tmp_path):
    with pytest.raises(InputError, match="extension '.aac'"):
        audio.save_audio(tmp_path / "out.aac", np.zeros(10, dtype=np.float32))
    with pytest.raises(InputError, match="no extension"):
        audio.save_audio(tmp_path / "out", np.zeros(10, dtype=np.float32))
    with pytest.raises(InputError, match="cannot write"):
        audio.save_audio(tmp_path / "missing" / "out.wav", np.zeros(10, dtype=np.float32))
    with pytest.raises(InputError, match="NaN"):
        audio.save_audio(tmp_path / "out.wav", np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(InputError, match="mono"):
        audio.save_audio(tmp_path / "out.wav", np.zeros((10, 2), dtype=np.float32))


def test_audio_duration_is_samples_over_rate():
    assert audio.Audio(np.zeros(36000, dtype=np.float32), 24000).duration == 1.5
