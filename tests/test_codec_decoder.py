"""CodecDecoder against the official Qwen3TTSTokenizerV2 decoder: same keys, same audio."""

from __future__ import annotations

import math

import pytest
import torch

from oracle import official
from qtts.config import SpeechTokenizerConfig
from qtts.errors import InputError
from qtts.models.codec_decoder import CodecDecoder, decode_official, snake_beta
from qtts.testing.configs import real_speech_tokenizer_config, tiny_speech_tokenizer_config

TOLERANCE = 1e-5


def official_tokenizer(config: dict, device: str | None = None):
    official()
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    with torch.device(device or "cpu"):
        return Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**config)).eval()


def randomize_decoder(decoder: torch.nn.Module, seed: int = 0) -> None:
    """Give every decoder parameter a non-trivial value with signals staying O(1) through the stack.

    The official init leaves codebooks at zero, usages, norms and snake parameters at fixed values and
    layer scales tiny, which would make the output near zero and hide most mistakes.
    """
    gen = torch.Generator().manual_seed(seed)

    def draw(p, mean, std):
        p.copy_(torch.randn(p.shape, generator=gen) * std + mean)

    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if name.endswith("embedding_sum"):
                draw(p, 0.0, 1.0)
            elif name.endswith("cluster_usage"):
                p.copy_(torch.rand(p.shape, generator=gen) * 1.5 + 0.5)
            elif name.endswith(("alpha", "beta")):
                draw(p, 0.0, 0.3)
            elif name.endswith(("scale", "gamma")):
                draw(p, 0.3, 0.1)
            elif "norm" in name and name.endswith("weight"):
                draw(p, 1.0, 0.2)
            elif p.dim() >= 2:
                draw(p, 0.0, 0.5 / math.sqrt(p[0].numel()))
            else:
                draw(p, 0.0, 0.1)


def decoder_config():
    return SpeechTokenizerConfig.from_dict(tiny_speech_tokenizer_config()).decoder_config


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny-width convolutions over long signals run many times faster on one thread than on two
    contended ones (other suites run beside us)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    """(official tokenizer, our decoder) holding the same randomised decoder weights."""
    reference = official_tokenizer(tiny_speech_tokenizer_config())
    randomize_decoder(reference.decoder)
    ours = CodecDecoder(decoder_config()).eval()
    ours.load_state_dict(reference.decoder.state_dict(), strict=True)
    return reference, ours


def random_codes(batch: int, frames: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 2048, (batch, frames, 16), generator=torch.Generator().manual_seed(seed))


def assert_same_audio(expected: list[torch.Tensor], actual: list[torch.Tensor]) -> None:
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= TOLERANCE
        # A meaningful comparison: audible, and mostly inside the clamp.
        assert want.abs().max().item() > 1e-2
        assert (want.abs() >= 1.0).float().mean().item() < 0.01


@pytest.mark.parametrize("size", ["tiny", "real"])
def test_state_dict_keys_and_shapes_equal_official(size):
    data = tiny_speech_tokenizer_config() if size == "tiny" else real_speech_tokenizer_config()
    reference = official_tokenizer(data, device="meta")
    config = SpeechTokenizerConfig.from_dict(data).decoder_config
    ours = CodecDecoder(config, device="meta")
    expected = {k[len("decoder."):]: tuple(v.shape) for k, v in reference.state_dict().items()
                if k.startswith("decoder.")}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected


def test_short_decode_equals_official(models):
    reference, ours = models
    codes = random_codes(1, 37, seed=1)
    assert_same_audio(reference.decode(codes, return_dict=True).audio_values, decode_official(ours, codes))


def test_a_decoder_moved_with_to_still_looks_its_codebooks_up(models):
    """Loading fills the codebook groups' tables in place; `.to()` gives the parameters new storage, and the
    groups then read their codebooks' own parameters: the same audio as a decoder built in that dtype."""
    _, ours = models
    moved = CodecDecoder(decoder_config())
    moved.load_state_dict(ours.state_dict())
    moved.to(torch.float64)
    built = CodecDecoder(decoder_config(), dtype=torch.float64)
    built.load_state_dict(ours.state_dict())
    assert not moved.quantizer.rvq_rest._tables() and built.quantizer.rvq_rest._tables()
    codes = random_codes(1, 6, seed=5)
    assert torch.equal(moved(codes), built(codes))


def test_decode_past_300_frames_equals_official_chunk_seams(models):
    reference, ours = models
    codes = random_codes(1, 310, seed=2)
    expected = reference.decode(codes, return_dict=True).audio_values
    assert_same_audio(expected, decode_official(ours, codes))
    # The 300/25 scheme is not a one-pass decode: our one-pass output must differ after the seam,
    # which shows the seam handling above was exercised and not trivially equal.
    one_pass = ours(codes)[0]
    seam = 300 * ours.samples_per_frame
    assert (one_pass[:seam] - expected[0][:seam]).abs().max() <= TOLERANCE
    assert (one_pass[seam:] - expected[0][seam:]).abs().max() > TOLERANCE


def test_small_chunks_equal_official_chunked_decode(models):
    reference, ours = models
    codes = random_codes(2, 47, seed=3)
    expected = reference.decoder.chunked_decode(codes.transpose(1, 2), chunk_size=10, left_context_size=4)
    actual = decode_official(ours, codes, chunk_frames=10, left_context_frames=4)
    assert_same_audio(list(expected.squeeze(1)), actual)


def test_batch_of_uneven_lengths_equals_official(models):
    reference, ours = models
    codes = random_codes(3, 30, seed=4)
    codes[1, 17:] = -1
    codes[2, 1:] = -1
    expected = reference.decode(codes, return_dict=True).audio_values
    actual = decode_official(ours, codes)
    assert [len(a) for a in actual] == [30 * 1920, 17 * 1920, 1920]
    assert_same_audio(expected, actual)


def test_wrong_code_layout_is_an_input_error(models):
    _, ours = models
    with pytest.raises(InputError, match="16"):
        decode_official(ours, random_codes(1, 5, seed=5)[..., :15])
    with pytest.raises(InputError, match="codebook size"):
        decode_official(ours, torch.full((1, 5, 16), 2048))


def test_snake_beta_equals_official_activation():
    official()
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import SnakeBeta

    gen = torch.Generator().manual_seed(6)
    activation = SnakeBeta(5)
    activation.alpha.copy_(torch.randn(5, generator=gen))
    activation.beta.copy_(torch.randn(5, generator=gen))
    x = 3 * torch.randn(2, 5, 64, generator=gen)
    assert torch.equal(snake_beta(x, activation.alpha, activation.beta), activation(x))
