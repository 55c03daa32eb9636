"""Engine probe: what the continuous-batching engine costs on a GPU, part by part, on random real-size
weights (a CustomVoice checkpoint written with `qtts make-checkpoint`, never downloaded).

Parts (each timed with CUDA events, median of `--reps`, after warm-up):
  - `frames`: ms per frame of the captured frame of every batch bucket (the whole step: 16 draws, 15
    predictor steps, one talker step), rows at a context of `--context` positions, every row greedy, then
    every row sampling with the checkpoint's defaults (top-k 50: the sampler's search costs more);
  - `decode`: ms per decode call of the batched codec stage per (bucket, chunk size);
  - `prefill`: ms per captured prefill per (arrivals, prompt length);
  - `invariance`: greedy codes of one request alone and joining a running batch at several frames (must be
    identical), and seeded sampling likewise;
  - `poisson`: open-loop, in process: Poisson arrivals at each of `--rates` for `--duration` seconds,
    each request submitted from its own thread (as the server's handlers submit), first audio and
    underruns by serve_load's playback model: the engine's share of the HTTP serving figures;
  - `timeline`: one request alone, `--reps` times: when the engine thread finished each step on the way
    to its first audio (prefill, first frame, its codes on the host, decode, audio copy, hand-out) and
    when the caller got the chunk, in ms from `submit`;
  - `gpu_timeline`: the same path on the GPU, from a profiler trace of one request: its kernels and copies
    merged per stream into busy spans, in ms from `submit`, and the GPU's idle time before the first chunk;
  - `gpu_stamps`: the same path without a profiler: CUDA events recorded around the prefill, the first
    frame's two halves and the first decode call, and host marks at each engine step (woken, prompt padded,
    prefill launched ...), all in ms from `submit` on an idle device, median of `--reps`;
  - `stream_cost`: what one stream pays per frame beyond the captured frame: the marginal ms per frame
    ((wall of a 250-frame request - wall of a 50-frame one) / 200, median of `--reps` pairs) of one request
    alone, codes only (no decoder: the engine's host work and the gaps between frames), then streamed with
    audio (the decoder's calls beside the frames); the `frames` part gives the captured frame's own ms;
  - `steady`: closed loop in steady state: N clients each sending its next request when the last ends,
    for `--duration` seconds (serve_load's closed-loop step without HTTP), with the engine's counters;
  - `profile`: the kernels of one captured frame (buckets 1, 16, 64), of decode calls (16 and 64 requests x
    16 frames on the bulk lane; one request's 1-frame first chunk on the urgent lane) and of one arrival's
    prefill (64 and 128 tokens), by name, from the profiler (CUPTI sees the kernels a graph replays): what
    to make cheaper, with each kernel's share of the step (under PDL a kernel starts while the one before it
    finishes, so durations overlap: set QTTS_PDL=0 for kernel times that add up), and the decode calls run
    eagerly with each kernel charged to the PyTorch op (and input shapes) that launched it;
  - `arrivals`: host time to start a request on the caller's thread (building its prompt and submitting
    it, as a server's event loop does for each arrival): 16 arrivals in series, `open_text` with a first
    `feed("Well, ")` and `submit` of a sentence, idle and with `--concurrency` streams running;
  - `bookkeeping`: host microseconds per frame the engine thread spends handing out one frame's codes
    (reading them from the host ring, each row's frame to its request and its decode cursor) and cutting
    the decode pieces that are due, with each count in `--concurrency` of rows, median of `--reps` rounds of
    300 frames; no GPU work (random codes are written into the ring, as a frame's copy would), so it runs on
    the CPU as well (`--checkpoint` a tiny one);
  - `load`: closed-loop, in process: N requests of `--frames` frames at once, N in `--concurrency`;
    aggregate audio seconds per wall second, time to first audio (median, p95) and how far each stream's
    audio stays ahead of real-time playback (min over requests of the worst lead, negative = underrun).
    The same measurement at N=1 is the single-stream figure (x real time, first audio).

    python bench/engine_probe.py --size 1.7b --parts frames decode prefill invariance load
Prints one JSON line per measurement; writes engine_probe_<size>.jsonl to $OUT (or ./engine_probe_out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

# Appended: a qtts already on the path (PYTHONPATH set to another tree, to measure it with this script)
# comes first; without one, this checkout's.
sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))

import qtts  # noqa: E402
from qtts.engine.decode_stage import BULK, CHUNK_SIZES, URGENT, DecodeCursor  # noqa: E402
from qtts.engine.requests import LENGTH, Request, Sink  # noqa: E402
from qtts.engine.scheduler import Scheduler  # noqa: E402
from qtts.testing import real_speech_tokenizer_config, real_tts_config, write_checkpoint  # noqa: E402

FRAME_S = 0.08
TEXT = ("The morning train to the coast was late again, so Maria bought a coffee, found a quiet bench near "
        "the platform, and read the first chapter of her new book.")


def checkpoint_folder(folder: str | None, size: str) -> str:
    """`folder`, or else a random real-size bf16 CustomVoice checkpoint of `size` written to a temporary one."""
    if folder is None:
        folder = tempfile.mkdtemp(prefix=f"qtts-{size}-")
        write_checkpoint(folder, real_tts_config("custom_voice", size), real_speech_tokenizer_config(),
                         seed=0, dtype=torch.bfloat16, device="cuda", qwen_vocabulary=True)
    return folder


def cuda_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def at_context(store, context: int) -> None:
    """Every row of the store as if `context` positions were cached: what a frame's attention walks."""
    store.slot.fill_(context)
    store.position.fill_(context)
    store.first_row.zero_()


def frame_steps(engine) -> dict:
    """The engine's whole frame step per bucket: `step` (both halves) of this tree's frames, eager or graphs,
    or the callable that trees before the frame's split (5a6b74c) kept, measured through PYTHONPATH."""
    return {b: getattr(run, "step", run) for b, run in engine._run_frame.items()}


def frame_ms(run, reps: int) -> float:
    """Median ms of a captured frame's replay, after three to warm up."""
    for _ in range(3):
        run()
    return cuda_ms(run, reps)


@torch.inference_mode()
def frames(tts, emit, reps, context):
    engine = tts.engine
    store = engine.store
    at_context(store, context)
    for rows in ("greedy", "sampled"):
        if rows == "sampled":  # the checkpoint's default settings, as a request without keywords samples
            store.sampling.load(slice(None), tts.sampling_params())
        for bucket, run in frame_steps(engine).items():
            emit({"part": "frames", "rows": rows, "batch": bucket, "context": context,
                  "ms": round(frame_ms(run, reps), 3)})
    for tensor in store.per_row():
        tensor.zero_()


@torch.inference_mode()
def decode(tts, emit, reps):
    stage = tts.engine.decode_stage
    for bucket in stage.buckets:
        slots = list(range(bucket))
        for chunk in CHUNK_SIZES:
            codes = torch.randint(0, 2048, (bucket, chunk, 16))
            with stage.on_stream(BULK):
                ms = cuda_ms(lambda: stage.decode(BULK, slots, codes), reps)
            emit({"part": "decode", "batch": bucket, "chunk": chunk, "ms": round(ms, 3),
                  "audio_s_per_s": round(bucket * chunk * FRAME_S / (ms / 1e3), 1)})
    with stage.on_stream(BULK):
        for slot in range(max(stage.buckets)):
            stage.reset(slot, BULK)


@torch.inference_mode()
def prefill(tts, emit, reps):
    engine = tts.engine
    hidden = tts.hidden_size
    for (count, length), graph in sorted(engine._prefills.items()):
        graph.embeds.copy_(torch.randn(count, length, hidden, device="cuda", dtype=tts.dtype))
        graph.valid.fill_(True)
        emit({"part": "prefill", "arrivals": count, "length": length, "ms": round(cuda_ms(graph, reps), 3)})


@torch.inference_mode()
def profile(tts, emit, reps, context, top=25):
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile as profiler

    engine, stage = tts.engine, tts.engine.decode_stage
    store = engine.store
    at_context(store, context)
    steps = [(f"frame x{b}", run, None) for b, run in frame_steps(engine).items() if b in (1, 16, 64)]
    for bucket in (16, 64):
        if bucket in stage.lanes[BULK].buckets:
            codes = torch.randint(0, 2048, (bucket, 16, 16))
            steps.append((f"decode {bucket}x16", lambda b=bucket, c=codes: stage.decode(BULK, list(range(b)), c),
                          BULK))
    one_frame = torch.randint(0, 2048, (1, 1, 16))  # a request's first chunk, as it is decoded
    steps.append(("decode 1x1 urgent", lambda: stage.decode(URGENT, [0], one_frame), URGENT))
    for (count, length), graph in sorted(engine._prefills.items()):
        if count == 1 and length <= 128:  # one arrival's prefill: on the way to its first audio
            graph.embeds.copy_(torch.randn(1, length, tts.hidden_size, device="cuda", dtype=tts.dtype))
            graph.valid.fill_(True)
            steps.append((f"prefill 1x{length}", graph, None))
    for name, run, lane in steps:
        with stage.on_stream(lane) if lane else contextlib.nullcontext():
            for _ in range(3):
                run()
            torch.cuda.synchronize()
            with profiler(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(reps):
                    run()
                torch.cuda.synchronize()
        kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
        total = sum(e.self_device_time_total for e in kernels)
        by_time = sorted(kernels, key=lambda e: -e.self_device_time_total)
        emit({"part": "profile", "step": name, "kernel_ms": round(total / reps / 1e3, 3),
              "kernels": round(sum(e.count for e in kernels) / reps, 1),
              "top": [{"name": e.key[:90], "ms": round(e.self_device_time_total / reps / 1e3, 4),
                       "calls": round(e.count / reps, 1), "share": round(e.self_device_time_total / max(total, 1), 3)}
                      for e in by_time[:top]]})
    # The same decode calls run eagerly, kernels charged to the PyTorch op that launched them, by input
    # shapes: which convolution a kernel of the graph's list belongs to.
    for bucket in (16, 64):
        chunk_run = stage.lanes[BULK].runs.get((bucket, 16))
        if chunk_run is None:
            continue
        with stage.on_stream(BULK):
            chunk_run.run()
            torch.cuda.synchronize()
            with profiler(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
                for _ in range(reps):
                    chunk_run.run()
                torch.cuda.synchronize()
        ops = [e for e in prof.key_averages(group_by_input_shape=True)
               if e.device_type == DeviceType.CPU and e.self_device_time_total > 0]
        total = sum(e.self_device_time_total for e in ops)
        emit({"part": "profile_ops", "step": f"decode {bucket}x16 eager", "device_ms": round(total / reps / 1e3, 3),
              "top": [{"op": e.key, "shapes": str(e.input_shapes)[:160],
                       "ms": round(e.self_device_time_total / reps / 1e3, 4), "calls": round(e.count / reps, 1),
                       "share": round(e.self_device_time_total / max(total, 1), 3)}
                      for e in sorted(ops, key=lambda e: -e.self_device_time_total)[:top]]})
    for tensor in store.per_row():
        tensor.zero_()
    with stage.on_stream(BULK):
        for slot in range(max(stage.buckets)):
            stage.reset(slot, BULK)


def invariance(tts, emit, speaker):
    for name, sampling in (("greedy", dict(do_sample=False, subtalker_dosample=False)), ("seeded", dict(seed=9))):
        kwargs = dict(speaker=speaker, max_new_tokens=41, min_new_tokens=40, **sampling)
        alone = tts.generate_codes(TEXT, **kwargs)
        same = []
        for join_at in (0, 5, 17):
            before = tts.engine.stats["frames"]
            others = [tts.submit(f"Another sentence, number {i}.", speaker=speaker, max_new_tokens=80,
                                 min_new_tokens=79, seed=i) for i in range(7)]
            deadline = time.monotonic() + 30
            while tts.engine.stats["frames"] < before + join_at and time.monotonic() < deadline:
                time.sleep(0.001)
            same.append(bool(torch.equal(tts.generate_codes(TEXT, **kwargs), alone)))
            for other in others:
                other.result()
        emit({"part": "invariance", "sampling": name, "frames": alone.shape[0], "joined_at": [0, 5, 17],
              "identical": same})


def load(tts, emit, speaker, frames_per_request, concurrency, rounds):
    for count in concurrency:
        results = []
        lock = threading.Lock()

        def one_stream(index):
            began = time.perf_counter()
            generation = tts.submit(TEXT, speaker=speaker, max_new_tokens=frames_per_request + 1,
                                    min_new_tokens=frames_per_request, seed=index)
            received = 0.0
            worst_lead = None
            first = None
            for chunk in generation:
                now = time.perf_counter()
                if first is None:
                    first = now
                # playback starts at the first chunk: audio received so far minus audio played by now
                lead = received - (now - first)
                worst_lead = lead if worst_lead is None else min(worst_lead, lead)
                received += len(chunk) / 24000
            finished = generation.finished
            with lock:
                results.append((first - began, received, worst_lead, time.perf_counter() - began,
                                finished.queued_s, getattr(finished, "first_frame_s", None)))

        for _ in range(rounds):  # warm-up round first, then measured
            results.clear()
            stats = tts.engine.stats
            before = {lane: (stats["decode_calls"][lane], stats["decode_rows"][lane])
                      for lane in ("urgent", "bulk")} if "decode_calls" in stats else {}
            wall, busy = run_clients(tts.engine, one_stream, count)
        firsts = sorted(r[0] * 1e3 for r in results)
        audio = sum(r[1] for r in results)
        first_frames = [r[5] * 1e3 for r in results if r[5] is not None]
        batching = {}  # decode calls of the measured round, and the requests each decoded
        for lane, (calls, rows) in before.items():
            calls, rows = stats["decode_calls"][lane] - calls, stats["decode_rows"][lane] - rows
            batching[lane] = {"calls": calls, "rows_per_call": round(rows / max(calls, 1), 2)}
        emit({"part": "load", "concurrent": count, "frames": frames_per_request,
              "audio_s_per_s": round(audio / wall, 1), "x_real_time_per_stream": round(
                  statistics.median(r[1] / r[3] for r in results), 2),
              "first_audio_ms_median": round(statistics.median(firsts), 2),
              "first_audio_ms_p95": round(firsts[min(len(firsts) - 1, int(0.95 * len(firsts)))], 2),
              "worst_lead_s": round(min(r[2] for r in results), 3), "wall_s": round(wall, 2),
              # where first audio goes: waiting for the prefill, then to the first frame's codes on the host
              "queued_ms_median": round(statistics.median(r[4] * 1e3 for r in results), 2),
              "first_frame_ms_median": round(statistics.median(first_frames), 2) if first_frames else None,
              "decode_rows_per_call": batching, **busy})


def stream_one(tts, speaker, frames: int, seed: int) -> tuple[float, float]:
    """One closed-loop client's request of `frames` frames, read to its end: (seconds from submission to
    its first audio, seconds of audio)."""
    began = time.perf_counter()
    generation = tts.submit(TEXT, speaker=speaker, max_new_tokens=frames + 1, min_new_tokens=frames, seed=seed)
    first, received = None, 0.0
    for chunk in generation:
        first = first or time.perf_counter()
        received += len(chunk) / 24000
    return first - began, received


def steady(tts, emit, speaker, frames_per_request, concurrency, duration):
    """Closed loop in steady state, in process: N clients, each submitting its next request as soon as the
    last one ended, for `duration` seconds; as serve_load's closed-loop step without HTTP. Besides the
    figures, the engine's counters over the round (frames, rows a frame, prefills and their arrivals,
    decode calls per lane) and who was busy: the inputs of "where the time goes"."""
    engine = tts.engine
    for count in concurrency:
        results = []
        lock = threading.Lock()
        stop = time.perf_counter() + duration

        def client(index):
            number = 0
            while time.perf_counter() < stop:
                result = stream_one(tts, speaker, frames_per_request, index * 1000 + number)
                with lock:
                    results.append(result)
                number += 1

        stats = engine.stats
        before = (stats["frames"], stats["prefills"], stats["prefill_s"], dict(stats["decode_calls"]),
                  dict(stats["decode_rows"]))
        wall, busy = run_clients(engine, client, count)
        frames = stats["frames"] - before[0]
        firsts = sorted(r[0] * 1e3 for r in results)
        audio = sum(r[1] for r in results)
        emit({"part": "steady", "concurrent": count, "frames_per_request": frames_per_request,
              "requests": len(results), "wall_s": round(wall, 2), "audio_s_per_s": round(audio / wall, 1),
              "first_audio_ms_p50": round(statistics.median(firsts), 1),
              "first_audio_ms_p95": round(firsts[int(0.95 * (len(firsts) - 1))], 1),
              "frames": frames, "ms_per_frame": round(wall / max(frames, 1) * 1e3, 2),
              "rows_per_frame": round(audio / FRAME_S / max(frames, 1), 1),
              "prefills": stats["prefills"] - before[1],
              "prefill_host_s": round(stats["prefill_s"] - before[2], 3),
              "decode_calls": {lane: stats["decode_calls"][lane] - before[3].get(lane, 0)
                               for lane in ("urgent", "bulk")},
              "decode_rows": {lane: stats["decode_rows"][lane] - before[4].get(lane, 0)
                              for lane in ("urgent", "bulk")}, **busy})


def bookkeeping(tts, emit, speaker, concurrency, reps, frames=300):
    """Host us per frame of `Scheduler._read_frames` and the cursors' cuts (what `_decode` does first), on
    an engine of its own (small cache, no graphs: only its ring and bookkeeping are used)."""
    engine = Scheduler(tts.talker, None, max_batch=max(concurrency), max_len=64, graphs=False, fused=False)
    plan, params = tts.plan("Bookkeeping.", speaker=speaker), tts.sampling_params()
    generator = torch.Generator().manual_seed(0)
    eos = engine.eos
    for count in concurrency:
        rounds = []
        for _ in range(reps):
            requests = [Request(plan, params, 0, 1 << 30, LENGTH, True, Sink()) for _ in range(count)]
            for request in requests:
                request.cursor = DecodeCursor(None)
            spent = 0.0
            for frame in range(frames):
                index = frame % engine._ring.shape[0]
                codes = torch.randint(0, eos, (count, engine._ring.shape[2]), generator=generator)
                engine._ring[index][:count].copy_(codes)
                engine._in_flight.append((None, index, requests, [True] * count))
                began = time.perf_counter()
                engine._read_frames(wait=False)
                for request in requests:
                    request.cursor.cut(final=False)
                spent += time.perf_counter() - began
                for request in requests:
                    request.cursor.pieces.clear()
            rounds.append(spent / frames * 1e6)
        emit({"part": "bookkeeping", "rows": count, "us_per_frame": round(statistics.median(rounds), 1),
              "us_per_row": round(statistics.median(rounds) / count, 2)})


def arrivals(tts, emit, speaker, frames_per_request, concurrency, rounds=2):
    """Host ms to start each of 16 requests in series (prompt + submit, nothing waited for), idle and with
    each count in `concurrency` of closed-loop streams running; the 16 are cancelled after each round."""
    for count in [0, *[c for c in concurrency if c > 0]]:
        stop = threading.Event()

        def background(index):
            number = 0
            while not stop.is_set():
                stream_one(tts, speaker, frames_per_request, index * 1000 + number)
                number += 1

        threads = [threading.Thread(target=background, args=(i,), daemon=True) for i in range(count)]
        for thread in threads:
            thread.start()
        time.sleep(3.0 if count else 0.0)  # into steady state
        for _ in range(rounds):
            for kind in ("open_text", "submit"):
                times, handles = [], []
                for _ in range(16):
                    began = time.perf_counter()
                    if kind == "open_text":
                        handle = tts.open_text(speaker=speaker, max_new_tokens=41, min_new_tokens=40)
                        handle.feed("Well, ")
                    else:
                        handle = tts.submit(TEXT, speaker=speaker, max_new_tokens=41, min_new_tokens=40)
                    times.append((time.perf_counter() - began) * 1e3)
                    handles.append(handle)
                for handle in handles:
                    handle.cancel()
                time.sleep(0.3)
                emit({"part": "arrivals", "streams_running": count, "kind": kind,
                      "ms_each_p50": round(statistics.median(times), 2), "ms_each_max": round(max(times), 2),
                      "ms_16_total": round(sum(times), 1)})
        stop.set()
        for thread in threads:
            thread.join()


def run_clients(engine, client, count: int) -> tuple[float, dict]:
    """Run `client(index)` on `count` threads at once; the wall time and who was busy meanwhile."""
    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    busy = Busy(engine)
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return wall, busy.stop(wall)


class Busy:
    """Who limits a round: the share of its wall time the engine thread spent on a CPU (near 1: the host's
    Python is the bottleneck) and the GPU's mean utilisation (NVML's share of time a kernel ran, sampled
    every 20 ms; near 100: the kernels are)."""

    def __init__(self, engine):
        self.engine = engine
        self.tid = engine._thread.native_id if engine._thread is not None else None
        # an engine thread that starts during the round (at its first request) has used no CPU before it
        self.cpu = self._cpu_s() if self.tid is not None else 0.0
        self.samples: list[int] = []
        self.running = True
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def _cpu_s(self) -> float | None:
        if self.tid is None:
            return None
        try:
            with open(f"/proc/self/task/{self.tid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except FileNotFoundError:  # the thread has ended
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def _sample(self):
        while self.running:
            try:
                self.samples.append(torch.cuda.utilization())
            except Exception:  # no NVML here: say nothing rather than a wrong figure
                return
            time.sleep(0.02)

    def stop(self, wall: float) -> dict:
        self.running = False
        self.sampler.join()
        if self.tid is None and self.engine._thread is not None:
            self.tid = self.engine._thread.native_id
        cpu = self._cpu_s()
        return {"engine_thread_cpu_share": None if cpu is None or self.cpu is None
                else round((cpu - self.cpu) / wall, 2),
                "gpu_utilization_mean": round(statistics.mean(self.samples), 1) if self.samples else None}


def timeline(tts, emit, speaker, runs):
    """Where one request's first audio goes, alone on the engine: host times (ms from the `submit` call)
    at which the engine thread finished each step of its way, the first time in the request, median of
    `runs`. The engine's methods are wrapped for the probe only; the wrappers cost the same each run."""
    engine = tts.engine
    marks: dict[str, float] = {}
    steps = {"prefill enqueued": (engine, "_prefill"), "frame 1 enqueued": (engine, "_enqueue_frame"),
             "frame 1 codes read": (engine, "_read_frames"), "decode enqueued": (engine.decode_stage, "decode"),
             "audio copy enqueued": (engine, "_send_audio"), "audio handed out": (engine, "_hand_out")}
    originals = {}
    for label, (owner, name) in steps.items():
        original = originals[label] = getattr(owner, name)

        def wrapped(*args, _original=original, _label=label, **kwargs):
            result = _original(*args, **kwargs)
            if _label == "frame 1 codes read" and not any(r.frames for r in engine._running + engine._decoding):
                return result  # not yet: the read found no frame of the request
            marks.setdefault(_label, time.perf_counter())
            return result

        setattr(owner, name, wrapped)
    rows = []
    try:
        for run in range(runs + 2):  # two warm-up runs
            marks.clear()
            began = time.perf_counter()
            generation = tts.submit(TEXT, speaker=speaker, max_new_tokens=9, min_new_tokens=8, seed=run)
            marks["submit returned"] = time.perf_counter()
            for _ in generation:
                marks.setdefault("first chunk in the caller", time.perf_counter())
            if run >= 2:
                rows.append({label: (at - began) * 1e3 for label, at in marks.items()})
            time.sleep(0.05)  # the engine goes idle between runs, as between a user's requests
    finally:
        for label, (owner, name) in steps.items():
            setattr(owner, name, originals[label])
    order = ["submit returned", *steps, "first chunk in the caller"]
    emit({"part": "timeline", "runs": runs, "ms_from_submit": {
        label: round(statistics.median(row[label] for row in rows), 2) for label in order
        if all(label in row for row in rows)}})


def gpu_timeline(tts, emit, speaker, out: Path, gap_us: float = 20.0):
    """Where the GPU's time goes on one request's way to its first audio, alone on the engine: the kernels
    and copies of a profiler trace, merged per stream into busy spans (gaps under `gap_us` joined), in ms
    from the start of `submit`, up to the first chunk in the caller, with the idle time between them. The
    host side of the same path is `timeline`."""
    from torch.profiler import ProfilerActivity, profile as profiler

    def one(seed):
        generation = tts.submit(TEXT, speaker=speaker, max_new_tokens=9, min_new_tokens=8, seed=seed)
        next(iter(generation))
        return generation

    for seed in range(2):  # warm-up: the shapes of one request's path
        one(seed).result()
    time.sleep(0.05)  # the engine goes idle first, as between a user's requests
    with profiler(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with torch.profiler.record_function("qtts submit to first chunk"):
            generation = one(2)
        generation.result()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    trace = out / "gpu_timeline_trace.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    (mark,) = [e for e in events if e.get("name") == "qtts submit to first chunk" and e.get("ph") == "X"
               and e.get("cat") == "user_annotation"]  # the host's range (the trace also has a GPU-side one)
    start, end = mark["ts"], mark["ts"] + mark["dur"]
    device = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy",
                                                                                    "gpu_memset")
                     and start <= e["ts"] <= end), key=lambda e: e["ts"])
    spans = []
    for e in device:
        stream = e.get("args", {}).get("stream")
        last = next((s for s in reversed(spans) if s["stream"] == stream), None)
        if last is not None and e["ts"] - last["_end"] < gap_us:
            last["_end"] = max(last["_end"], e["ts"] + e["dur"])
            last["kernels"] += 1
            continue
        spans.append({"stream": stream, "_start": e["ts"], "_end": e["ts"] + e["dur"], "kernels": 1,
                      "first": e["name"][:60]})
    busy_until, idle = start, 0.0
    for s in spans:
        idle += max(0.0, s["_start"] - busy_until)
        busy_until = max(busy_until, s["_end"])
    # the host's side as the driver saw it (any thread): graph launches and waits, in ms from `submit`
    host = [{"call": e["name"], "from_ms": round((e["ts"] - start) / 1e3, 3), "ms": round(e["dur"] / 1e3, 3)}
            for e in sorted(events, key=lambda e: e.get("ts", 0))
            if e.get("cat") == "cuda_runtime" and start <= e["ts"] <= end
            and e["name"] in ("cudaGraphLaunch", "cudaEventSynchronize", "cudaStreamSynchronize")]
    emit({"part": "gpu_timeline", "first_chunk_ms": round((end - start) / 1e3, 2), "host": host,
          "gpu_idle_ms": round((idle + max(0.0, end - busy_until)) / 1e3, 2),
          "spans": [{"stream": s["stream"], "from_ms": round((s["_start"] - start) / 1e3, 3),
                     "to_ms": round((s["_end"] - start) / 1e3, 3), "kernels": s["kernels"], "first": s["first"]}
                    for s in spans]})


def stream_cost(tts, emit, speaker, reps: int, long: int = 250, short: int = 50):
    def codes_only(frames, seed):  # (generate_codes takes no seed; with random weights any draw costs alike)
        tts.generate_codes(TEXT, speaker=speaker, max_new_tokens=frames, min_new_tokens=frames)

    def streamed(frames, seed):
        for _ in tts.submit(TEXT, speaker=speaker, max_new_tokens=frames, min_new_tokens=frames, seed=seed):
            pass

    row = {"part": "stream_cost", "frames": [long, short], "reps": reps}
    for name, run in (("codes_only", codes_only), ("streamed", streamed)):
        run(short, 0)  # warm-up
        marginal = []
        for seed in range(reps):
            walls = []
            for frames in (long, short):
                began = time.perf_counter()
                run(frames, seed)
                walls.append(time.perf_counter() - began)
            marginal.append((walls[0] - walls[1]) / (long - short) * 1e3)
        row[name + "_ms_per_frame"] = round(statistics.median(marginal), 4)
    emit(row)


class _Stamps:
    """Host marks and CUDA events of one run, in ms from `begin` (called with the device idle). On a CPU
    only the host marks are taken."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.host: dict[str, float] = {}
        self.events: dict[str, torch.cuda.Event] = {}

    def begin(self) -> None:
        self.host.clear()
        self.events.clear()
        if self.cuda:
            torch.cuda.synchronize()
            self.base = torch.cuda.Event(enable_timing=True)
            self.base.record()
        self.began = time.perf_counter()

    def mark(self, label: str) -> None:
        self.host.setdefault(label, time.perf_counter())

    def gpu(self, label: str) -> None:
        """An event on the current stream (the first `label` of the run only)."""
        if self.cuda and label not in self.events:
            event = self.events[label] = torch.cuda.Event(enable_timing=True)
            event.record()

    def read(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        row = {f"host: {k}": (at - self.began) * 1e3 for k, at in self.host.items()}
        row.update({f"gpu: {k}": self.base.elapsed_time(e) for k, e in self.events.items()})
        return row


def gpu_stamps(tts, emit, speaker, runs):
    """One request alone, `runs` times: host marks at the engine's steps and CUDA events around its GPU
    work on the way to the first chunk, ms from the start of `submit` (the device idle then, so the base
    event's time is the host's), median. Where `timeline` says when the host finished a step, this says
    when the device did, without a profiler's slowdown. The wrappers are the probe's only."""
    engine, stage = tts.engine, tts.engine.decode_stage
    stamps = _Stamps(engine.device.type == "cuda")
    patched = []  # (owner, name, original)

    def patch(owner, name, wrapper):
        original = getattr(owner, name)
        patched.append((owner, name, original, name in vars(owner)))
        setattr(owner, name, wrapper(original))

    def admit(original):
        def wrapped():
            if engine._inbox:
                stamps.mark("engine woke")
            return original()
        return wrapped

    def prefill_graph(original):
        def wrapped():
            stamps.mark("prompt padded")
            stamps.gpu("prefill queued")
            original()
            stamps.gpu("prefill done")
            stamps.mark("prefill launched")
        return wrapped

    def half(label):
        def wrapper(original):
            def wrapped():
                stamps.gpu(f"{label} queued")
                original()
                stamps.gpu(f"{label} done")
                stamps.mark(f"{label} launched")
            return wrapped
        return wrapper

    def decode(original):
        def wrapped(lane, slots, codes):
            stamps.mark("decode called")
            stamps.gpu("decode queued")
            audio = original(lane, slots, codes)
            stamps.gpu("decode done")
            return audio
        return wrapped

    def step(label):
        def wrapper(original):
            def wrapped(*args, **kwargs):
                result = original(*args, **kwargs)
                stamps.mark(label)
                return result
            return wrapped
        return wrapper

    patch(engine, "_admit", admit)
    # a graph is called, and a call is looked up on the type: each is wrapped in a `_Called` instead
    engine._prefills = {key: _Called(graph, prefill_graph(graph.__call__)) for key, graph in engine._prefills.items()}
    for run_frame in engine._run_frame.values():
        patch(run_frame, "draw_codes", half("codes"))
        patch(run_frame, "advance", half("talker step"))
    patch(stage, "decode", decode)
    patch(engine, "_prefill", step("prefill returned"))
    patch(engine, "_hand_out", step("audio handed out"))
    rows = []
    try:
        for run in range(runs + 2):  # two warm-up runs
            stamps.begin()
            generation = tts.submit(TEXT, speaker=speaker, max_new_tokens=9, min_new_tokens=8, seed=run)
            stamps.mark("submit returned")
            for _ in generation:
                stamps.mark("first chunk in the caller")
            if run >= 2:
                rows.append(stamps.read())
            time.sleep(0.05)  # the engine goes idle between runs, as between a user's requests
    finally:
        engine._prefills = {key: called.graph for key, called in engine._prefills.items()}
        for owner, name, original, own in reversed(patched):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
    labels = sorted(set().union(*rows), key=lambda k: statistics.median(row.get(k, 0.0) for row in rows))
    emit({"part": "gpu_stamps", "runs": runs, "ms_from_submit": {
        label: round(statistics.median(row[label] for row in rows), 3) for label in labels
        if all(label in row for row in rows)}})


class _Called:
    """A prefill graph replaced by `call` for the probe, kept to put back; the engine writes its prompts
    into the graph's inputs as ever."""

    def __init__(self, graph, call):
        self.graph, self.call = graph, call
        self.embeds, self.valid = graph.embeds, graph.valid

    def __call__(self):
        self.call()


def poisson(tts, emit, speaker, frames_per_request, rates, duration):
    from serve_load import Playback, summary  # the listener model and figures of the HTTP benchmark

    rng = random.Random(0)
    for rate in rates:
        results, threads = [], []
        lock = threading.Lock()

        def one_request(index):
            playback = Playback(time.perf_counter())
            generation = tts.submit(TEXT, speaker=speaker, max_new_tokens=frames_per_request + 1,
                                    min_new_tokens=frames_per_request, seed=index)
            samples = 0
            for chunk in generation:
                playback.arrived(len(chunk) * 2, time.perf_counter())  # 16-bit bytes, as over HTTP
                samples += len(chunk)
            with lock:
                results.append({"status": 200, "complete": samples == frames_per_request * 1920,
                                "queued_s": generation.finished.queued_s, **playback.figures()})

        began = time.perf_counter()
        at, index = 0.0, 0
        while True:
            at += rng.expovariate(rate)
            if at > duration:
                break
            time.sleep(max(0.0, began + at - time.perf_counter()))
            thread = threading.Thread(target=one_request, args=(index,))
            thread.start()
            threads.append(thread)
            index += 1
        for thread in threads:
            thread.join(timeout=max(1.0, began + duration + 60 - time.perf_counter()))
        wall = time.perf_counter() - began
        queued = sorted(r["queued_s"] * 1e3 for r in results)
        emit({"part": "poisson", "rate": rate, "unfinished": index - len(results), **summary(results, wall),
              "queued_ms_p95": round(queued[int(0.95 * len(queued))], 1) if queued else None})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1.7b", choices=["0.6b", "1.7b"])
    parser.add_argument("--checkpoint", help="a CustomVoice checkpoint folder (default: write a random one)")
    parser.add_argument("--parts", nargs="+", default=["frames", "decode", "prefill", "invariance", "load"])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--codec-dtype", choices=["float32", "bfloat16"],
                        help="the codec decoder's dtype (default: qtts.load's, the talker's)")
    parser.add_argument("--rates", type=float, nargs="+", default=[20, 30, 40], help="poisson: requests/s")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="poisson: seconds of arrivals per rate; steady: seconds of each round")
    parser.add_argument("--tile-rows-max", type=int,
                        help="products of up to this many rows in the tensor-core tile kernel (0: cuBLAS from "
                             "3 rows on; default: kernels/linear.py's)")
    parser.add_argument("--row-kernel-rows", type=int,
                        help="products of up to this many rows in the one-row kernel, a program per row "
                             "(default: kernels/linear.py's ROWS_PER_PROGRAM_MAX)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its convolution algorithms when the decoder graphs are captured")
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "engine_probe_out"))
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / f"engine_probe_{args.size}.jsonl", "a")

    def emit(record):
        record = {"size": args.size, "codec_dtype": args.codec_dtype or "default",
                  **({"cudnn_benchmark": True} if args.cudnn_benchmark else {}),
                  **({"tile_rows_max": args.tile_rows_max} if args.tile_rows_max is not None else {}),
                  **({"row_kernel_rows": args.row_kernel_rows} if args.row_kernel_rows is not None else {}),
                  **record}
        print(json.dumps(record), flush=True)
        log.write(json.dumps(record) + "\n")
        log.flush()

    folder = checkpoint_folder(args.checkpoint, args.size)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    from qtts.kernels import linear

    # before load: the frames are captured with them
    if args.tile_rows_max is not None:
        linear.TILE_ROWS_MAX = args.tile_rows_max
    if args.row_kernel_rows is not None:
        linear.ROWS_PER_PROGRAM_MAX = args.row_kernel_rows
    began = time.perf_counter()
    tts = qtts.load(folder, max_batch=args.max_batch, codec_dtype=args.codec_dtype)
    emit({"part": "startup", "load_s": round(time.perf_counter() - began, 1),
          "engine_startup_s": round(tts.engine.startup_s, 1),
          "gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)})
    # As `qtts serve` does (from 2026-12-06d on): the in-process figures are the server's without HTTP.
    qtts.freeze_loaded_heap()
    speaker = tts.speakers[0]
    for part in args.parts:
        try:
            if part == "frames":
                frames(tts, emit, args.reps, args.context)
            elif part == "decode":
                decode(tts, emit, args.reps)
            elif part == "prefill":
                prefill(tts, emit, args.reps)
            elif part == "profile":
                profile(tts, emit, args.reps, args.context)
            elif part == "invariance":
                invariance(tts, emit, speaker)
            elif part == "poisson":
                poisson(tts, emit, speaker, args.frames, args.rates, args.duration)
            elif part == "timeline":
                timeline(tts, emit, speaker, args.reps)
            elif part == "gpu_timeline":
                gpu_timeline(tts, emit, speaker, out)
            elif part == "gpu_stamps":
                gpu_stamps(tts, emit, speaker, args.reps)
            elif part == "stream_cost":
                stream_cost(tts, emit, speaker, args.reps)
            elif part == "steady":
                steady(tts, emit, speaker, args.frames, args.concurrency, args.duration)
            elif part == "bookkeeping":
                bookkeeping(tts, emit, speaker, args.concurrency, args.reps)
            elif part == "arrivals":
                arrivals(tts, emit, speaker, args.frames, args.concurrency)
            elif part == "load":
                load(tts, emit, speaker, args.frames, args.concurrency, rounds=2)
        except Exception as error:  # one failing part must not hide the others' numbers
            emit({"part": part, "error": repr(error)[:500]})
    tts.close()


if __name__ == "__main__":
    main()
