"""CodecEncoder against the official Qwen3TTSTokenizerV2 encoder (transformers Mimi): same keys, same codes."""

from __future__ import annotations

import math

import pytest
import torch

from qtts.config import SpeechTokenizerConfig
from qtts.errors import InputError
from qtts.models.codec_encoder import CodecEncoder, encode
from qtts.testing.configs import real_speech_tokenizer_config, tiny_speech_tokenizer_config
from test_codec_decoder import official_tokenizer, one_thread  # noqa: F401  (autouse fixture)


def randomize_encoder(encoder: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values for every parameter and codebook buffer (the official init leaves codebooks at
    zero, usages at one and layer scales tiny, so every frame would get the same codes)."""
    gen = torch.Generator().manual_seed(seed)

    def draw(t, mean, std):
        t.copy_(torch.randn(t.shape, generator=gen) * std + mean)

    with torch.no_grad():
        for name, t in encoder.state_dict().items():
            if name.endswith("initialized"):
                continue
            if name.endswith("embed_sum"):
                draw(t, 0.0, 1.0)
            elif name.endswith("cluster_usage"):
                t.copy_(torch.rand(t.shape, generator=gen) * 1.5 + 0.5)
            elif name.endswith("scale"):
                draw(t, 0.3, 0.1)
            elif "norm" in name and name.endswith("weight"):
                draw(t, 1.0, 0.2)
            elif t.dim() >= 2:
                draw(t, 0.0, 1.0 / math.sqrt(t[0].numel()))
            else:
                draw(t, 0.0, 0.1)


def our_encoder(data: dict, device=None) -> CodecEncoder:
    config = SpeechTokenizerConfig.from_dict(data)
    return CodecEncoder(config.encoder_config, config.encoder_valid_num_quantizers, device=device)


@pytest.fixture(scope="module")
def models():
    reference = official_tokenizer(tiny_speech_tokenizer_config())
    randomize_encoder(reference.encoder)
    ours = our_encoder(tiny_speech_tokenizer_config()).eval()
    ours.load_state_dict(reference.encoder.state_dict(), strict=True)
    return reference, ours


def official_codes(reference, waveforms: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    mask = (torch.arange(waveforms.shape[-1])[None] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        return reference.encode(waveforms, padding_mask=mask, return_dict=True).audio_codes


def random_audio(samples: int, seed: int) -> torch.Tensor:
    return 0.3 * torch.randn(samples, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", ["tiny", "real"])
def test_state_dict_keys_and_shapes_equal_official(size):
    data = tiny_speech_tokenizer_config() if size == "tiny" else real_speech_tokenizer_config()
    reference = official_tokenizer(data, device="meta")
    expected = {k[len("encoder."):]: tuple(v.shape) for k, v in reference.state_dict().items()
                if k.startswith("encoder.")}
    # Includes acoustic levels 16..30, which the checkpoint holds although only 16 levels are run.
    assert {k: tuple(v.shape) for k, v in our_encoder(data, device="meta").state_dict().items()} == expected


@pytest.mark.parametrize("samples, seed", [(12_000, 0), (24_007, 1), (50_001, 2), (72_555, 3)])
def test_codes_equal_official(models, samples, seed):
    reference, ours = models
    audio = random_audio(samples, seed)
    expected = official_codes(reference, audio[None], [samples])[0]
    codes = encode(ours, audio)
    assert codes.dtype == torch.int64
    assert codes.shape == (math.ceil(samples / 1920), 16)
    assert torch.equal(codes, expected)
    # Codes vary over time and across levels, so equality is not a coincidence of constant output.
    assert len(set(codes[:, 0].tolist())) > codes.shape[0] // 2
    assert len(set(codes[0].tolist())) > 8


def test_codes_equal_official_past_250_transformer_frames(models):
    """12 s is 300 frames at 25 Hz: the official (transformers 4.57) Mimi attends to all of them."""
    reference, ours = models
    audio = random_audio(12 * 24000 + 100, seed=4)
    assert torch.equal(encode(ours, audio), official_codes(reference, audio[None], [audio.numel()])[0])


def test_padded_batch_equals_official(models):
    reference, ours = models
    lengths = [30_000, 13_333]
    batch = torch.zeros(2, max(lengths))
    for row, n in enumerate(lengths):
        batch[row, :n] = random_audio(n, seed=5 + row)
    expected = official_codes(reference, batch, lengths)
    actual = encode(ours, batch, lengths)
    assert [c.shape[0] for c in actual] == [16, 7]
    for want, got in zip(expected, actual):
        assert torch.equal(got, want)


def test_bad_waveform_shapes_are_input_errors(models):
    _, ours = models
    with pytest.raises(InputError, match="waveform"):
        encode(ours, torch.zeros(1, 1, 100))
    with pytest.raises(InputError, match="lengths"):
        encode(ours, torch.zeros(2, 100), [100])
