"""CodecStream: decoding frames chunk by chunk gives the one-pass decode's audio, sample for sample."""

from __future__ import annotations

import pytest
import torch

from qtts import kernels
from qtts.errors import InputError
from qtts.models import codec_decoder
from qtts.models.codec_decoder import CodecDecoder, channels_last_convolutions, unbiased_conv
from qtts.models.codec_stream import CodecStream
from test_codec_decoder import decoder_config, one_thread, random_codes, randomize_decoder  # noqa: F401

TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def decoder():
    module = CodecDecoder(decoder_config()).eval()
    randomize_decoder(module, seed=7)
    return module


def ramp(total: int, sizes=(1, 2, 4, 8)) -> list[int]:
    """Chunk sizes 1, 2, 4, 8, 8, ... covering `total` frames, as a streaming engine emits them."""
    chunks = []
    while sum(chunks) < total:
        chunks.append(min(sizes[min(len(chunks), len(sizes) - 1)], total - sum(chunks)))
    return chunks


def stream(decoder: CodecDecoder, codes: torch.Tensor, chunks: list[int], stream_: CodecStream | None = None):
    stream_ = stream_ or CodecStream(decoder, batch_size=codes.shape[0])
    starts = [sum(chunks[:i]) for i in range(len(chunks))]
    return torch.cat([stream_.decode(codes[:, s: s + n]) for s, n in zip(starts, chunks)], dim=-1)


def test_ramping_chunks_equal_one_pass_past_the_attention_window(decoder):
    # 100 frames: the 72-frame attention window slides for the last 28 frames.
    codes = random_codes(1, 100, seed=11)
    one_pass = decoder(codes)
    streamed = stream(decoder, codes, ramp(100))
    assert streamed.shape == one_pass.shape == (1, 100 * 1920)
    assert (streamed - one_pass).abs().max().item() <= TOLERANCE
    assert one_pass.abs().max().item() > 1e-2


def test_chunks_longer_than_the_window_and_a_batch_equal_one_pass(decoder):
    codes = random_codes(2, 95, seed=12)
    one_pass = decoder(codes)
    streamed = stream(decoder, codes, [3, 80, 1, 11])
    assert (streamed - one_pass).abs().max().item() <= TOLERANCE


def test_carried_state_matters(decoder):
    """Decoding each chunk without the carried state is audibly wrong, so the equality above is earned."""
    codes = random_codes(1, 24, seed=13)
    one_pass = decoder(codes)
    stateless = torch.cat([decoder(codes[:, s: s + 8]) for s in range(0, 24, 8)], dim=-1)
    assert (stateless - one_pass).abs().max().item() > 100 * TOLERANCE


def test_reset_starts_a_new_utterance_in_the_same_buffers(decoder):
    codes = random_codes(1, 20, seed=14)
    stream_ = CodecStream(decoder)
    first = stream(decoder, codes, ramp(20), stream_)
    stream(decoder, random_codes(1, 9, seed=15), ramp(9), stream_)
    stream_.reset()
    assert torch.equal(stream(decoder, codes, ramp(20), stream_), first)


def test_resetting_one_row_restarts_only_that_stream(decoder):
    """A batch slot handed to a new request starts from silence while the other slot carries on."""
    old, new = random_codes(2, 30, seed=17), random_codes(1, 12, seed=18)
    stream_ = CodecStream(decoder, batch_size=2)
    stream(decoder, old[:, :18], ramp(18), stream_)
    stream_.reset(rows=[1])
    later = stream(decoder, torch.cat((old[:1, 18:], new)), [1, 3, 8], stream_)
    assert (later[0] - decoder(old[:1])[0, 18 * 1920:]).abs().max().item() <= TOLERANCE
    assert (later[1] - decoder(new)[0]).abs().max().item() <= TOLERANCE


def test_wrong_batch_size_is_an_input_error(decoder):
    with pytest.raises(InputError, match="decodes codes"):
        CodecStream(decoder, batch_size=2).decode(random_codes(1, 1, seed=16))


@pytest.mark.parametrize("dilation, length", [(1, 40), (3, 40), (9, 63), (9, 60)])
@pytest.mark.parametrize("time_major", [False, True])
def test_a_conv_over_the_grid_of_its_samples_is_the_same_conv(dilation, length, time_major):
    """The fused path's convolution: a dilated one over the [length / dilation, dilation] grid of its
    samples with an undilated kernel; time-major input and a channels-last weight read in place, any other
    layout converted; the output time-major."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(5, 4, 7, dilation=dilation)
    x = torch.randn(2, 5, length)
    padded = torch.cat((x, torch.full((2, 5, -length % dilation), float("nan"))), dim=-1)  # feeds dropped outputs
    want = torch.nn.functional.conv1d(x, conv.weight, dilation=dilation)
    if time_major:
        padded = padded.transpose(1, 2).contiguous().transpose(1, 2)
        channels_last_convolutions(conv)
    got = unbiased_conv(conv, padded, length)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got.stride(1) == 1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_channels_last_convolution_weights_change_where_the_numbers_lie_not_the_audio(decoder, monkeypatch,
                                                                                     device):
    """`load` lays the convolutions' weights out channels-last on a GPU: the same state, and the same audio
    one pass and streamed (cuDNN may pick other algorithms for the new layout: float32 rounding apart)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    codes = random_codes(2, 13, seed=23).to(device)
    plain = CodecDecoder(decoder_config(), device=device).eval()
    plain.load_state_dict(decoder.state_dict())
    relaid = CodecDecoder(decoder_config(), device=device).eval()
    relaid.load_state_dict(decoder.state_dict())
    channels_last_convolutions(relaid)
    state = relaid.state_dict()
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
    relaid_weights = [m.weight for m in relaid.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))
                      and m.groups == 1 and m.kernel_size[0] > 1]
    assert relaid_weights and all(w.stride(1) == 1 and not w.is_contiguous() for w in relaid_weights)
    for run in (lambda d: d(codes), lambda d: stream(d, codes, ramp(13))):
        assert (run(relaid) - run(plain)).abs().max().item() <= TOLERANCE


@pytest.mark.skipif(not kernels.available(), reason="Triton is not installed")
@pytest.mark.parametrize("device", ["cpu"] if kernels.interpreted() else [pytest.param("cuda", marks=pytest.mark.gpu)])
def test_the_fused_path_decodes_as_the_plain_one(decoder, monkeypatch, device):
    """The GPU's decoder path (the codebooks in one lookup, the transformer's norms fused with their residual
    adds, its RoPE in one kernel; time-major activations written into the causal convs' padded inputs, each
    conv bias in the kernel behind it, dilated convs over the grid of their samples, the 1x1 convs as
    products), on CPU through Triton's interpreter: the same audio, one pass and streamed, in float32; in
    bfloat16 no further from the float32 decode than the plain path's bfloat16 decode."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 means float32 on a GPU too
    codes = random_codes(2, 21, seed=19).to(device)
    full = CodecDecoder(decoder_config(), device=device).eval()
    half = CodecDecoder(decoder_config(), device=device, dtype=torch.bfloat16).eval()
    full.load_state_dict(decoder.state_dict())
    half.load_state_dict(decoder.state_dict())
    for loaded in (full, half):  # else the codebooks would take the plain path in both runs
        assert loaded.quantizer.rvq_first._tables() and loaded.quantizer.rvq_rest._tables()
    runs = {}
    for path in (False, True):
        monkeypatch.setattr(codec_decoder, "fused", lambda x, path=path: path)
        runs[path] = full(codes), stream(full, codes, ramp(21)), half(codes)
    (plain, plain_streamed, plain_half), (one_pass, streamed, fused_half) = runs[False], runs[True]
    assert (one_pass - plain).abs().max().item() <= TOLERANCE
    assert (streamed - plain_streamed).abs().max().item() <= TOLERANCE
    fused_error = (fused_half - plain).abs().max().item()
    assert 0 < fused_error <= 1.5 * (plain_half - plain).abs().max().item()
