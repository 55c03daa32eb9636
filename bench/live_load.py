"""Live speech benchmark: concurrent WebSocket sessions (`WS /v1/audio/speech/stream`) that receive their
text word by word, as from an LLM, against a real `qtts serve`.

Each session speaks utterances back to back for `--duration` seconds. Sessions start together (every
utterance boundary is then a burst of as many arrivals as sessions: the worst case) or, with `--stagger S`,
spread evenly over S seconds, as users who did not all press play in the same millisecond. An
utterance's first delta is its first word and a space (enough text for one certain token); the other
words follow at `--words-per-s` (15 words/s is about 20 tokens/s of English). Per utterance: first audio
after the first delta, a playback model that counts underruns (playback starts at the first audio byte,
24 kHz 16-bit; when the bytes received fall behind the bytes played, playback stalls), completion
(session.done without error events), and the server's own text-to-audio figure per segment
(`audio.done`'s `text_to_audio_ms`). Each segment is `--frames` frames long, as serve_load's requests are:
random weights sample EOS anywhere, even before a sentence's text has all arrived, and the next sentence's
audio then waits for its text: a stall of the benchmark's model, not of the server (a trained model's row
waits for text it has not seen rather than end).

    python bench/live_load.py --model CHECKPOINT --sessions 1 16 [--stagger 1]
    python bench/live_load.py --url http://127.0.0.1:8000 --sessions 4    # a server already running
Prints one JSON line per session count and a markdown table; JSON lines also to $OUT/live_load.jsonl.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator

from websockets.asyncio.client import connect

from serve_load import Playback, run_against_server, server_parser

TEXT = ("Well, here is the answer you asked for: the morning train to the coast was late again, so Maria "
        "bought a coffee, found a quiet bench near the platform, and read the first chapter of her new book. "
        "By the time the train came, she had decided to stay on until the very last stop.")


async def utterance(socket, words: list[str], words_per_s: float) -> dict:
    """Send one utterance word by word while receiving its audio; the figures of it."""
    result = {"errors": 0, "text_to_audio_ms": [], "complete": False}

    async def send_words():
        await socket.send(json.dumps({"type": "input.text", "text": words[0] + " "}))
        for index, word in enumerate(words[1:], start=1):
            await asyncio.sleep(max(0.0, sent + index / words_per_s - time.perf_counter()))
            await socket.send(json.dumps({"type": "input.text", "text": word + " "}))
        await socket.send(json.dumps({"type": "input.done"}))

    sent = time.perf_counter()
    playback = Playback(sent)
    sender = asyncio.create_task(send_words())
    try:
        async for message in socket:
            if isinstance(message, bytes):
                if message:
                    playback.arrived(len(message), time.perf_counter())
                continue
            event = json.loads(message)
            if event["type"] == "error":
                result["errors"] += 1
            elif event["type"] == "audio.done" and event.get("text_to_audio_ms") is not None:
                result["text_to_audio_ms"].append(event["text_to_audio_ms"])
            elif event["type"] == "session.done":
                result["complete"] = result["errors"] == 0
                break
    finally:
        await sender
    result.update(playback.figures())
    return result


async def session(url: str, speaker: str, duration: float, words_per_s: float, frames: int, began: float,
                  results: list[dict], delay: float = 0.0) -> None:
    words = TEXT.split()
    await asyncio.sleep(delay)
    async with connect(url.replace("http://", "ws://") + "/v1/audio/speech/stream", max_size=None) as socket:
        await socket.send(json.dumps({"type": "session.config", "voice": speaker, "response_format": "pcm",
                                      "max_new_tokens": frames + 1, "min_new_tokens": frames}))
        started = json.loads(await socket.recv())
        if started["type"] != "session.started":  # an error event: every utterance would wait forever
            raise RuntimeError(f"the server refused the session: {started}")
        while time.perf_counter() - began < duration:
            results.append(await utterance(socket, words, words_per_s))


def percentile(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1) if values else None


async def run_sessions(url: str, speaker: str, count: int, duration: float, words_per_s: float,
                       frames: int, stagger: float = 0.0) -> dict:
    results: list[dict] = []
    began = time.perf_counter()
    await asyncio.gather(*(session(url, speaker, duration, words_per_s, frames, began, results, i * stagger / count)
                           for i in range(count)))
    wall = time.perf_counter() - began
    firsts = [r["first_audio_s"] * 1e3 for r in results if r["first_audio_s"] is not None]
    text_to_audio = [ms for r in results for ms in r["text_to_audio_ms"]]
    return {"sessions": count, "stagger_s": stagger, "words_per_s": words_per_s, "frames_per_segment": frames,
            "duration_s": duration,
            "utterances": len(results),
            "complete": sum(r["complete"] for r in results), "errors": sum(r["errors"] for r in results),
            "first_audio_ms_p50": percentile(firsts, 0.5), "first_audio_ms_p95": percentile(firsts, 0.95),
            "text_to_audio_ms_p50": percentile(text_to_audio, 0.5),
            "text_to_audio_ms_p95": percentile(text_to_audio, 0.95),
            "underrun_utterances": sum(r["underruns"] > 0 for r in results),
            "stall_s_total": round(sum(r["stall_s"] for r in results), 3),
            # where in an utterance playback first ran dry: at its start (a thin first chunk) or later
            "first_stall_audio_s": sorted(round(r["first_stall_audio_s"], 2) for r in results
                                          if r["first_stall_audio_s"] is not None),
            "audio_s_per_s": round(sum(r["audio_s"] for r in results) / wall, 1)}


def table(rows: list[dict]) -> str:
    lines = ["| sessions | starts spread over s | words/s | utterances | complete | "
             "first audio after first delta p50 / p95 ms | segment text to audio p50 / p95 ms | "
             "underrun utterances | audio-s/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sessions']} | {r['stagger_s']:g} | {r['words_per_s']:g} | {r['utterances']} | "
                     f"{r['complete']} | "
                     f"{r['first_audio_ms_p50']} / {r['first_audio_ms_p95']} | "
                     f"{r['text_to_audio_ms_p50']} / {r['text_to_audio_ms_p95']} | {r['underrun_utterances']} | "
                     f"{r['audio_s_per_s']} |")
    return "\n".join(lines)


def main() -> int:
    parser = server_parser(__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--words-per-s", type=float, default=15.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--frames", type=int, default=80, help="frames per segment (80 = 6.4 s)")
    parser.add_argument("--stagger", type=float, default=0.0,
                        help="spread the sessions' starts evenly over this many seconds (0: all at once)")
    args = parser.parse_args()

    def steps(url: str, speaker: str) -> Iterator[dict]:
        asyncio.run(run_sessions(url, speaker, 2, 2.0, args.words_per_s, args.frames))  # warm-up
        for count in args.sessions:
            yield asyncio.run(run_sessions(url, speaker, count, args.duration, args.words_per_s, args.frames,
                                           args.stagger))

    return run_against_server(args, "live_load", steps, table)


if __name__ == "__main__":
    sys.exit(main())
