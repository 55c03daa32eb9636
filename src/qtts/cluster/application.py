"""`build_app`: a qtts Ray Serve application, for `serve.run`, `serve run` and Ray Serve config files."""

from __future__ import annotations

from typing import Any

import ray
from ray.serve import Application

from .options import ServeArgs, replica_range
from .replica import QttsReplica


def build_app(args: ServeArgs | dict[str, Any]) -> Application:
    """The qtts server as a Ray Serve application: `args.replicas` replicas (or `args.autoscale` MIN:MAX).

    Ray Serve calls it with the `args` of `serve run qtts.cluster:build_app key=value ...` or of a config
    file; a config file's `deployments:` entry for `qtts` overrides what is set here (replicas, GPUs, ...).
    """
    args = args if isinstance(args, ServeArgs) else ServeArgs.model_validate(args)
    num_gpus = args.num_gpus if args.num_gpus is not None else _default_gpus(args.device)
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": 1, "num_gpus": num_gpus},
        # Ray routes up to this many requests to a replica: its engine's rows, its queue, and one more, which
        # the replica answers 503 with Retry-After, exactly as the single-process server does.
        "max_ongoing_requests": args.max_batch + args.max_queue + 1,
    }
    if args.autoscale is None:
        options["num_replicas"] = args.replicas
    else:
        low, high = replica_range(args.autoscale)
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                         "target_ongoing_requests": args.target_ongoing_requests}
    return QttsReplica.options(**options).bind(args)


def _default_gpus(device: str | None) -> float:
    """One GPU per replica where the cluster has GPUs (and the device is not forced to the CPU), else none."""
    if device == "cpu":
        return 0
    if ray.is_initialized():
        return 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    import torch

    return 1 if torch.cuda.is_available() else 0
