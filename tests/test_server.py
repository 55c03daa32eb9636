"""The HTTP server end to end: a real uvicorn server on a free local port over tiny random checkpoints.

Audio from the server is compared with `TTS.synthesize` run in the test on its own copy of the model, so
these tests prove the request reaches the engine intact (text, speaker, language, seed) and that every
format and stream carries the very same samples.
"""

from __future__ import annotations

import base64
import gc
import io
import json
import math
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile
import torch

import qtts

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart", reason="the server needs python-multipart (the server extra)")

from qtts.audio import SAMPLES_PER_FRAME  # noqa: E402
from qtts.server import create_app  # noqa: E402
from qtts.audio_formats import FORMATS, pcm16  # noqa: E402
from servers import Server  # noqa: E402

TEXT = "Hello from the server."
FRAMES = 12  # max_new_tokens of most requests: random weights rarely sample EOS, so about this many frames
SPEAKER = "ryan"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Tiny models run several times faster on one thread than on two contended ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def start(folder, max_batch: int = 64, **options):
    tts = qtts.load(folder, device="cpu", max_batch=max_batch)
    return Server(create_app(tts, **options), closing=[tts])


@pytest.fixture(scope="module")
def custom(tiny_checkpoint):
    """(server, reference TTS): the reference is a second copy of the model, used only by the test thread."""
    folder = tiny_checkpoint("custom_voice")
    server = start(folder, model_name="tiny-custom")
    reference = qtts.load(folder, device="cpu")
    yield server, reference
    reference.close()
    server.close()


@pytest.fixture(scope="module")
def base(tiny_checkpoint, tmp_path_factory):
    folder = tiny_checkpoint("base")
    voices_dir = tmp_path_factory.mktemp("voices")
    server = start(folder, voices_dir=voices_dir)
    yield server, folder, voices_dir
    server.close()


def speak(server, **fields):
    body = {"model": "tiny-custom", "input": TEXT, "voice": SPEAKER, "seed": 7, "max_new_tokens": FRAMES}
    body.update(fields)
    return server.client.post("/v1/audio/speech", json=body)


def samples_of(response, fmt):
    """The int16 samples of a response body (pcm: raw; others: decoded by libsndfile)."""
    if fmt == "pcm":
        return np.frombuffer(response.content, dtype="<i2")
    data, rate = soundfile.read(io.BytesIO(response.content), dtype="int16")
    assert rate == 24000
    return data


def reference_samples(tts, **kwargs):
    audio = tts.synthesize(TEXT, speaker=SPEAKER, seed=7, max_new_tokens=FRAMES, **kwargs)
    return np.frombuffer(pcm16(audio.samples), dtype="<i2")


def assert_streamed_equals(streamed, complete):
    """Streamed audio equals the complete decode up to float rounding, which can flip a sample's last bit."""
    assert len(streamed) == len(complete) > 0
    assert np.abs(streamed.astype(np.int32) - complete).max() <= 1


def metric(server, name, default=None):
    text = server.client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    if default is None:
        raise AssertionError(f"{name} not in /metrics:\n{text}")
    return default


def wait_for(condition, why, seconds=15.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, why
        time.sleep(0.02)


def wait_until_idle(server, seconds=15.0, why="the engine is still busy"):
    """The engine finishes its bookkeeping just after the last bytes leave, so idleness is polled for."""
    wait_for(lambda: metric(server, "qtts_requests_running") == metric(server, "qtts_queue_depth") == 0, why,
             seconds)


def cancelled(server) -> float:
    return metric(server, 'qtts_finished_requests_total{reason="cancelled"}', default=0.0)


def raw_request(server, method, path, body) -> socket.socket:
    """Send a JSON request on a bare socket and return it unread: closing it is a client hanging up."""
    host, port = server.url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    connection = socket.create_connection((host, int(port)))
    connection.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return connection


def assert_error(response, status, *words, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    for word in words:
        assert word.lower() in error["message"].lower(), error["message"]
    if param is not None:
        assert error["param"] == param
    return error


# -- speech --------------------------------------------------------------------------------------------------
def test_wav_equals_the_python_api_for_the_same_request(custom):
    server, tts = custom
    response = speak(server, response_format="wav", language="English")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    got = samples_of(response, "wav")
    want = reference_samples(tts, language="English")
    assert 0 < len(got) <= FRAMES * SAMPLES_PER_FRAME and len(got) % SAMPLES_PER_FRAME == 0
    np.testing.assert_array_equal(got, want)
    # The header is exact (not the streaming one): sizes match the body.
    assert struct.unpack("<I", response.content[40:44])[0] == len(response.content) - 44


def test_lossless_formats_carry_the_same_samples(custom):
    server, tts = custom
    want = reference_samples(tts)
    flac = speak(server, response_format="flac")
    assert flac.headers["content-type"] == "audio/flac"
    np.testing.assert_array_equal(samples_of(flac, "flac"), want)
    pcm = speak(server, response_format="pcm")  # raw samples always leave as they are made
    assert pcm.headers["content-type"] == "audio/pcm"
    assert_streamed_equals(samples_of(pcm, "pcm"), want)


@pytest.mark.parametrize("fmt", [f for f in ("mp3", "opus") if f in FORMATS])
def test_lossy_formats_decode_to_the_right_length(custom, fmt):
    server, tts = custom
    response = speak(server, response_format=fmt)
    assert response.status_code == 200, response.text
    got = samples_of(response, fmt)
    want = len(reference_samples(tts))
    # Encoders pad to whole packets and add priming delay: a few tens of milliseconds at most.
    assert want <= len(got) <= want + 0.1 * 24000


def test_default_format_is_openais_mp3_where_writable(custom):
    server, _ = custom
    response = speak(server)
    assert response.status_code == 200
    want = "audio/mpeg" if "mp3" in FORMATS else "audio/wav"
    assert response.headers["content-type"] == want


def test_sampling_extensions_reach_the_engine(custom):
    server, tts = custom
    greedy = dict(do_sample=False, subtalker_dosample=False)
    response = speak(server, response_format="wav", seed=None, **greedy)
    np.testing.assert_array_equal(samples_of(response, "wav"), reference_samples(tts, **greedy))
    other_seed = speak(server, response_format="wav", seed=8)
    assert not np.array_equal(samples_of(other_seed, "wav"), reference_samples(tts))


# -- streaming ----------------------------------------------------------------------------------------------
def test_pcm_stream_arrives_before_the_end_and_equals_the_complete_wav(custom):
    server, _ = custom
    frames = 40
    body = {"input": TEXT, "voice": SPEAKER, "seed": 7, "max_new_tokens": frames, "response_format": "pcm"}
    pieces, arrivals = [], []
    start_time = time.monotonic()
    with server.client.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        for piece in response.iter_raw():
            pieces.append(piece)
            arrivals.append(time.monotonic() - start_time)
    assert len(pieces) > 1
    assert arrivals[0] < 0.5 * arrivals[-1], arrivals  # the first chunk leaves after one frame, not at the end
    complete = speak(server, response_format="wav", max_new_tokens=frames)
    assert_streamed_equals(np.frombuffer(b"".join(pieces), dtype="<i2"), samples_of(complete, "wav"))


def test_wav_stream_has_a_streaming_header_and_the_same_samples(custom):
    server, _ = custom
    streamed = speak(server, response_format="wav", stream_format="audio")
    assert streamed.status_code == 200, streamed.text
    assert streamed.content[4:8] == streamed.content[40:44] == b"\xff\xff\xff\xff"
    assert_streamed_equals(samples_of(streamed, "wav"), samples_of(speak(server, response_format="wav"), "wav"))


def sse_events(response):
    assert response.headers["content-type"].startswith("text/event-stream")
    return [json.loads(line[len("data: "):]) for line in response.text.splitlines() if line.startswith("data: ")]


def test_sse_sends_audio_deltas_then_done_with_usage(custom):
    server, _ = custom
    events = sse_events(speak(server, response_format="pcm", stream_format="sse"))
    assert [e["type"] for e in events] == ["speech.audio.delta"] * (len(events) - 1) + ["speech.audio.done"]
    assert len(events) > 2  # several deltas: the audio left as it was made
    audio = np.frombuffer(b"".join(base64.b64decode(e["audio"]) for e in events[:-1]), dtype="<i2")
    assert_streamed_equals(audio, samples_of(speak(server, response_format="wav"), "wav"))
    usage = events[-1]["usage"]
    assert usage["output_tokens"] == len(audio) // SAMPLES_PER_FRAME and usage["input_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_sse_of_a_whole_file_format_is_one_delta(custom):
    server, _ = custom
    events = sse_events(speak(server, response_format="flac", stream_format="sse"))
    assert [e["type"] for e in events] == ["speech.audio.delta", "speech.audio.done"]
    flac = soundfile.read(io.BytesIO(base64.b64decode(events[0]["audio"])), dtype="int16")[0]
    np.testing.assert_array_equal(flac, samples_of(speak(server, response_format="wav"), "wav"))


def test_sse_error_before_audio_is_a_plain_400(custom):
    server, _ = custom
    assert_error(speak(server, stream_format="sse", response_format="pcm", top_p=2.0), 400, "top_p")


@pytest.fixture(scope="module")
def one_row(tiny_checkpoint):
    """A server whose engine runs one request at a time, so that others must wait for a row."""
    # A first-audio target no wait can miss: these tests are about the queue's length alone.
    server = start(tiny_checkpoint("custom_voice"), max_batch=1, model_name="tiny-custom", max_queue=1,
                   first_audio_target=1e6)
    yield server
    server.close()


def test_clients_that_leave_free_their_rows_and_others_carry_on(one_row, custom):
    server, (_, tts) = one_row, custom
    before = cancelled(server)
    long = {"input": TEXT, "voice": SPEAKER, "response_format": "pcm", "max_new_tokens": 2000}
    with server.client.stream("POST", "/v1/audio/speech", json=long) as leaving:
        chunks = leaving.iter_raw()  # held: dropping a half-read iterator would close the connection now
        next(chunks)  # generation is under way; 2000 frames would take minutes
        # A second client gives up while its request still waits for the only row.
        waiting = raw_request(server, "POST", "/v1/audio/speech", {**long, "response_format": "wav"})
        wait_for(lambda: metric(server, "qtts_queue_depth") == 1, "the second request never queued")
        waiting.close()
        # Its place frees at once, not when the engine would have reached it.
        wait_for(lambda: metric(server, "qtts_queue_depth") == 0, "a client who left still holds a queue place")
    # Leaving the block hung up the first client mid-stream: both requests end, no row stays taken.
    wait_until_idle(server, why="the engine is still busy with requests whose clients left")
    assert cancelled(server) == before + 2
    response = speak(server, response_format="wav")
    assert response.status_code == 200
    np.testing.assert_array_equal(samples_of(response, "wav"), reference_samples(tts))


def test_a_client_that_leaves_a_whole_file_request_frees_its_row(custom):
    server, _ = custom
    before = cancelled(server)
    body = {"input": TEXT, "voice": SPEAKER, "response_format": "flac", "max_new_tokens": 2000}
    leaving = raw_request(server, "POST", "/v1/audio/speech", body)
    wait_for(lambda: metric(server, "qtts_requests_running") == 1, "the request never started")
    leaving.close()
    wait_until_idle(server, why="a whole-file request whose client left still runs")
    assert cancelled(server) == before + 1


def test_requests_run_together_and_each_gets_its_own_audio(custom):
    server, tts = custom
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda seed: speak(server, response_format="wav", seed=seed), (7, 7, 8, 9)))
    assert all(r.status_code == 200 for r in responses)
    audio = [samples_of(r, "wav") for r in responses]
    np.testing.assert_array_equal(audio[0], reference_samples(tts))
    np.testing.assert_array_equal(audio[0], audio[1])
    assert not np.array_equal(audio[0], audio[2])


# -- models, health, metrics ------------------------------------------------------------------------------
def test_models_health_and_metrics(custom):
    server, tts = custom
    models = server.client.get("/v1/models").json()
    assert models["object"] == "list"
    card = models["data"][0]
    assert card["id"] == "tiny-custom" and card["object"] == "model"
    assert card["speakers"] == tts.speakers and card["model_type"] == "custom_voice"
    assert server.client.get("/openapi.json").status_code == 200  # /docs can describe every route
    health = server.client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"

    speech_requests = 'qtts_requests_total{endpoint="/v1/audio/speech"}'
    bad_requests = 'qtts_request_errors_total{status="400"}'
    seconds, requests, errors = (metric(server, name, 0) for name in
                                 ("qtts_audio_seconds_total", speech_requests, bad_requests))
    response = speak(server, response_format="wav")
    spoken = len(samples_of(response, "wav")) / 24000
    assert metric(server, "qtts_audio_seconds_total") == pytest.approx(seconds + spoken)
    assert metric(server, speech_requests) == requests + 1
    wait_until_idle(server, seconds=5)
    speak(server, input="")
    assert metric(server, speech_requests) == requests + 2
    assert metric(server, bad_requests) == errors + 1

    collections = metric(server, "qtts_gc_pause_seconds_count")
    paused = metric(server, "qtts_gc_pause_seconds_sum")
    gc.collect()  # a full collection in the server's process (the test's own)
    assert metric(server, "qtts_gc_pause_seconds_count") > collections
    assert metric(server, "qtts_gc_pause_seconds_sum") > paused


# -- errors ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, status, words, param", [
    ({"input": ""}, 400, ["input", "empty"], "input"),
    ({"input": "   "}, 400, ["input", "empty"], "input"),
    ({"input": "a" * 4097}, 400, ["4097", "4096"], "input"),
    ({"voice": "alloy"}, 400, ["alloy", "ryan"], "voice"),
    ({"voice": None}, 400, ["voice is required"], "voice"),
    ({"language": "klingon"}, 400, ["klingon", "english"], "language"),
    ({"response_format": "aac"}, 400, ["aac", "wav"], "response_format"),
    ({"speed": 1.5}, 400, ["speed", "1.5"], "speed"),
    ({"model": "someone-elses-model"}, 404, ["someone-elses-model", "tiny-custom"], "model"),
    ({"temprature": 0.5}, 400, ["temprature"], "temprature"),
    ({"stream_format": "ogg"}, 400, ["stream_format"], "stream_format"),
    ({"temperature": -1}, 400, ["temperature"], "temperature"),
    ({"top_p": 1.5}, 400, ["top_p", "(0, 1]"], "top_p"),
    ({"subtalker_top_k": -2}, 400, ["subtalker_top_k"], "subtalker_top_k"),
    ({"max_new_tokens": 0}, 400, ["max_new_tokens"], "max_new_tokens"),
    ({"max_new_tokens": 10**9}, 400, ["max_new_tokens", "limit"], "max_new_tokens"),
])
def test_bad_speech_requests_get_a_clear_openai_error(custom, fields, status, words, param):
    server, _ = custom
    error = assert_error(speak(server, **fields), status, *words, param=param)
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


def test_malformed_bodies_and_unknown_routes(custom):
    server, _ = custom
    bad_json = server.client.post("/v1/audio/speech", content=b"{not json",
                                  headers={"content-type": "application/json"})
    assert_error(bad_json, 400, "json")
    missing = server.client.post("/v1/audio/speech", json={"voice": SPEAKER})
    assert_error(missing, 400, "input is required", param="input")
    assert_error(server.client.get("/v1/nothing-here"), 404)
    assert_error(server.client.delete("/v1/voices/voice_0"), 404, "voice_0")


def test_an_openai_model_name_is_accepted(custom):
    server, _ = custom
    for name in ("tts-1", "gpt-4o-mini-tts"):
        assert speak(server, model=name, max_new_tokens=2, response_format="pcm").status_code == 200


# -- concurrency ------------------------------------------------------------------------------------------
def test_concurrent_requests_all_succeed_and_do_not_mix(custom):
    server, tts = custom
    seeds = [1, 2, 1, 2, 3, 1]
    with ThreadPoolExecutor(len(seeds)) as pool:
        responses = list(pool.map(lambda seed: speak(server, response_format="wav", seed=seed), seeds))
    assert [r.status_code for r in responses] == [200] * len(seeds)
    audio = [samples_of(r, "wav") for r in responses]
    by_seed = {}
    for seed, samples in zip(seeds, audio):
        by_seed.setdefault(seed, samples)
        np.testing.assert_array_equal(samples, by_seed[seed])
    assert not np.array_equal(by_seed[1], by_seed[2])
    wait_until_idle(server, seconds=5)


def test_full_queue_answers_503_with_retry_after(one_row):
    server = one_row
    body = {"input": TEXT, "voice": SPEAKER, "response_format": "pcm", "stream_format": "audio"}
    # A long stream occupies the only row; one request waits; the next finds the queue full.
    with server.client.stream("POST", "/v1/audio/speech", json={**body, "max_new_tokens": 2000}) as running:
        assert running.status_code == 200
        chunks = running.iter_raw()  # held: dropping a half-read iterator would close the connection now
        next(chunks)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(speak, server, response_format="wav")
            wait_for(lambda: metric(server, "qtts_queue_depth") == 1, "the second request never queued")
            busy = speak(server, response_format="wav")
            assert_error(busy, 503, "busy")
            assert busy.headers["retry-after"] == "1"
            running.close()  # the client leaves: the engine moves on to the waiting request
            assert waiting.result().status_code == 200


def test_a_request_that_would_wait_past_the_first_audio_target_answers_503(tiny_checkpoint):
    tts = qtts.load(tiny_checkpoint("custom_voice"), device="cpu", max_batch=1)
    server = Server(create_app(tts, model_name="tiny-custom", first_audio_target=1e-6), closing=[tts])
    try:
        # Requests back to back through the only row teach the engine how fast rows free up; the last one
        # then holds the row, waiting for text.
        short = [tts.submit(TEXT, speaker=SPEAKER, max_new_tokens=3) for _ in range(5)]
        held = tts.open_text(speaker=SPEAKER, max_new_tokens=40)
        held.feed("Hello there ")
        for generation in short:
            generation.result()
        wait_for(lambda: tts.engine.running == 1 and tts.engine.queued == 0, "the held request never started")
        rate = tts.engine.departure_rate()
        assert rate is not None
        busy = speak(server, response_format="wav")  # would wait 1 / rate seconds for the row
        assert_error(busy, 503, "busy")
        assert int(busy.headers["retry-after"]) == max(1, math.ceil(1 / rate))
        held.cancel()
        held.result()
        wait_until_idle(server)
        assert speak(server, response_format="wav").status_code == 200  # an idle engine takes anything
    finally:
        server.close()


def test_a_stuck_engine_is_unhealthy_and_refuses_requests_until_it_moves_again(tiny_checkpoint):
    tts = qtts.load(tiny_checkpoint("custom_voice"), device="cpu", max_batch=4)
    server = Server(create_app(tts, model_name="tiny-custom", stall_limit=0.5), closing=[tts])
    try:
        running = tts.submit(TEXT, speaker=SPEAKER, max_new_tokens=2000, min_new_tokens=2000)
        next(iter(running))  # the engine has work in hand and is getting it done
        assert server.client.get("/health").status_code == 200
        assert metric(server, "qtts_engine_stalled_seconds") < 0.5
        with tts.engine._lock:  # the engine thread takes this lock every iteration: it is stuck until released
            time.sleep(1.0)
            health, ready = server.client.get("/health"), server.client.get("/ready")
            refused = speak(server, response_format="wav")
            stalled = metric(server, "qtts_engine_stalled_seconds")
        assert health.status_code == 503 and "no progress" in health.json()["message"]
        assert ready.status_code == 503
        assert_error(refused, 503, "no progress")
        assert stalled >= 0.5  # past the limit (the thread may finish its iteration after the lock is taken)
        wait_for(lambda: server.client.get("/health").status_code == 200, "the engine never moved again")
        running.cancel()
        running.result()
        wait_until_idle(server)
        assert speak(server, response_format="wav").status_code == 200
    finally:
        server.close()


# -- voices (Base model) ---------------------------------------------------------------------------------
def reference_wav(seconds=2.0):
    rng = np.random.default_rng(0)
    t = np.arange(int(24000 * seconds)) / 24000
    wav = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.3 * t)) + 0.05 * rng.standard_normal(t.shape)
    buffer = io.BytesIO()
    soundfile.write(buffer, wav.astype(np.float32), 24000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def upload(server, data, **form):
    return server.client.post("/v1/voices", files={"audio_sample": ("ref.wav", data, "audio/wav")}, data=form)


def test_voice_upload_then_speech_then_delete(base):
    server, folder, voices_dir = base
    made = upload(server, reference_wav(), ref_text="A short reference sentence.", name="alice")
    assert made.status_code == 200, made.text
    voice = made.json()
    assert voice["object"] == "audio.voice" and voice["name"] == "alice" and voice["icl"] is True
    assert (voices_dir / f"{voice['id']}.safetensors").is_file()
    listed = server.client.get("/v1/voices").json()["data"]
    assert voice["id"] in [v["id"] for v in listed]

    body = {"input": TEXT, "voice": voice["id"], "response_format": "wav", "seed": 3, "max_new_tokens": FRAMES}
    spoken = server.client.post("/v1/audio/speech", json=body)
    assert spoken.status_code == 200, spoken.text
    # The same voice read back from its file, run through the Python API, gives the same audio.
    tts = qtts.load(folder, device="cpu")
    saved = qtts.Voice.load(voices_dir / f"{voice['id']}.safetensors")
    want = tts.synthesize(TEXT, voice=saved, seed=3, max_new_tokens=FRAMES)
    np.testing.assert_array_equal(samples_of(spoken, "wav"), np.frombuffer(pcm16(want.samples), dtype="<i2"))
    # OpenAI's voice reference object works too.
    as_object = server.client.post("/v1/audio/speech", json={**body, "voice": {"id": voice["id"]}})
    assert as_object.content == spoken.content

    deleted = server.client.delete(f"/v1/audio/voices/{voice['id']}")
    assert deleted.json() == {"id": voice["id"], "object": "audio.voice.deleted", "deleted": True}
    assert not (voices_dir / f"{voice['id']}.safetensors").exists()
    assert_error(server.client.post("/v1/audio/speech", json=body), 400, voice["id"], param="voice")
    assert_error(server.client.delete(f"/v1/voices/{voice['id']}"), 404, voice["id"])


def test_voices_dir_survives_a_restart(base):
    server, folder, voices_dir = base
    made = upload(server, reference_wav(), name="bob").json()  # x-vector only: no transcript
    assert made["icl"] is False
    restarted = start(folder, voices_dir=voices_dir)
    try:
        listed = {v["id"]: v for v in restarted.client.get("/v1/voices").json()["data"]}
        assert listed[made["id"]]["name"] == "bob" and listed[made["id"]]["created_at"] == made["created_at"]
        body = {"input": TEXT, "voice": made["id"], "response_format": "pcm", "max_new_tokens": 3}
        assert restarted.client.post("/v1/audio/speech", json=body).status_code == 200
    finally:
        restarted.close()


def test_bad_voice_uploads_get_400_naming_the_problem(base, custom):
    server, _, _ = base
    assert_error(upload(server, b"this is not audio"), 400, "cannot read")
    short = io.BytesIO()
    soundfile.write(short, np.full(2400, 0.1, dtype=np.float32), 24000, format="WAV")
    assert_error(upload(server, short.getvalue()), 400, "too short")
    assert_error(server.client.post("/v1/voices", data={"name": "x"}), 400, "audio_sample")
    assert_error(upload(server, reference_wav(), ref_text="   "), 400, "ref_text")
    body = {"input": TEXT, "voice": "voice_missing", "response_format": "wav"}
    assert_error(server.client.post("/v1/audio/speech", json=body), 400, "voice_missing", param="voice")
    assert_error(server.client.post("/v1/audio/speech", json={**body, "instructions": "happy"}), 400,
                 "instructions")
    custom_server, _ = custom
    assert_error(upload(custom_server, reference_wav()), 400, "base")


# -- OpenAI's own client, and the command line -----------------------------------------------------------
def test_the_official_openai_client_works_unchanged(custom, base):
    openai = pytest.importorskip("openai")
    server, tts = custom
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed")
    extensions = {"seed": 7, "max_new_tokens": FRAMES}
    wav = client.audio.speech.create(model="tts-1", voice=SPEAKER, input=TEXT, response_format="wav",
                                     extra_body=extensions)
    np.testing.assert_array_equal(soundfile.read(io.BytesIO(wav.content), dtype="int16")[0], reference_samples(tts))
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice=SPEAKER, input=TEXT, response_format="pcm", extra_body=extensions
    ) as streamed:
        pcm = b"".join(streamed.iter_bytes())
    assert_streamed_equals(np.frombuffer(pcm, dtype="<i2"), reference_samples(tts))
    with pytest.raises(openai.BadRequestError, match="alloy"):
        client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)

    base_server = base[0]
    base_client = openai.OpenAI(base_url=base_server.url + "/v1", api_key="not-needed")
    voice = base_client.audio.voices.create(audio_sample=("ref.wav", reference_wav(), "audio/wav"),
                                            consent="cons_test", name="carol")
    assert voice.name == "carol" and voice.object == "audio.voice"
    spoken = base_client.audio.speech.create(model="tts-1", voice={"id": voice.id}, input=TEXT,
                                             response_format="pcm", extra_body={"max_new_tokens": 3})
    assert len(spoken.content) > 0
    assert base_client.audio.voices.delete(voice.id).deleted


def test_qtts_serve_command(tiny_checkpoint):
    import subprocess
    import sys

    with socket.socket() as probe:  # a port free a moment ago; the server binds it right away
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = str(tiny_checkpoint("voice_design", mtp_projection=False))
    process = subprocess.Popen([sys.executable, "-m", "qtts.cli", "serve", "--model", folder, "--port", str(port),
                                "--device", "cpu", "--served-model-name", "designer"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "qtts serve did not come up"
            time.sleep(0.2)
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "designer"
        body = {"model": "designer", "input": TEXT, "instructions": "A calm, low voice.", "response_format": "wav",
                "max_new_tokens": 3}
        response = httpx.post(url + "/v1/audio/speech", json=body, timeout=60)
        assert response.status_code == 200, response.text
        assert len(samples_of(response, "wav")) > 0
    finally:
        process.terminate()
        process.wait(30)


# -- the parts on their own ------------------------------------------------------------------------------
def test_voice_store_reads_hand_made_files_and_skips_foreign_ones(tmp_path):
    from qtts.server.voice_store import VoiceStore

    qtts.Voice(torch.randn(16)).save(tmp_path / "narrator.safetensors")  # as `qtts clone -o` writes it
    qtts.Voice(torch.randn(32)).save(tmp_path / "too-wide.safetensors")  # made for another model width
    qtts.Voice(torch.randn(16)).save(tmp_path / ".hidden.safetensors")  # not a valid id
    (tmp_path / "broken.safetensors").write_bytes(b"not a voice")
    store = VoiceStore(tmp_path, hidden_size=16)
    assert [stored.id for stored in store.list()] == ["narrator"]
    assert store.get("narrator").name == "narrator"
    added = store.add(qtts.Voice(torch.randn(16)), name="new")
    assert [stored.id for stored in VoiceStore(tmp_path, hidden_size=16).list()] == ["narrator", added.id]
    assert store.delete(added.id) and not store.delete(added.id)
    assert not (tmp_path / f"{added.id}.safetensors").exists() and not (tmp_path / f"{added.id}.json").exists()


def test_voice_stores_sharing_a_folder_see_each_others_voices(tmp_path):
    """Replicas of one server each hold a store over the same folder: the folder, not memory, decides."""
    from qtts.server.voice_store import VoiceStore

    one, other = VoiceStore(tmp_path, hidden_size=16), VoiceStore(tmp_path, hidden_size=16)
    added = one.add(qtts.Voice(torch.randn(16)), name="shared")
    found = other.get(added.id)
    assert found is not None and found.name == "shared" and found.created_at == added.created_at
    torch.testing.assert_close(found.voice.speaker_embedding, added.voice.speaker_embedding)
    assert [stored.id for stored in other.list()] == [added.id]
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporary files left
    assert other.delete(added.id)
    assert one.get(added.id) is None and one.list() == [] and not one.delete(added.id)
    # An id is a file name in the folder, never a path leading out of it.
    qtts.Voice(torch.randn(16)).save(tmp_path.parent / "outside.safetensors")
    assert one.get(f"../{tmp_path.parent.name}/outside") is None and one.get("../outside") is None
