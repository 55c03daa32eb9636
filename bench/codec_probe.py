"""Codec probe: the GPU audio side on real-size random weights, timed with CUDA events.

Measures (median of `--reps` after warm-up, each call synchronised so a number is the latency a caller sees):
  - voice creation from a 10 s reference already on the GPU: log-mel, speaker encoder, codec encoder, all three;
  - streaming decode per chunk size (1, 2, 4, 8, 16 frames), eager `CodecStream` vs `GraphedCodecStream`;
  - one-pass decode of 250 frames.
Checks: graphed == eager streaming and == one-pass decode (max abs difference over a 100-frame ramp), and
whether each timed path makes a host synchronisation (`torch.cuda.set_sync_debug_mode("error")`).

    python bench/codec_probe.py [--checkpoint DIR]
Without --checkpoint it writes a random 0.6B Base checkpoint to a temporary folder first (as
`qtts make-checkpoint DIR --size 0.6b --variant base` does). Prints a markdown table last; JSON to $OUT.
`--device cpu --checkpoint TINY --reps 2` is a dry run of the script itself (host clock, no sync checks).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import qtts  # noqa: E402
from qtts.audio import SAMPLE_RATE, mel_spectrogram  # noqa: E402
from qtts.engine.codec_graphs import CHUNK_SIZES, GraphedCodecStream  # noqa: E402
from qtts.models.codec_encoder import encode  # noqa: E402
from qtts.models.codec_stream import CodecStream  # noqa: E402
from qtts.testing import real_speech_tokenizer_config, real_tts_config, write_checkpoint  # noqa: E402

REFERENCE_SECONDS = 10.0
ONE_PASS_FRAMES = 250
CHECK_FRAMES = 100
# Graphed and eager run the same kernels on the same shapes; against one-pass (other shapes, so other
# cuDNN/TF32 algorithms) the difference is reported, not judged.
AGREEMENT = 1e-4


DEVICE = torch.device("cuda")


def time_calls(fn, reps: int, warmup: int = 3) -> list[float]:
    """Milliseconds per call on the GPU timeline, each call from an idle device to its last kernel."""
    for _ in range(warmup):
        fn()
    if DEVICE.type != "cuda":
        return [_host_ms(fn) for _ in range(reps)]
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _host_ms(fn) -> float:
    began = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - began)


def host_sync(fn) -> str:
    """"none" when `fn` runs without a host synchronisation, else the first line of the error naming it."""
    if DEVICE.type != "cuda":
        return "n/a"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return "none"
    except RuntimeError as error:
        return str(error).splitlines()[0][:200]
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def speech_like_reference(seconds: float, seed: int = 0) -> torch.Tensor:
    """Harmonics of a wandering pitch under a syllable-rate envelope, plus noise; peak about 0.5."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    t = torch.arange(int(seconds * SAMPLE_RATE), device=DEVICE) / SAMPLE_RATE
    pitch = 140 + 30 * torch.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * torch.cumsum(pitch, 0) / SAMPLE_RATE
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 9))
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 4 * t).clamp(min=0)
    noise = 0.02 * torch.randn(t.shape, generator=gen, device=DEVICE)
    wav = envelope * voiced + noise
    return (0.5 * wav / wav.abs().max()).float()


def summary(ms: list[float]) -> dict:
    return {"ms_median": round(statistics.median(ms), 3), "ms_min": round(min(ms), 3)}


def probe_voice(tts, reps: int) -> dict:
    wav = speech_like_reference(REFERENCE_SECONDS)
    mels = mel_spectrogram(wav)[None]
    parts = {
        "mel": lambda: mel_spectrogram(wav),
        "speaker_encoder": lambda: tts.speaker_encoder(mels),
        "codec_encoder": lambda: encode(tts.codec_encoder, wav),
        "total": lambda: (tts.speaker_encoder(mel_spectrogram(wav)[None]), encode(tts.codec_encoder, wav)),
    }
    results = {}
    with torch.inference_mode():
        for name, fn in parts.items():
            results[name] = {**summary(time_calls(fn, reps)), "host_sync": host_sync(fn)}
    return results


def ramp_chunks(total: int) -> list[int]:
    chunks = []
    while sum(chunks) < total:
        chunks.append(min(CHUNK_SIZES[min(len(chunks), len(CHUNK_SIZES) - 1)], total - sum(chunks)))
    return chunks


def probe_stream(tts, reps: int) -> tuple[list[dict], dict]:
    decoder = tts.codec_decoder
    eager = CodecStream(decoder, batch_size=1)
    began = time.perf_counter()
    graphed = GraphedCodecStream(CodecStream(decoder, batch_size=1))
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    capture_s = time.perf_counter() - began
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    size = decoder.config.codebook_size
    rows = []
    for frames in CHUNK_SIZES:
        codes = torch.randint(0, size, (1, frames, 16), generator=gen, device=DEVICE)
        for name, stream in (("eager", eager), ("graphed", graphed)):
            stream.reset()
            ms = time_calls(lambda: stream.decode(codes), reps)
            rows.append({"chunk_frames": frames, "path": name, **summary(ms),
                         "ms_per_frame": round(statistics.median(ms) / frames, 3),
                         "host_sync": host_sync(lambda: stream.decode(codes))})

    codes = torch.randint(0, size, (1, CHECK_FRAMES, 16), generator=gen, device=DEVICE)
    chunks = ramp_chunks(CHECK_FRAMES)
    starts = [sum(chunks[:i]) for i in range(len(chunks))]
    with torch.inference_mode():
        eager.reset()
        graphed.reset()
        by_eager = torch.cat([eager.decode(codes[:, s: s + n]) for s, n in zip(starts, chunks)], dim=-1)
        by_graph = torch.cat([graphed.decode(codes[:, s: s + n]) for s, n in zip(starts, chunks)], dim=-1)
        one_pass = decoder(codes)
    check = {
        "frames": CHECK_FRAMES, "chunks": chunks, "capture_s": round(capture_s, 2),
        "graphed_vs_eager_max_abs": float((by_graph - by_eager).abs().max()),
        "graphed_vs_one_pass_max_abs": float((by_graph - one_pass).abs().max()),
        "audio_peak": float(one_pass.abs().max()),
    }
    check["agree"] = check["graphed_vs_eager_max_abs"] <= AGREEMENT
    return rows, check


def probe_one_pass(tts, reps: int) -> dict:
    gen = torch.Generator(device=DEVICE).manual_seed(2)
    codes = torch.randint(0, tts.codec_decoder.config.codebook_size, (1, ONE_PASS_FRAMES, 16),
                          generator=gen, device=DEVICE)
    with torch.inference_mode():
        ms = time_calls(lambda: tts.codec_decoder(codes), reps)
    return {"frames": ONE_PASS_FRAMES, **summary(ms), "ms_per_frame": round(statistics.median(ms) / ONE_PASS_FRAMES, 3)}


def table(result: dict) -> str:
    lines = ["| measurement | ms (median) | ms (min) | ms/frame | host sync |", "|---|---|---|---|---|"]
    for name, r in result["voice"].items():
        lines.append(f"| voice {name} ({REFERENCE_SECONDS:.0f} s ref) | {r['ms_median']} | {r['ms_min']} | | "
                     f"{r['host_sync']} |")
    for r in result["stream"]:
        lines.append(f"| stream {r['path']} chunk {r['chunk_frames']} | {r['ms_median']} | {r['ms_min']} | "
                     f"{r['ms_per_frame']} | {r['host_sync']} |")
    r = result["one_pass"]
    lines.append(f"| one-pass decode {r['frames']} frames | {r['ms_median']} | {r['ms_min']} | {r['ms_per_frame']} | |")
    c = result["check"]
    lines.append("")
    lines.append(f"check {'OK' if c['agree'] else 'MISMATCH'}: graphed vs eager max |diff| "
                 f"{c['graphed_vs_eager_max_abs']:.2e}, graphed vs one-pass "
                 f"{c['graphed_vs_one_pass_max_abs']:.2e} ({c['frames']} frames, peak {c['audio_peak']:.2f}); "
                 f"capture {c['capture_s']} s; {result['device']}, cuDNN TF32 {result['cudnn_tf32']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a Base checkpoint folder (default: write a random 0.6B one)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        sys.exit("codec_probe needs a CUDA GPU (or --device cpu for a dry run)")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.checkpoint
        if folder is None:
            folder = write_checkpoint(Path(scratch) / "base-0.6b", real_tts_config("base", "0.6b"),
                                      real_speech_tokenizer_config(), dtype=torch.bfloat16, device=DEVICE)
        tts = qtts.load(folder, device=DEVICE)
    setup_s = time.perf_counter() - began
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    result = {"device": name, "torch": torch.__version__,
              "cudnn_tf32": torch.backends.cudnn.allow_tf32, "setup_s": round(setup_s, 1)}
    result["voice"] = probe_voice(tts, args.reps)
    result["stream"], result["check"] = probe_stream(tts, args.reps)
    result["one_pass"] = probe_one_pass(tts, args.reps)
    result["total_s"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result), flush=True)
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "codec_probe.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
