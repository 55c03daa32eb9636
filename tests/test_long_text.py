"""Long text is spoken as consecutive segments with the same voice, through the Python API (whole and
streamed; the CLI speaks through it) and the HTTP endpoint: each segment its own request, two at most in
the engine at once."""

from __future__ import annotations

import time

import numpy as np
import pytest

import qtts
from qtts.audio_formats import pcm16
from qtts.long_text import SEGMENT_CHARS, Segments, split_long_text

from servers import Server

SENTENCES = [
    "The harbour was quiet that morning, and the boats rocked gently against the old stone wall.",
    "A fisherman mended his nets while gulls argued over scraps near the market stalls.",
    "Further along the quay, a café opened its shutters and set out chairs in the pale sunlight.",
    "Children ran past with a kite that refused to fly, laughing each time it tumbled to the ground.",
    "By noon the tide had turned, and the first ferry of the day sounded its horn across the bay.",
    "Travellers gathered at the gate with suitcases, maps and the patient look of people on holiday.",
    "The captain waved from the bridge as the ropes were thrown and the engines began to hum.",
    "Soon the town was only a line of white houses, and the open sea stretched out ahead of them.",
]
LONG = " ".join(SENTENCES)
KWARGS = dict(speaker="ryan", language="english", max_new_tokens=7, min_new_tokens=6)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tts(tiny_checkpoint):
    tts = qtts.load(tiny_checkpoint("custom_voice"), device="cpu")
    yield tts
    tts.close()


def test_long_text_is_cut_at_sentence_ends_and_short_text_is_not_cut():
    segments = split_long_text(LONG)
    assert len(LONG) > 2 * SEGMENT_CHARS and len(segments) >= 3
    assert all(len(s) <= SEGMENT_CHARS and s.endswith(".") for s in segments)
    assert " ".join(segments) == LONG
    assert split_long_text(SENTENCES[0]) == [SENTENCES[0]]


def test_long_text_sounds_as_its_segments_said_one_after_another_streamed_or_whole(tts):
    segments = split_long_text(LONG)
    alone = [tts.synthesize(text, seed=5 + i, **KWARGS).samples for i, text in enumerate(segments)]
    whole = tts.synthesize(LONG, seed=5, **KWARGS).samples
    np.testing.assert_allclose(whole, np.concatenate(alone), atol=1e-5)
    streamed = np.concatenate([chunk.samples for chunk in tts.synthesize(LONG, seed=5, stream=True, **KWARGS)])
    np.testing.assert_allclose(streamed, whole, atol=1e-5)


def test_a_long_text_holds_at_most_two_rows_and_cancelling_frees_them(tts):
    handle = tts.submit(LONG, seed=1, **KWARGS)
    assert isinstance(handle, Segments)
    engine = tts.engine
    seen = []
    for _ in handle:
        seen.append(engine.running + engine.queued)
    assert handle.finished.reason == "length" and handle.finished.codes.shape[0] == 6 * len(split_long_text(LONG))
    assert max(seen) <= 2

    handle = tts.submit(LONG, seed=1, **KWARGS)
    next(handle)
    handle.cancel()
    list(handle)  # what was made before the cancel arrived
    assert handle.finished.reason == "cancelled"
    deadline = time.monotonic() + 30
    while engine.running or engine.queued:
        assert time.monotonic() < deadline, "the cancelled segments kept their rows"
        time.sleep(0.02)


def test_the_speech_endpoint_speaks_every_segment_of_a_long_input(tts):
    from qtts.server import create_app

    server = Server(create_app(tts, model_name="tiny-custom"))
    try:
        body = {"model": "tiny-custom", "input": LONG, "voice": "ryan", "language": "english", "seed": 5,
                "max_new_tokens": 7, "min_new_tokens": 6, "response_format": "pcm"}
        response = server.client.post("/v1/audio/speech", json=body)
        assert response.status_code == 200
        expected = tts.synthesize(LONG, seed=5, **KWARGS)
        received = np.frombuffer(response.content, dtype="<i2").astype(np.int32)
        reference = np.frombuffer(pcm16(expected.samples), dtype="<i2")
        assert len(received) == len(reference) == 6 * 1920 * len(split_long_text(LONG))
        assert np.abs(received - reference).max() <= 1
    finally:
        server.close()
