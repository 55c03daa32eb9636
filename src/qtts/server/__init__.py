"""The OpenAI-compatible speech server: `create_app(tts)` for ASGI hosts, `serve(model)` to run one.

Needs the `server` extra (FastAPI, uvicorn, python-multipart).
"""

from __future__ import annotations

import errno
import faulthandler
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from .app import DEFAULT_MAX_QUEUE, FIRST_AUDIO_TARGET, create_app
from .guards import CLIENT_TIMEOUT
from .voice_store import MAX_VOICES

__all__ = ["check_port_free", "create_app", "serve"]

SHUTDOWN_GRACE = 10.0  # seconds open responses get to finish once shutdown begins


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, device: str | None = None,
          voices_dir: str | Path | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
          model_name: str | None = None, max_voices: int = MAX_VOICES, api_key: str | None = None,
          cors_origins: Sequence[str] = (), client_timeout: float = CLIENT_TIMEOUT, max_batch: int | None = None,
          max_len: int = 4096, shutdown_grace: float = SHUTDOWN_GRACE,
          first_audio_target: float = FIRST_AUDIO_TARGET, codec_dtype: str | None = None) -> None:
    """Load `model` and serve it over HTTP until interrupted (options as in `create_app`; `max_batch`,
    `max_len` and `codec_dtype` as in `qtts.load`). On SIGTERM or SIGINT the server stops accepting, gives
    open responses `shutdown_grace` seconds to finish, cancels the rest, stops the engine and returns.
    SIGUSR1 prints every thread's stack to stderr."""
    import uvicorn

    import qtts

    from .connections import header_timeout_protocol

    check_port_free(host, port)  # before the model loads, which can take a minute
    tts = qtts.load(model, device=device, max_batch=max_batch, max_len=max_len, codec_dtype=codec_dtype)
    app = create_app(tts, model_name=model_name or model, voices_dir=voices_dir, max_queue=max_queue,
                     max_voices=max_voices, api_key=api_key, cors_origins=cors_origins,
                     client_timeout=client_timeout, first_audio_target=first_audio_target)
    qtts.freeze_loaded_heap()
    # uvicorn handles SIGTERM/SIGINT while it runs, then raises the signal again for the handler found
    # before it: with these, that ends in a normal return (exit 0) instead of a kill or a KeyboardInterrupt.
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, _stopped)
    # `kill -USR1 <pid>` prints every thread's stack to stderr and the server goes on: how to see where a
    # server that answers slowly spends its time, without stopping it. A Python handler, not faulthandler's:
    # that one reads the other threads' frames from inside the signal while they run, and on Python 3.11 a
    # thread starting or ending meanwhile can crash the process (CPython issue 116008; the likely reason a
    # CI test server dropped its stream at the signal, twice). System calls the signal lands in are
    # restarted, not failed with EINTR.
    signal.signal(signal.SIGUSR1, _print_stacks)
    signal.siginterrupt(signal.SIGUSR1, False)
    # A crash (a segfault in an extension, an abort) prints every thread's stack before the process ends.
    faulthandler.enable(all_threads=True)
    try:
        # No permessage-deflate on the live WebSocket, whose traffic is nearly all PCM: deflating it took
        # 53-125 us per 80 ms frame per session on the event loop, which every other session's messages
        # wait behind, to save 6-43 % of 384 kbit/s (bench/event_loop_probe.py, on a stand-in signal).
        uvicorn.run(app, host=host, port=port, http=header_timeout_protocol(client_timeout),
                    timeout_graceful_shutdown=shutdown_grace, ws_per_message_deflate=False)
    finally:
        tts.close()


def check_port_free(host: str, port: int) -> None:
    """Fail now, with the port named, rather than once the model has loaded (or Ray has started) and the
    server cannot listen."""
    if not 0 < port < 65536:
        raise InputError(f"port {port} is not a TCP port: choose one from 1 to 65535 with --port")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is free
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
            raise InputError(f"port {port} on {host} {reason}; choose another with --port") from None


def _stopped(signal_number, frame) -> None:
    """The server has already shut down when uvicorn passes the signal on: nothing is left to do."""


def _print_stacks(signal_number, frame) -> None:
    """Every thread's stack, most recent call first, to stderr. Runs in the main thread between bytecodes
    with the GIL held, so no other thread's frames change while they are read; written with one os.write
    because the main thread may have been inside a write to sys.stderr when the signal came."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    lines = []
    for ident, top in sys._current_frames().items():
        lines.append(f"Thread {ident:#x} {names.get(ident, '(not started by threading)')} (most recent call first):")
        lines += [f'  File "{call.filename}", line {call.lineno} in {call.name}'
                  for call in reversed(traceback.extract_stack(top))]
        lines.append("")
    os.write(sys.stderr.fileno(), "\n".join(lines).encode(errors="replace"))
