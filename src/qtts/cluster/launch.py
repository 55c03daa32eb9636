"""`qtts serve --replicas N`: start (or join) a Ray cluster and run the qtts application on it until stopped."""

from __future__ import annotations

import errno
import logging
import shutil
import signal
import socket
import sys
import tempfile
import time

import ray
from ray import serve

from ..errors import QttsError
from .application import build_app
from .options import ServeArgs

APP_NAME = "qtts"


def serve_replicas(args: ServeArgs, *, host: str = "127.0.0.1", port: int = 8000,
                   ray_address: str | None = None) -> None:
    """Serve `args` through Ray Serve on http://host:port until Ctrl-C or SIGTERM.

    Without `ray_address` a Ray cluster of this machine is started and shut down at the end; with one
    (`auto`, `ray://...`, `host:port`) the application joins that cluster and is deleted from it at the end.
    """
    local = ray_address is None
    voices_temp = None
    if local:
        _check_port_free(host, port)
        if args.voices_dir is None:
            # Every replica of a one-machine cluster reads this folder, so a voice made through one
            # replica speaks through all, and through a replica Ray starts in place of a dead one.
            voices_temp = tempfile.mkdtemp(prefix="qtts-voices-")
            args = args.model_copy(update={"voices_dir": voices_temp})
    elif args.voices_dir is None:
        print("qtts: warning: without --voices-dir each replica keeps its own voices; pass a folder that "
              "every node of the cluster mounts so that all replicas share them", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the shutdown below, as Ctrl-C does
    ray.init(address=ray_address or "local", logging_level=logging.WARNING)
    try:
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        except RuntimeError as exc:  # Ray Serve's "Deploying application qtts failed: ..."
            raise QttsError(f"the qtts replicas did not start: {exc}") from None
        print(f"qtts: serving {args.model} on http://{host}:{port} with {_replicas(args)} through Ray Serve; "
              "Ctrl-C stops", file=sys.stderr)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if local:
            serve.shutdown()
            ray.shutdown()
        else:
            serve.delete(APP_NAME)
            ray.shutdown()  # disconnects this driver; the cluster keeps running
        if voices_temp is not None:
            shutil.rmtree(voices_temp, ignore_errors=True)


def _replicas(args: ServeArgs) -> str:
    if args.autoscale is not None:
        return f"{args.autoscale.replace(':', ' to ')} replicas (autoscaled)"
    return f"{args.replicas} replica{'s' if args.replicas > 1 else ''}"


def _check_port_free(host: str, port: int) -> None:
    """Fail now, with the port named, rather than after Ray has started and its HTTP proxy cannot bind."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
            raise QttsError(f"port {port} on {host} {reason}; choose another with --port") from None
