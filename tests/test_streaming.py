"""Streaming audio equals the non-streamed (official) audio, chunk seams and 300-frame windows included."""

import time

import numpy as np
import pytest
import torch

import qtts
from qtts.engine.decode_stage import CHUNK_SIZES, DecodeCursor
from qtts.engine.scheduler import LEAD_LOW_S
from qtts.models.codec_decoder import decode_official
from qtts.models.codec_stream import CodecStream
from qtts.streaming import stream_audio


@pytest.fixture(scope="module")
def tts(tiny_checkpoint):
    tts = qtts.load(tiny_checkpoint("custom_voice"), device="cpu")
    yield tts
    tts.close()


def random_codes(frames, seed=0):
    return torch.randint(0, 2048, (frames, 16), generator=torch.Generator().manual_seed(seed))


def as_frames(codes, sizes):
    """Split codes into blocks of the given sizes (repeating the last), as an engine would emit them."""
    blocks, i, k = [], 0, 0
    while i < codes.shape[0]:
        n = sizes[min(k, len(sizes) - 1)]
        blocks.append(codes[i:i + n])
        i, k = i + n, k + 1
    return blocks


def joined(chunks):
    return np.concatenate([c.samples for c in chunks])


@pytest.mark.parametrize("frames, blocks", [(40, [1]), (37, [3, 1, 5]), (330, [7])],
                         ids=["frame-by-frame", "uneven-blocks", "past-300-frame-window"])
def test_stream_equals_official_decode(tts, frames, blocks):
    codes = random_codes(frames)
    chunks = list(stream_audio(tts.codec_decoder, as_frames(codes, blocks)))
    expected = decode_official(tts.codec_decoder, codes[None])[0].numpy()
    assert chunks[0].samples.shape == (1920,)  # first audio after a single frame
    assert [c.samples.shape[0] // 1920 for c in chunks[:4]] == [1, 2, 4, 8]
    np.testing.assert_allclose(joined(chunks), expected, atol=1e-4)


def test_stream_with_reference_context_equals_official_icl_decode(tts):
    ref, codes = random_codes(20, seed=1), random_codes(290, seed=2)  # windows straddle ref + generated
    chunks = list(stream_audio(tts.codec_decoder, as_frames(codes, [1]), context=ref))
    expected = decode_official(tts.codec_decoder, torch.cat([ref, codes])[None])[0].numpy()
    np.testing.assert_allclose(joined(chunks), expected[20 * 1920:], atol=1e-4)


def test_synthesize_stream_equals_synthesize(tts):
    kwargs = dict(speaker="ryan", language="english", max_new_tokens=30, seed=11)
    whole = tts.synthesize("Streaming should not change the audio.", **kwargs)
    chunks = list(tts.synthesize("Streaming should not change the audio.", stream=True, **kwargs))
    assert len(chunks) > 3 and chunks[0].samples.shape == (1920,)
    np.testing.assert_allclose(joined(chunks), whole.samples, atol=1e-4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_bfloat16_codec_decoder_streams_its_own_one_pass_audio_as_float32(tiny_checkpoint, device):
    """`codec_dtype="bfloat16"` (as the official package decodes when loaded in bf16): the decoder's
    weights and states are bf16, audio comes out float32, and streamed chunks (through the engine's
    decode stage) join into the one-pass decode of the same codes with the same decoder."""
    tts = qtts.load(tiny_checkpoint("custom_voice"), device=device, codec_dtype="bfloat16")
    try:
        assert next(tts.codec_decoder.parameters()).dtype == torch.bfloat16
        chunks, finished = tts.submit("A codec in half the bits.", speaker="ryan", max_new_tokens=40,
                                      min_new_tokens=39, seed=3).result()
        assert all(chunk.dtype == np.float32 for chunk in chunks)
        expected = decode_official(tts.codec_decoder, finished.codes[None].to(device))[0].cpu().numpy()
        assert expected.dtype == np.float32
        streamed = np.concatenate(chunks)
        assert streamed.shape == expected.shape
        # bf16 rounds each layer's output to 8 bits: calls of other batch sizes round other sums, so the
        # two agree to a few units in the last place of bf16 (2^-8 near full scale), not bit for bit
        assert np.abs(streamed - expected).max() < 0.1
        assert np.sqrt(np.mean((streamed - expected) ** 2)) < 0.03 * np.sqrt(np.mean(expected ** 2))
    finally:
        tts.close()


def test_stream_validates_before_the_first_chunk(tts):
    with pytest.raises(qtts.InputError, match="unknown speaker"):
        tts.synthesize("Hi.", speaker="nobody", stream=True)


def test_steady_chunks_of_streams_running_together_decode_in_one_call(tts):
    """Past the ramp, a stream's chunks wait while its audio is well ahead of playback, so that requests
    running together decode in one call; each request's audio still equals its audio alone."""
    texts = ["The first of three voices.", "A second one, a little longer.", "And the third."]
    kwargs = dict(speaker="ryan", language="english", max_new_tokens=65, min_new_tokens=64)
    alone = [tts.synthesize(text, seed=i, **kwargs).samples for i, text in enumerate(texts)]
    # Not by lead: this machine may generate slower than real time (the rule then decodes at once).
    tts.engine.lead_low_s = float("-inf")
    try:
        stats = tts.engine.stats
        calls, rows = stats["decode_calls"]["bulk"], stats["decode_rows"]["bulk"]
        handles = [tts.submit(text, seed=i, **kwargs) for i, text in enumerate(texts)]
        together = [np.concatenate(handle.result()[0]) for handle in handles]
        calls, rows = stats["decode_calls"]["bulk"] - calls, stats["decode_rows"]["bulk"] - rows
    finally:
        tts.engine.lead_low_s = LEAD_LOW_S
    assert calls > 0 and rows / calls > 1.5, (calls, rows)
    for mine, solo in zip(together, alone):
        np.testing.assert_allclose(mine, solo, atol=1e-4)


def test_a_request_still_decoding_keeps_its_decoder_slot_and_arrivals_wait_for_one(tiny_checkpoint):
    """A request that has left the batch may still be decoding (its decoder slot held): an arrival that takes
    its row must not find every decoder slot taken. Here the first of a full batch ends just past a decode
    window (its last audio needs more decode rounds than one iteration gives) while another request waits."""
    tts = qtts.load(tiny_checkpoint("custom_voice"), device="cpu", max_batch=4)
    try:
        kwargs = dict(speaker="ryan", language="english")
        # 301 frames: the last cut replays the window's 25 context frames, 7 pieces, two iterations' rounds
        first = tts.submit("The first one ends just past a window.", seed=0, max_new_tokens=302,
                           min_new_tokens=302, **kwargs)
        others = [tts.submit(f"Voice number {i} goes on longer.", seed=i, max_new_tokens=330,
                             min_new_tokens=330, **kwargs) for i in range(1, 4)]
        waiting = tts.submit("And one waits for a row.", seed=9, max_new_tokens=11, min_new_tokens=10, **kwargs)
        results = [handle.result() for handle in [first, *others, waiting]]
        assert [finished.reason for _, finished in results] == ["length"] * 5
        assert [sum(len(c) for c in chunks) for chunks, _ in results] == [s * 1920 for s in (301, 329, 329, 329, 10)]
    finally:
        tts.close()


@pytest.mark.gpu
def test_on_the_gpu_streams_decoded_in_both_lanes_equal_their_official_decode(tiny_checkpoint, monkeypatch):
    """On CUDA the urgent and bulk lanes run on their own streams, concurrently with the frames: requests
    that start at different times (ramps overlapping other requests' steady chunks) each still stream
    exactly the official decode of their own codes. In float32 without TF32: cuDNN's default TF32 rounds
    differently per algorithm, and the chunked and one-pass decodes differ in shape (and in which dilated
    convs fold), so with TF32 they differed by up to 4e-4 (H100)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    tts = qtts.load(tiny_checkpoint("custom_voice"), device="cuda", dtype=torch.float32)
    try:
        kwargs = dict(speaker="ryan", language="english", max_new_tokens=90, min_new_tokens=89)
        handles = []
        for i in range(4):
            handles.append(tts.submit(f"Voice number {i} joins a little later than the one before.", seed=i,
                                      **kwargs))
            time.sleep(0.01 * i)
        for handle in handles:
            chunks, finished = handle.result()
            expected = decode_official(tts.codec_decoder, finished.codes[None].cuda())[0].cpu().numpy()
            np.testing.assert_allclose(np.concatenate(chunks), expected, atol=1e-4)
        assert tts.engine.stats["decode_calls"]["bulk"] > 0 and tts.engine.stats["decode_calls"]["urgent"] > 0
    finally:
        tts.close()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_first_chunk_decodes_before_the_talker_step_and_no_code_changes(tiny_checkpoint, device):
    """A request's first codes decode with the device to themselves: its first frame's talker step (which
    only the next frame needs) is enqueued after that decode. Holding the step back changes no code: a
    request gets the same codes alone and while others arrive beside it."""
    tts = qtts.load(tiny_checkpoint("custom_voice"), device=device, dtype=torch.float32)
    try:
        engine, order = tts.engine, []
        stage, frame = engine.decode_stage, engine._run_frame[engine.buckets[0]]
        decode, advance = stage.decode, frame.advance

        def recorded_decode(*args):
            order.append("decode")
            return decode(*args)

        def recorded_advance():
            order.append("advance")
            advance()

        stage.decode, frame.advance = recorded_decode, recorded_advance
        mine = dict(speaker="ryan", language="english", max_new_tokens=12, min_new_tokens=11, seed=5)
        alone = tts.submit("The first words of a voice.", **mine).result()[1].codes
        del stage.decode, frame.advance
        assert "decode" in order and order.index("decode") < order.index("advance"), order
        others = [tts.submit(f"Voice number {i} arrives beside it.", speaker="ryan", language="english",
                             max_new_tokens=40, min_new_tokens=39, seed=i) for i in range(3)]
        assert torch.equal(tts.submit("The first words of a voice.", **mine).result()[1].codes, alone)
        for handle in others:
            handle.result()
    finally:
        tts.close()


@pytest.mark.parametrize("context_frames", [0, 20], ids=["plain", "icl-context"])
def test_the_engines_decode_pieces_decoded_in_order_equal_the_official_decode(tts, context_frames):
    """`DecodeCursor` as the engine drives it (a frame or a few added, then a cut, each iteration; the rest
    at the end): its pieces, decoded in order on one stream (reset where a piece says so, audio kept where
    it says so), give the official decode of context + codes past a 300-frame window, in captured sizes,
    ramping 1, 2, 4, 8 frames, the ramp and the context urgent."""
    context = random_codes(context_frames, seed=3) if context_frames else None
    codes = random_codes(335, seed=4)
    cursor = DecodeCursor(context)
    pieces = []
    for start in range(0, 330, 3):
        for frame in codes[start: start + 3]:
            cursor.add(frame)
        cursor.cut(final=False)
        pieces.extend(cursor.pieces)
        cursor.pieces.clear()
    for frame in codes[330:]:
        cursor.add(frame)
    cursor.cut(final=True)
    pieces.extend(cursor.pieces)
    assert all(piece.codes.shape[0] in CHUNK_SIZES for piece in pieces)
    kept = [piece for piece in pieces if piece.keep]
    assert [piece.codes.shape[0] for piece in kept[:5]] == [1, 2, 4, 8, 16]
    assert [piece.urgent for piece in kept[:5]] == [True] * 4 + [False]
    # the context, decoded only for the decoder's state
    silent = pieces[: next(i for i, piece in enumerate(pieces) if piece.keep)]
    assert sum(piece.codes.shape[0] for piece in silent) == context_frames
    assert all(piece.urgent and not piece.keep for piece in silent)
    assert sum(piece.reset for piece in pieces) == 1  # the second window (frame 300 of context + codes)
    stream = CodecStream(tts.codec_decoder, batch_size=1)
    audio = []
    for piece in pieces:
        if piece.reset:
            stream.reset()
        samples = stream.decode(piece.codes[None])[0]
        if piece.keep:
            audio.append(samples.numpy())
    whole = codes if context is None else torch.cat([context, codes])
    expected = decode_official(tts.codec_decoder, whole[None])[0].numpy()
    np.testing.assert_allclose(np.concatenate(audio), expected[context_frames * 1920:], atol=1e-4)
