"""qtts on Ray Serve: one engine per replica, one GPU each, behind one HTTP endpoint.

`build_app(args)` is the Ray Serve application (`serve run qtts.cluster:build_app model=...`, or a config
file); `serve_replicas(...)` is what `qtts serve --replicas N` runs. Needs the `cluster` extra (ray[serve]).
"""

from .application import build_app
from .launch import INGRESSES, ingress_environment, serve_replicas
from .options import ServeArgs
from .replica import REPLICA_HEADER

__all__ = ["INGRESSES", "REPLICA_HEADER", "ServeArgs", "build_app", "ingress_environment", "serve_replicas"]
