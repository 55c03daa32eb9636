"""SpeakerEncoder against the official Qwen3TTSSpeakerEncoder: same weights layout, same x-vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oracle import official
from qtts import audio
from qtts.config import SpeakerEncoderConfig
from qtts.models.speaker_encoder import SpeakerEncoder
from qtts.testing.configs import real_tts_config, tiny_tts_config


def official_encoder(config_dict: dict):
    official()
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSSpeakerEncoderConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSSpeakerEncoder

    return Qwen3TTSSpeakerEncoder(Qwen3TTSSpeakerEncoderConfig(**config_dict))


def tiny_config_dict() -> dict:
    return tiny_tts_config("base")["speaker_encoder_config"]


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def random_speech(seconds: float, seed: int) -> np.ndarray:
    """Noise shaped by a slow random envelope with a few harmonics: a stand-in for speech at 24 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * audio.SAMPLE_RATE)
    t = np.arange(n) / audio.SAMPLE_RATE
    envelope = np.interp(t, np.linspace(0, seconds, 20), rng.uniform(0.05, 0.6, 20))
    voiced = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate(rng.uniform(100, 300) * np.arange(1, 6)))
    return (envelope * (0.3 * voiced + 0.1 * rng.standard_normal(n))).clip(-1, 1).astype(np.float32)


def paired_encoders(dtype=torch.float32, seed: int = 0):
    """The official tiny encoder with random weights, and ours holding a copy of them."""
    torch.manual_seed(seed)
    theirs = official_encoder(tiny_config_dict()).to(dtype).eval()
    ours = SpeakerEncoder(SpeakerEncoderConfig.from_dict(tiny_config_dict()), dtype=dtype).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_state_dict_matches_the_official_tiny_encoder():
    theirs = official_encoder(tiny_config_dict())
    ours = SpeakerEncoder(SpeakerEncoderConfig.from_dict(tiny_config_dict()))
    assert shapes(ours) == shapes(theirs)


@pytest.mark.parametrize("size", ["0.6b", "1.7b"])
def test_state_dict_matches_the_official_real_size_encoder(size):
    config_dict = real_tts_config("base", size)["speaker_encoder_config"]
    with torch.device("meta"):
        theirs = official_encoder(config_dict)
    ours = SpeakerEncoder(SpeakerEncoderConfig.from_dict(config_dict), device="meta")
    assert shapes(ours) == shapes(theirs)
    assert ours.fc.weight.shape == (config_dict["enc_dim"], 3072, 1)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_x_vector_equals_official_encoder_in_float64():
    theirs, ours = paired_encoders(torch.float64)
    mels = audio.mel_spectrogram(random_speech(2.0, seed=1)).to(torch.float64)[None]
    with torch.no_grad():
        expected, got = theirs(mels), ours(mels)
    assert got.shape == (1, tiny_config_dict()["enc_dim"])
    assert relative_difference(got, expected) <= 1e-12


def test_x_vector_equals_official_extract_speaker_embedding():
    """Audio in, x-vector out: our mel front end + encoder vs the official model's own method."""
    official()
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration

    torch.manual_seed(3)
    model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**tiny_tts_config("base"))).eval()
    ours = SpeakerEncoder(SpeakerEncoderConfig.from_dict(tiny_config_dict())).eval()
    ours.load_state_dict(model.speaker_encoder.state_dict(), strict=True)
    for seed, seconds in [(4, 1.3), (5, 3.7)]:
        speech = random_speech(seconds, seed)
        expected = model.extract_speaker_embedding(speech, audio.SAMPLE_RATE)
        with torch.no_grad():
            got = ours(audio.mel_spectrogram(speech)[None])[0]
        assert relative_difference(got, expected) <= 1e-5


def test_batched_clips_give_the_x_vectors_of_single_clips():
    _, ours = paired_encoders(seed=6)
    mels = torch.stack([audio.mel_spectrogram(random_speech(1.5, seed)) for seed in (7, 8)])
    with torch.no_grad():
        batched = ours(mels)
        singles = torch.cat([ours(mels[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-6)
    assert relative_difference(batched[0], batched[1]) > 1e-3  # different clips, different voices
