"""Real servers for tests, on free local ports: uvicorn in this process, or a `qtts serve` process."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import httpx


class Server:
    """A uvicorn server running `app` on a background thread, bound to a free port picked by the OS; `closing`:
    what to close once it has stopped (the TTS a test loaded for it: an app does not own its engine)."""

    def __init__(self, app, closing=()):
        import uvicorn

        self.closing = list(closing)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def close(self):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)
        for owned in self.closing:
            owned.close()


class ServeProcess:
    """`qtts serve` as a user runs it, in its own process; `arguments` are its options after --model."""

    def __init__(self, model, *arguments: str, timeout: float = 60):
        with socket.socket() as probe:  # a port free a moment ago; the server binds it right away
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qtts.cli", "serve", "--model", str(model), "--port", str(port), *arguments],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"qtts serve exited: {self.process.stdout.read()}")
            try:
                if httpx.get(self.url + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("qtts serve did not come up")
            time.sleep(0.2)

    def close(self):
        self.process.terminate()
        self.process.wait(30)
