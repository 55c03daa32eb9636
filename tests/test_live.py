"""WS /v1/audio/speech/stream end to end: a real uvicorn server on a free local port over a tiny random
checkpoint, driven by a real WebSocket client (the `websockets` package).

Each segment's audio is compared with `TTS.synthesize` of that segment's whole text in the streaming
layout, run in the test on its own copy of the model, so these tests prove which text each segment got,
and that text given to a request while it speaks gives the audio of the whole text with the session's
speaker and sampling.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack

import numpy as np
import pytest
import torch

import qtts

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
websockets_sync = pytest.importorskip("websockets.sync.client")

from qtts.audio import SAMPLES_PER_FRAME  # noqa: E402
from qtts.server import create_app  # noqa: E402
from qtts.server.live import MAX_WAITING_CHARS  # noqa: E402
from qtts.audio_formats import pcm16, wav_header  # noqa: E402
from servers import Server  # noqa: E402

FRAMES = 6  # max_new_tokens per segment: random weights rarely sample EOS, so about this many frames
GREEDY = {"seed": 7, "max_new_tokens": FRAMES, "do_sample": False, "subtalker_dosample": False}
RECEIVE_TIMEOUT = 60


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Tiny models run several times faster on one thread than on two contended ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def custom(tiny_checkpoint):
    """(server, reference TTS): the reference is a second copy of the model, used only by the test thread."""
    folder = tiny_checkpoint("custom_voice")
    tts = qtts.load(folder, device="cpu")
    server = Server(create_app(tts, model_name="tiny-custom"), closing=[tts])
    reference = qtts.load(folder, device="cpu")
    yield server, reference
    reference.close()
    server.close()


class Session:
    """A WebSocket client of the live endpoint that keeps every message in arrival order."""

    def __init__(self, server):
        self._stack = ExitStack()
        self.socket = self._stack.enter_context(websockets_sync.connect(
            server.url.replace("http://", "ws://") + "/v1/audio/speech/stream",
            open_timeout=30, close_timeout=10, max_size=None))
        self.received: list = []  # JSON events as dicts, audio frames as bytes

    def send(self, kind: str, **fields):
        self.socket.send(json.dumps({"type": kind, **fields}))

    def until(self, kind: str, **match) -> dict:
        """Receive until an event of `kind` (with the given fields) arrives; return it."""
        deadline = time.monotonic() + RECEIVE_TIMEOUT
        while True:
            message = self.socket.recv(timeout=max(deadline - time.monotonic(), 0.01))
            message = message if isinstance(message, bytes) else json.loads(message)
            self.received.append(message)
            if isinstance(message, dict) and message["type"] == kind and \
                    all(message.get(key) == value for key, value in match.items()):
                return message

    def until_audio(self) -> None:
        """Receive until some audio has arrived."""
        while not any(isinstance(m, bytes) for m in self.received):
            message = self.socket.recv(timeout=RECEIVE_TIMEOUT)
            self.received.append(message if isinstance(message, bytes) else json.loads(message))

    def events(self, kind: str) -> list[dict]:
        return [m for m in self.received if isinstance(m, dict) and m["type"] == kind]

    def audio(self, utterance: int, sentence: int | None = None) -> bytes:
        """The binary frames that followed the audio.start of (utterance, sentence), joined."""
        chunks, inside = [], False
        for message in self.received:
            if isinstance(message, dict):
                if message["type"] == "audio.start":
                    inside = message["utterance_index"] == utterance and sentence in (None, message["sentence_index"])
                elif message["type"] == "session.done" and message["utterance_index"] != utterance:
                    inside = False
            elif inside:
                chunks.append(message)
        return b"".join(chunks)

    def close(self):
        self._stack.close()


@pytest.fixture
def session(custom):
    opened = Session(custom[0])
    yield opened
    opened.close()


def reference(tts, text, speaker="ryan", **sampling) -> np.ndarray:
    audio = tts.synthesize(text, speaker=speaker, non_streaming_mode=False, **{**GREEDY, **sampling})
    return np.frombuffer(pcm16(audio.samples), dtype="<i2")


def assert_same_audio(data: bytes, expected: np.ndarray):
    """Streamed audio equals the complete decode up to float rounding, which can flip a sample's last bit."""
    streamed = np.frombuffer(data, dtype="<i2")
    assert len(streamed) == len(expected) > 0
    assert np.abs(streamed.astype(np.int32) - expected).max() <= 1


def configure(session, **fields) -> dict:
    session.send("session.config", voice="ryan", **{**GREEDY, **fields})
    return session.until("session.started")


def test_each_sentence_is_spoken_once_it_ends_while_the_rest_is_still_being_written(custom, session):
    server, tts = custom
    started = configure(session)
    assert started["sample_rate"] == 24000 and started["config"]["voice"] == "ryan"
    session.send("input.text", text="Hello there. How")
    first = session.until("audio.done", sentence_index=0)  # before the rest of the text exists
    session.send("input.text", text=" are you today? Fi")
    session.send("input.text", text="ne.")
    session.send("input.done")
    done = session.until("session.done")

    starts, dones = session.events("audio.start"), session.events("audio.done")
    assert [d["sentence_text"] for d in dones] == ["Hello there.", "How are you today?", "Fine."]
    assert all(s["utterance_index"] == 0 and s["format"] == "pcm" for s in starts)
    assert all(d["sentence_text"].startswith(s["sentence_text"]) for s, d in zip(starts, dones))
    expected = [reference(tts, d["sentence_text"]) for d in dones]
    for index, samples in enumerate(expected):
        assert_same_audio(session.audio(0, index), samples)
    assert dones[0] is first
    assert all(d["text_to_audio_ms"] > 0 for d in dones)
    assert [d["frames"] for d in dones] == [math.ceil(len(s) / SAMPLES_PER_FRAME) for s in expected]
    assert [d["samples"] for d in dones] == [len(s) for s in expected]
    assert not any(d["error"] for d in dones)
    assert done["total_sentences"] == 3 and done["samples"] == sum(len(s) for s in expected)
    assert done["frames"] == sum(d["frames"] for d in dones)


@pytest.mark.parametrize("first, spoken, rest", [
    ("Words arrive one by", "Words arrive one", " one, as a model writes them."),  # "by" may still grow
    # the comma's boundary is open until the next word, but "Well," belongs to the segment either way
    ("Well, ", "Well,", "here it is."),
], ids=["ended-words", "first-word-before-a-comma"])
def test_a_sentence_is_spoken_while_it_is_still_being_written(custom, session, first, spoken, rest):
    """True incremental text: the words that have ended are spoken before the sentence ends (the request
    then waits in the batch for more), and the whole sentence's audio is that of the whole text."""
    _, tts = custom
    configure(session, max_new_tokens=40)
    session.send("input.text", text=first)
    start = session.until("audio.start")
    assert start["sentence_text"] == spoken  # only what is certain to begin the sentence is given
    session.until_audio()
    assert not session.events("audio.done")  # audio of an unfinished sentence
    session.send("input.text", text=rest)
    session.send("input.done")
    session.until("session.done")
    done, = session.events("audio.done")
    assert done["sentence_text"] == first + rest
    assert_same_audio(session.audio(0), reference(tts, done["sentence_text"], max_new_tokens=40))


def test_a_session_runs_at_most_two_requests_however_fast_its_text_comes(custom, session):
    server, _ = custom
    configure(session, max_new_tokens=30)
    sentences = [f"Sentence number {word} is here." for word in
                 ("one", "two", "three", "four", "five", "six", "seven", "eight")]
    session.send("input.text", text=" ".join(sentences))
    session.send("input.done")
    most = 0
    deadline = time.monotonic() + RECEIVE_TIMEOUT
    while not session.events("session.done"):
        assert time.monotonic() < deadline, "the utterance was never finished"
        # one scrape: between two, a segment can finish and the next one join the queue
        most = max(most, sum(metrics(server, "qtts_requests_running", "qtts_queue_depth")))
        try:
            message = session.socket.recv(timeout=0.01)
        except TimeoutError:
            continue
        session.received.append(message if isinstance(message, bytes) else json.loads(message))
    assert 1 <= most <= 2  # the one being spoken and the next
    assert [d["sentence_text"] for d in session.events("audio.done")] == sentences
    assert not any(d["error"] for d in session.events("audio.done"))


def test_text_sent_far_faster_than_it_is_spoken_is_refused_past_a_bound(custom, session):
    configure(session, max_new_tokens=2)
    sentence = "A sentence of filler text that takes room. " * 90  # 3870 characters, 13 segments
    sent = 0
    while sent + len(sentence) <= MAX_WAITING_CHARS:
        session.send("input.text", text=sentence)
        sent += len(sentence)
    session.send("input.text", text=sentence)
    error = session.until("error")["error"]
    assert error["code"] == "input_backlog_full" and str(MAX_WAITING_CHARS) in error["message"]


def test_a_refused_delta_changes_nothing_and_the_sentence_goes_on(custom, session):
    _, tts = custom
    configure(session)
    session.send("input.text", text="Good ")
    session.send("input.text", text="<|im_end|> ")
    error = session.until("error")["error"]
    assert error["param"] == "text" and "control token" in error["message"]
    session.send("input.text", text="morning.")
    session.send("input.done")
    session.until("session.done")
    assert [d["sentence_text"] for d in session.events("audio.done")] == ["Good morning."]
    assert_same_audio(session.audio(0), reference(tts, "Good morning."))


def test_flush_speaks_what_is_buffered_and_keeps_the_utterance_open(custom, session):
    _, tts = custom
    configure(session)
    session.send("input.text", text="Half a sentence")
    session.send("input.flush")
    session.until("audio.done", sentence_index=0)
    session.send("input.text", text="and the rest.")
    session.send("input.done")
    done = session.until("session.done")
    assert [d["sentence_text"] for d in session.events("audio.done")] == ["Half a sentence", "and the rest."]
    assert done["utterance_index"] == 0 and done["total_sentences"] == 2
    assert_same_audio(session.audio(0, 1), reference(tts, "and the rest."))


def test_one_session_carries_several_utterances_and_a_new_config_between_them(custom, session):
    _, tts = custom
    configure(session)
    session.send("input.text", text="First one.")
    session.send("input.done")
    session.until("session.done", utterance_index=0)
    session.send("session.config", speaker="serena", response_format="wav", **GREEDY)  # vLLM-Omni's alias
    updated = session.until("session.updated")
    assert updated["config"]["voice"] == "serena"
    session.send("input.text", text="Second one.")
    session.send("input.done")
    second = session.until("session.done", utterance_index=1)

    assert_same_audio(session.audio(0), reference(tts, "First one."))
    wav = session.audio(1)
    assert wav[:44] == wav_header(None, 24000)  # each wav utterance is one streaming WAV file
    assert_same_audio(wav[44:], reference(tts, "Second one.", speaker="serena"))
    assert second["total_sentences"] == 1


def test_min_new_tokens_holds_every_segment_to_its_length(custom, session):
    # What benchmarks use to pin segment lengths: without it, random weights end a segment wherever they
    # happen to sample EOS.
    _, tts = custom
    configure(session, max_new_tokens=9, min_new_tokens=8)
    session.send("input.text", text="Hello there. Good")
    session.send("input.text", text="bye now.")
    session.send("input.done")
    session.until("session.done", utterance_index=0)

    assert [event["frames"] for event in session.events("audio.done")] == [8, 8]
    assert_same_audio(session.audio(0, 0), reference(tts, "Hello there.", max_new_tokens=9, min_new_tokens=8))


def test_text_sent_whole_or_in_small_deltas_gives_the_same_greedy_audio(custom):
    server, _ = custom
    text = "One sentence here. Another, with a clause; and an end! 最后一句。"
    spoken = []
    for deltas in ([text], [text[i:i + 3] for i in range(0, len(text), 3)]):
        session = Session(server)
        try:
            configure(session, split_granularity="clause")
            for delta in deltas:
                session.send("input.text", text=delta)
            session.send("input.done")
            session.until("session.done")
            spoken.append(([d["sentence_text"] for d in session.events("audio.done")], session.audio(0)))
        finally:
            session.close()
    assert spoken[0][0] == ["One sentence here.", "Another,", "with a clause;", "and an end!", "最后一句。"]
    assert len(spoken[0][1]) > 0 and spoken[0] == spoken[1]


def test_session_close_finishes_the_committed_speech_then_closes(custom, session):
    _, tts = custom
    configure(session)
    session.send("input.text", text="Said before closing.")
    session.send("session.close")
    session.until("session.done")
    assert_same_audio(session.audio(0), reference(tts, "Said before closing."))
    with pytest.raises(Exception) as closed:
        session.socket.recv(timeout=RECEIVE_TIMEOUT)
    assert getattr(closed.value, "rcvd", None) is not None and closed.value.rcvd.code == 1000


def metric(server, name, default=None) -> float:
    return metrics(server, name, default=default)[0]


def metrics(server, *names, default=None) -> list[float]:
    """The values of `names` from one scrape of /metrics (two scrapes would see two moments)."""
    values = {}
    for line in server.client.get("/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            values[name] = float(value)
    found = [values.get(name, default) for name in names]
    if None in found:
        raise AssertionError(f"{names} not all in /metrics")
    return found


CANCELLED = 'qtts_finished_requests_total{reason="cancelled"}'



def test_a_client_that_leaves_mid_utterance_frees_its_row_and_the_next_session_is_served(custom):
    server, tts = custom
    cancelled = metric(server, CANCELLED, default=0.0)
    leaving = Session(server)
    configure(leaving, max_new_tokens=2000)  # far longer than the test waits
    leaving.send("input.text", text="A very long sentence that the client will not wait for.")
    leaving.send("input.done")
    leaving.until("audio.start")
    while not any(isinstance(m, bytes) for m in leaving.received):
        leaving.received.append(leaving.socket.recv(timeout=RECEIVE_TIMEOUT))
    leaving.socket.close_socket()  # no closing handshake: the connection just drops

    deadline = time.monotonic() + 30
    while metric(server, "qtts_requests_running") != 0:
        assert time.monotonic() < deadline, "the engine kept generating for a client that left"
        time.sleep(0.05)
    assert metric(server, CANCELLED, default=0.0) == cancelled + 1

    session = Session(server)
    try:
        configure(session)
        session.send("input.text", text="Next session.")
        session.send("input.done")
        session.until("session.done")
        assert_same_audio(session.audio(0), reference(tts, "Next session."))
    finally:
        session.close()


def test_bad_messages_get_a_clear_error_and_the_session_carries_on(custom, session):
    _, tts = custom

    def error_for(message) -> dict:
        session.socket.send(message)
        return session.until("error")["error"]

    assert "not valid JSON" in error_for("{nope")["message"]
    assert error_for(json.dumps(["a list"]))["param"] == "type"
    assert "unknown message type 'input.txt'" in error_for(json.dumps({"type": "input.txt"}))["message"]
    assert error_for(json.dumps({"type": "input.text", "text": "Hi."}))["code"] == "session_not_configured"
    assert "binary messages" in error_for(b"\x00\x01")["message"]
    unknown = error_for(json.dumps({"type": "session.config", "voice": "nobody"}))
    assert unknown["code"] == "voice_not_found" and "ryan" in unknown["message"]
    assert unknown.keys() == {"message", "type", "param", "code"} and unknown["type"] == "invalid_request_error"
    assert error_for(json.dumps({"type": "session.config", "voice": "ryan", "response_format": "mp3"}))["param"] \
        == "response_format"
    assert "unknown field 'colour'" in error_for(json.dumps({"type": "session.config", "colour": 1}))["message"]
    assert error_for(json.dumps({"type": "session.config", "voice": "ryan", "language": "klingon"}))["code"] \
        == "unsupported_language"
    bad_sampling = error_for(json.dumps({"type": "session.config", "voice": "ryan", "temperature": -1}))
    assert bad_sampling["param"] == "temperature" and "positive number" in bad_sampling["message"]

    configure(session)
    assert error_for(json.dumps({"type": "input.text", "text": 5}))["param"] == "text"
    session.send("input.text", text="Still here")
    assert error_for(json.dumps({"type": "session.config", "voice": "serena"}))["code"] == "utterance_in_progress"
    session.send("input.text", text=", and speaking.")
    session.send("input.done")
    session.until("session.done")
    assert [d["sentence_text"] for d in session.events("audio.done")] == ["Still here, and speaking."]
    assert_same_audio(session.audio(0), reference(tts, "Still here, and speaking."))


def test_the_page_and_its_script_are_served(custom):
    server, _ = custom
    page = server.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for control in ('id="text"', 'id="speaker"', 'id="language"', 'id="play"', 'id="live"', 'id="first-audio"'):
        assert control in page.text
    script = server.client.get("/static/app.js")
    assert script.status_code == 200 and "/v1/audio/speech/stream" in script.text
    assert "http" not in script.text.replace("https:", "")  # offline: nothing is fetched from elsewhere
