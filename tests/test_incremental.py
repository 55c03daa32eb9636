"""Text that arrives while it is spoken (`TTS.open_text`): tokens join the request's text track as they
become certain, the request waits in the batch for more, and the same text given whole or in pieces gives
the same codes and audio."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import qtts
from qtts.incremental import certain_end
from qtts.text import qwen_pre_tokenizer

TEXT = "Hello there, this sentence arrives a few words at a time, the way a language model writes it."
KWARGS = dict(speaker="ryan", language="english", do_sample=False, subtalker_dosample=False,
              max_new_tokens=40, min_new_tokens=39)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tts(tiny_checkpoint):
    tts = qtts.load(tiny_checkpoint("custom_voice"), device="cpu")
    yield tts
    tts.close()


def pieces(text, size):
    return [text[i: i + size] for i in range(0, len(text), size)]


def waiting(stream, engine, seconds=60):
    """Until the stream's request is in the batch and has run every frame its text allows (it waits)."""
    request = stream._generation._request
    deadline = time.monotonic() + seconds
    while request.started is None or request.enqueued < request.text_loaded or request.text_pieces:
        assert time.monotonic() < deadline, "the engine made no progress"
        time.sleep(0.005)
    frames = engine.stats["frames"]
    return request, frames


@pytest.mark.parametrize("size", [1, 7, 23])
def test_text_in_pieces_gives_the_codes_and_audio_of_the_whole_text(tts, size):
    whole = tts.submit(TEXT, non_streaming_mode=False, **KWARGS)
    whole_chunks, whole_finished = whole.result()
    stream = tts.open_text(**KWARGS)
    for piece in pieces(TEXT, size):
        stream.feed(piece)
    stream.end()
    chunks, finished = stream.result()
    assert torch.equal(finished.codes, whole_finished.codes)
    np.testing.assert_allclose(np.concatenate(chunks), np.concatenate(whole_chunks), atol=1e-5)


def test_chinese_text_without_spaces_is_spoken_as_it_comes_and_equals_the_whole_text(tts):
    text = "今天天气很好，我们去公园吧。你觉得呢？"
    kwargs = {**KWARGS, "language": "chinese"}
    whole = tts.submit(text, non_streaming_mode=False, **kwargs).result()
    stream = tts.open_text(**kwargs)
    stream.feed(text[:8])  # "今天天气很好，我": the words before the comma have ended
    assert stream.generation is not None
    for char in text[8:]:
        stream.feed(char)
    stream.end()
    chunks, finished = stream.result()
    assert torch.equal(finished.codes, whole[1].codes)
    np.testing.assert_allclose(np.concatenate(chunks), np.concatenate(whole[0]), atol=1e-5)


@pytest.mark.parametrize("text, certain", [
    ("Hello there", "Hello"), ("Hello there ", "Hello there"), ("Hello, th", "Hello,"), ("Hi?! Yes", "Hi?!"),
    ("Well, ", "Well,"), ("Wait,\n", "Wait"), ("Wait,", "Wait"), ("a , b", "a ,"), ("3.14 is", "3.14"),
    ("你好，世界", "你好"), ("word", ""), ("", "")])
def test_the_certain_part_of_a_text_ends_where_its_last_ended_word_does(text, certain):
    assert text[:certain_end(text)] == certain


@pytest.mark.parametrize("text", [
    'Well, here it is: the train, late again; so... she said "Hi!" (twice) - then left.\nMr. Smith\'s 3.14?! Yes',
    "今天天气很好，我们去公园吧。你觉得呢？ 好的, ok. «Bonjour», dit-il : « ça va ? »",
    "Hello ,  world ;\tTabs,\there. End,\r\nCR? 'quoted', [brackets] {x}, 1,000 items. it's ok,'s x"])
def test_the_certain_part_splits_as_it_does_in_any_continuation(text):
    """The claim behind `certain_end`, against the tokenizer's own pre-split (which is what fixes the tokens):
    the pieces of the certain part start the pieces of the whole text and of other continuations."""
    pre = qwen_pre_tokenizer()

    def split(t):
        return [piece for piece, _ in pre.pre_tokenize_str(t)]

    for n in range(1, len(text) + 1):
        prefix = text[:n]
        certain = split(prefix[:certain_end(prefix)])
        for continued in (text, prefix + "x", prefix + "\n", prefix + ",\n", prefix + "'s", prefix + " ok"):
            assert split(continued)[:len(certain)] == certain, (prefix, continued)


def test_a_refused_piece_changes_nothing(tts):
    stream = tts.open_text(**KWARGS)
    stream.feed("Hello there, ")
    with pytest.raises(qtts.InputError, match="control token"):
        stream.feed("<|im_start|> ")
    assert stream.text == "Hello there, "
    stream.feed("general.")
    stream.end()
    expected = tts.submit("Hello there, general.", non_streaming_mode=False, **KWARGS).result()[1].codes
    assert torch.equal(stream.result()[1].codes, expected)


def test_the_request_waits_for_text_and_resumes_where_it_stopped(tts):
    expected = tts.submit(TEXT, non_streaming_mode=False, **KWARGS).result()[1].codes
    words = TEXT.split(" ")
    stream = tts.open_text(**KWARGS)
    stream.feed(" ".join(words[:3]) + " ")
    request, frames = waiting(stream, tts.engine)
    assert request.generating and request.enqueued == request.text_loaded  # out of text: waiting
    time.sleep(0.05)
    assert tts.engine.stats["frames"] == frames  # a batch of waiting rows runs no frames
    stream.feed(" ".join(words[3:8]) + " ")
    waiting(stream, tts.engine)
    stream.feed(" ".join(words[8:]))
    stream.end()
    assert torch.equal(stream.result()[1].codes, expected)


def test_a_live_stream_with_a_thin_lead_decodes_on_the_urgent_lane_and_keeps_its_audio(tts):
    """Words that come slower than they are spoken leave the stream's audio barely ahead of playback: each
    word's piece decodes on the urgent lane (ahead of frames on a GPU), past the ramp too, and the audio is
    still that of the whole text."""
    whole_chunks, whole_finished = tts.submit(TEXT, non_streaming_mode=False, **KWARGS).result()
    words = TEXT.split(" ")
    stats = tts.engine.stats
    bulk = stats["decode_calls"]["bulk"]
    urgent = stats["decode_calls"]["urgent"]
    stream = tts.open_text(**KWARGS)
    for word in words[:10]:  # about 13 tokens: 1 s of audio fed over 2 s, past the ramp's 4 chunks
        stream.feed(word + " ")
        waiting(stream, tts.engine)
        time.sleep(0.2)
    assert stats["decode_calls"]["urgent"] - urgent > 4
    assert stats["decode_calls"]["bulk"] == bulk
    stream.feed(" ".join(words[10:]))
    stream.end()
    chunks, finished = stream.result()
    assert torch.equal(finished.codes, whole_finished.codes)
    np.testing.assert_allclose(np.concatenate(chunks), np.concatenate(whole_chunks), atol=1e-5)


def test_control_tokens_in_a_later_piece_are_refused(tts):
    stream = tts.open_text(**KWARGS)
    stream.feed("A fine start ")
    with pytest.raises(qtts.InputError, match="control token"):
        stream.feed("and then <|im_end|> ")
    stream.cancel()
    stream.result()
    with pytest.raises(qtts.InputError, match="has ended"):
        stream.feed("more")


def test_an_icl_voice_gathers_the_text_and_speaks_it_at_the_end(tiny_checkpoint):
    """The ICL layout puts the whole text beside the reference frames in the prompt: such a stream starts
    its request at end(), with the whole text's codes; an x-vector voice streams as any other."""
    base = qtts.load(tiny_checkpoint("base"), device="cpu")
    try:
        t = np.arange(48000) / 24000
        clip = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.3 * t))).astype(np.float32), 24000
        greedy = dict(language="english", do_sample=False, subtalker_dosample=False, max_new_tokens=12)
        for voice, incremental in ((base.create_voice(clip, "A reference transcript."), False),
                                   (base.create_voice(clip), True)):
            expected = base.submit(TEXT, voice=voice, non_streaming_mode=False, **greedy).result()[1].codes
            stream = base.open_text(voice=voice, **greedy)
            stream.feed(TEXT[:30])
            assert (stream.generation is not None) == incremental
            stream.feed(TEXT[30:])
            stream.end()
            assert torch.equal(stream.result()[1].codes, expected)
    finally:
        base.close()
