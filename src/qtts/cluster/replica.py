"""One qtts replica on Ray Serve: it loads the model once and serves qtts's own FastAPI app as the ingress.

Every response names the replica in `X-Qtts-Replica`, so a client (or a test) can see which engine answered.
"""

from __future__ import annotations

import asyncio
import logging

import ray
from ray import serve

from ..api import freeze_loaded_heap
from ..server import create_app
from .options import ServeArgs

logger = logging.getLogger(__name__)

REPLICA_HEADER = "x-qtts-replica"


class ReplicaHeader:
    """ASGI middleware adding `X-Qtts-Replica: <replica>` to every HTTP response and WebSocket accept.

    A plain ASGI wrapper, like the server's `RequestCounter`, so streamed bodies pass through untouched.
    """

    def __init__(self, app, replica: str):
        self.app = app
        self.header = (REPLICA_HEADER.encode("latin-1"), replica.encode("latin-1"))

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_header(message):
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


@serve.deployment(name="qtts")
@serve.ingress()
class QttsReplica:
    """A Ray Serve replica running one `TTS` (on the GPU Ray assigned it, else the CPU) behind the qtts app."""

    async def __init__(self, args: ServeArgs):
        import qtts

        self.args = args
        self.replica = serve.get_replica_context().replica_tag
        # Ray sets CUDA_VISIBLE_DEVICES to the GPU it reserved for this replica: "cuda" is that GPU.
        device = args.device or ("cuda" if ray.get_gpu_ids() else "cpu")
        # Off the event loop: Ray keeps talking to the replica (health, metadata) while the model loads.
        self.tts = await asyncio.to_thread(qtts.load, args.model, device=device, max_batch=args.max_batch,
                                           codec_dtype=args.codec_dtype)
        logger.info("replica %s loaded %s on %s", self.replica, args.model, device)

    def __serve_build_asgi_app__(self):
        """Called by Ray Serve after `__init__`: the app this replica serves (its lifespan runs the engine)."""
        is_base = self.tts.model_type == "base"
        if not is_base and self.args.voices_dir is not None:
            logger.info("replica %s keeps no voices: voices are for Base models", self.replica)
        app = create_app(self.tts, model_name=self.args.served_model_name or self.args.model,
                         voices_dir=self.args.voices_dir if is_base else None, max_queue=self.args.max_queue,
                         first_audio_target=self.args.first_audio_target)
        app.add_middleware(ReplicaHeader, replica=self.replica)
        freeze_loaded_heap()
        return app

    async def check_health(self) -> None:
        """Ray Serve's periodic probe: the replica is healthy when its own `/health` route says so."""
        status, body = await _get(self.app, "/health")
        if status != 200:
            raise RuntimeError(f"replica {self.replica} is unhealthy: /health answered {status}: {body!r}")


async def _get(app, path: str) -> tuple[int, bytes]:
    """GET `path` from an ASGI `app` in this process: (status, body)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [], "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}
    status, body = 500, []
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # a probe never hangs up; the app stops listening when it answers

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(body)
