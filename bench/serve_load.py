"""Serving benchmark: open-loop Poisson arrivals and a closed-loop concurrency sweep against a real
`qtts serve`, over HTTP streaming (pcm), as serving engines are measured (reference/serving-anchors.md).

Per request: time to first audio (first audio byte after the request was sent), a playback model that
counts underruns (playback starts at the first byte at 24 kHz 16-bit; when the bytes received fall behind
the bytes played, playback stalls: an underrun, and the stall time adds up), completion (all frames
arrived), errors and 503s. Open loop: for each rate, arrivals for `--duration` seconds at exponential
gaps; the rate holds when p95 first audio and underruns stay low. Closed loop: N clients each sending
requests back to back for `--duration` seconds, for N in `--concurrency`: aggregate audio seconds per
second.

    python bench/serve_load.py --model CHECKPOINT --rates 10 20 30 40 --concurrency 1 16 64
    python bench/serve_load.py --url http://127.0.0.1:8000 --rates 5      # a server already running
Prints one JSON line per rate / concurrency and a markdown table; JSON lines also to $OUT/serve_load.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

BYTES_PER_SECOND = 24000 * 2
BYTES_PER_FRAME = 1920 * 2
TEXT = ("The morning train to the coast was late again, so Maria bought a coffee, found a quiet bench near "
        "the platform, and read the first chapter of her new book.")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, max_batch: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # This checkout's src after PYTHONPATH: with PYTHONPATH at another tree, the server runs that tree (it
    # came first, and so every A/B of this script and live_load.py measured this checkout on both sides)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([p for p in (os.environ.get("PYTHONPATH"), src) if p])}
    process = subprocess.Popen([sys.executable, "-m", "qtts.cli", "serve", "--model", model, "--host", "127.0.0.1",
                                "--port", str(port), "--max-batch", str(max_batch), *extra], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"qtts serve exited with {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("qtts serve did not become healthy")


class Playback:
    """A listener with no buffer: playback starts at the first audio byte and runs in real time; when the
    bytes received fall behind the bytes played, it stalls (an underrun) and the stall time adds up."""

    def __init__(self, sent: float):
        self.sent = sent  # when the request (or the text) left
        self.first_audio_s: float | None = None
        self.received = 0
        self.underruns = 0
        self.stall_s = 0.0
        self.first_stall_audio_s: float | None = None  # how much audio had played when it first stalled
        self._start: float | None = None

    def arrived(self, size: int, now: float) -> None:
        if self._start is None:
            self._start = now
            self.first_audio_s = now - self.sent
        else:
            played = (now - self._start) * BYTES_PER_SECOND
            if played > self.received:  # the listener ran out of audio before these bytes came
                stall = (played - self.received) / BYTES_PER_SECOND
                self.underruns += 1
                self.stall_s += stall
                if self.first_stall_audio_s is None:
                    self.first_stall_audio_s = self.received / BYTES_PER_SECOND
                self._start += stall
        self.received += size

    def figures(self) -> dict:
        return {"first_audio_s": self.first_audio_s, "underruns": self.underruns, "stall_s": self.stall_s,
                "first_stall_audio_s": self.first_stall_audio_s, "audio_s": self.received / BYTES_PER_SECOND}


async def one_request(client: httpx.AsyncClient, body: dict, frames: int) -> dict:
    sent = time.perf_counter()
    playback = Playback(sent)
    result = {"status": None, "complete": False}
    try:
        async with client.stream("POST", "/v1/audio/speech", json=body) as response:
            result["status"] = response.status_code
            if response.status_code != 200:
                await response.aread()
            else:
                async for chunk in response.aiter_raw():
                    if chunk:
                        playback.arrived(len(chunk), time.perf_counter())
                result["complete"] = playback.received == frames * BYTES_PER_FRAME
    except httpx.HTTPError as error:
        result["error"] = repr(error)[:200]
    result.update(playback.figures())
    result["wall_s"] = time.perf_counter() - sent
    return result


def body_for(speaker: str, frames: int, seed: int) -> dict:
    return {"input": TEXT, "voice": speaker, "response_format": "pcm", "max_new_tokens": frames + 1,
            "min_new_tokens": frames, "seed": seed}


def summary(results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r["status"] == 200]
    firsts = sorted(r["first_audio_s"] * 1e3 for r in ok if r["first_audio_s"] is not None)

    def pct(q):
        return round(firsts[min(len(firsts) - 1, int(q * len(firsts)))], 1) if firsts else None

    return {"requests": len(results), "ok": len(ok), "busy_503": sum(r["status"] == 503 for r in results),
            "errors": sum(r["status"] not in (200, 503) for r in results),
            "complete": sum(r["complete"] for r in ok),
            "first_audio_ms_p50": pct(0.5), "first_audio_ms_p95": pct(0.95), "first_audio_ms_p99": pct(0.99),
            "underrun_requests": sum(r["underruns"] > 0 for r in ok),
            "stall_s_total": round(sum(r["stall_s"] for r in ok), 3),
            "first_stall_audio_s": sorted(round(r["first_stall_audio_s"], 2) for r in ok
                                          if r.get("first_stall_audio_s") is not None),
            "audio_s_per_s": round(sum(r.get("audio_s", 0.0) for r in ok) / wall, 1)}


async def open_loop(url: str, speaker: str, rate: float, duration: float, frames: int, seed: int,
                    drain: float) -> dict:
    """Poisson arrivals for `duration` seconds; requests still running `drain` seconds later are cut."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=None,
                                                                                max_keepalive_connections=None)) as client:
        tasks = []
        began = time.perf_counter()
        at = 0.0
        index = 0
        while True:
            at += rng.expovariate(rate)
            if at > duration:
                break
            await asyncio.sleep(max(0.0, began + at - time.perf_counter()))
            tasks.append(asyncio.create_task(one_request(client, body_for(speaker, frames, index), frames)))
            index += 1
        done, unfinished = await asyncio.wait(tasks, timeout=max(1.0, began + duration + drain - time.perf_counter())) \
            if tasks else (set(), set())
        for task in unfinished:  # a server that cannot keep up: report what finished, count the rest
            task.cancel()
        results = [task.result() for task in done]
        wall = time.perf_counter() - began
    return {"mode": "open", "rate": rate, "duration_s": duration, "unfinished": len(unfinished),
            **summary(results, wall)}


async def closed_loop(url: str, speaker: str, count: int, duration: float, frames: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=None,
                                                                                max_keepalive_connections=None)) as client:
        results = []
        began = time.perf_counter()

        async def client_loop(offset):
            seed = offset
            while time.perf_counter() - began < duration:
                results.append(await one_request(client, body_for(speaker, frames, seed), frames))
                seed += count

        await asyncio.gather(*(client_loop(i) for i in range(count)))
        wall = time.perf_counter() - began
    return {"mode": "closed", "concurrent": count, "duration_s": duration, **summary(results, wall)}


def engine_counters(url: str) -> dict:
    """The engine's counters from the server's /metrics (frames run, rows and queue now, decode calls and
    rows per lane, the process's garbage-collection pauses by length): what the server did during a step,
    when its clients' figures look wrong."""
    counters = {}
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError as error:
        return {"error": repr(error)[:200]}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith(("qtts_frames_total", "qtts_requests_running", "qtts_queue_depth", "qtts_decode_",
                            "qtts_engine_stalled_seconds", "qtts_gc_pause_seconds")):
            counters[name] = float(value)
    return counters


def table(rows: list[dict]) -> str:
    lines = ["| load | requests | ok | 503 | complete | first audio p50 / p95 / p99 ms | underrun requests | "
             "audio-s/s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        load = f"{r['rate']:g} req/s open" if r["mode"] == "open" else f"{r['concurrent']} concurrent closed"
        lines.append(f"| {load} | {r['requests']} | {r['ok']} | {r['busy_503']} | {r['complete']} | "
                     f"{r['first_audio_ms_p50']} / {r['first_audio_ms_p95']} / {r['first_audio_ms_p99']} | "
                     f"{r['underrun_requests']} | {r['audio_s_per_s']} |")
    return "\n".join(lines)


STUCK_S = 5.0  # an engine with work in hand and nothing done for this long is stuck, not slow


def stuck_engine_report(process: subprocess.Popen | None) -> dict:
    """What a stuck server is doing: the GPU's utilisation, four samples over a second (near 100: a kernel
    that does not end; near 0: a wait for something that never comes), and every thread's stack in the
    server's stderr (SIGUSR1) when this script started it."""
    report = {}
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGUSR1)
        report["stacks"] = "in the server's stderr"
    report["gpu"] = []
    for _ in range(4):
        try:
            query = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,clocks.sm,power.draw",
                                    "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            report["gpu"] = "no answer from nvidia-smi here"
            break
        report["gpu"].append(query.stdout.strip())
        time.sleep(0.25)
    return report


def server_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every serving benchmark takes: which server, its options, the speaker, a label."""
    parser = argparse.ArgumentParser(description=description)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running qtts serve")
    where.add_argument("--model", help="a CustomVoice checkpoint: start `qtts serve` on it")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `qtts serve` argument")
    parser.add_argument("--speaker", help="default: the model's first speaker")
    parser.add_argument("--label", default="", help="a name for this server in the JSON lines")
    return parser


def run_against_server(args, name: str, steps: Callable[[str, str], Iterator[dict]],
                       table: Callable[[list[dict]], str]) -> int:
    """Start `qtts serve` (or use --url), run `steps(url, speaker)`, print each row as a JSON line as it
    comes (also appended to $OUT/<name>.jsonl), then the table; stop the server."""
    process = None
    url = args.url
    # Killed by `timeout` (SIGTERM), still stop the server: one left running would share the GPU with
    # whatever runs next and slow it down (seen on the H200: a later batch-1 run at 0.28x its speed).
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    if args.model:
        process, url = start_server(args.model, args.max_batch, args.serve_arg)
    out = Path(os.environ.get("OUT", f"{name}_out"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        models = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]
        for row in steps(url, args.speaker or models["speakers"][0]):
            row["label"] = args.label
            stuck = row.get("server", {}).get("qtts_engine_stalled_seconds", 0.0) > STUCK_S
            if stuck:  # every later step would only be refused: say what the machine is doing instead
                row["stuck"] = stuck_engine_report(process)
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(out / f"{name}.jsonl", "a") as log:
                log.write(json.dumps(row) + "\n")
            if stuck:
                print(f"the server's engine is stuck ({row['stuck']}); the remaining steps are skipped",
                      file=sys.stderr)
                break
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:  # a server whose engine is stuck does not finish shutting down
                process.kill()
                process.wait(10)
    print(table(rows))
    return 0


def main() -> int:
    parser = server_parser(__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=80, help="frames per request (80 = 6.4 s)")
    parser.add_argument("--rates", type=float, nargs="*", default=[10, 20, 30, 40, 50])
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 16, 32, 64])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--drain", type=float, default=30.0,
                        help="seconds after an open loop's last arrival before unfinished requests are cut")
    args = parser.parse_args()

    def steps(url: str, speaker: str) -> Iterator[dict]:
        asyncio.run(closed_loop(url, speaker, 4, 3.0, args.frames))  # warm-up
        for rate in args.rates:
            row = asyncio.run(open_loop(url, speaker, rate, args.duration, args.frames, seed=int(rate * 100),
                                        drain=args.drain))
            yield {**row, "server": engine_counters(url)}
        for count in args.concurrency:
            row = asyncio.run(closed_loop(url, speaker, count, args.duration, args.frames))
            yield {**row, "server": engine_counters(url)}

    return run_against_server(args, "serve_load", steps, table)


if __name__ == "__main__":
    sys.exit(main())
