"""Host time of per-message work a live session puts on a server's event loop (CPU only):
  - `text`: `check_text` on the segment received so far, at several lengths, English and Chinese, with a
    checkpoint's tokenizer (or any folder of tokenizer files). The live endpoint checks a segment's whole
    text at each delta, twice (the session before it changes anything, the text stream as it feeds it); in
    a 16-session profile of the server (BENCHMARKS.md) encoding was a third of the event loop's time.
  - `segments`: the live session's segment buffer at each word of a sentence (`preview`, then `feed` and
    `settled`, as the endpoint calls them), microseconds per word over the whole text, English and Chinese
    (one character a delta).
  - `deflate`: permessage-deflate (zlib, raw, sync flush, as websockets does it) of 16-bit PCM messages of
    1, 4 and 16 frames of a random-walk signal (a stand-in: random weights make no speech): what a client
    offering compression would cost each audio message, and how much smaller it gets.

    python bench/event_loop_probe.py --tokenizer CHECKPOINT_OR_TOKENIZER_FOLDER
    PYTHONPATH=OLD/src python bench/event_loop_probe.py ...      # another tree's checks, for a before/after
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np

# Appended: a qtts already on the path (PYTHONPATH set to another tree) is the one measured
sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))

from qtts.limits import MAX_INPUT_TOKENS, check_text  # noqa: E402
from qtts.text import TextTokenizer  # noqa: E402
from qtts.text_segments import SegmentBuffer  # noqa: E402

ENGLISH = ("Well, here is the answer you asked for: the morning train to the coast was late again, so Maria "
           "bought a coffee, found a quiet bench near the platform, and read the first chapter of her new "
           "book. By the time the train came, she had decided to stay on until the very last stop.")
CHINESE = "你好，这是今天的天气预报：早上有小雨，中午转晴，下午气温升到二十五度，晚上有风，请大家出门记得带伞。" * 4


def microseconds(call, reps: int) -> float:
    for _ in range(20):
        call()
    times = []
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(reps):
            call()
        times.append((time.perf_counter() - began) / reps * 1e6)
    return statistics.median(times)


def segment_rows(reps: int) -> list[dict]:
    rows = []
    for language, deltas in (("english", [word + " " for word in ENGLISH.split()]), ("chinese", list(CHINESE))):
        def speak():
            buffer = SegmentBuffer(granularity="sentence", overflow="last")
            for delta in deltas:
                buffer.preview(delta)
                buffer.feed(delta)
                buffer.settled()

        rows.append({"segments": language, "deltas": len(deltas),
                     "us_per_delta": round(microseconds(speak, max(1, reps // 30)) / len(deltas), 1)})
    return rows


def deflate_rows(messages: int = 60) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for frames in (1, 4, 16):
        pcm = [np.cumsum(rng.normal(0, 300, 1920 * frames)).clip(-30000, 30000).astype(np.int16).tobytes()
               for _ in range(messages)]  # each message new audio: no match in the window from repeats
        compressor = zlib.compressobj(wbits=-15)
        began, sent = time.perf_counter(), 0
        for data in pcm:
            sent += len(compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))
        seconds = (time.perf_counter() - began) / messages
        rows.append({"deflate_frames": frames, "bytes": len(pcm[0]), "deflated_bytes": sent // messages,
                     "us_per_message": round(seconds * 1e6, 1), "us_per_frame": round(seconds * 1e6 / frames, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a folder with the tokenizer files (a checkpoint)")
    parser.add_argument("--reps", type=int, default=300)
    args = parser.parse_args()
    tokenizer = TextTokenizer.from_folder(args.tokenizer)
    import qtts

    print(f"qtts from {Path(qtts.__file__).parent}")
    for language, text in (("english", ENGLISH), ("chinese", CHINESE)):
        for length in sorted({20, 100, 200, len(text)}):
            part = text[:length]
            row = {"language": language, "chars": length, "tokens": len(tokenizer.encode(part)),
                   "encode_us": round(microseconds(lambda: tokenizer.encode(part), args.reps), 1),
                   "check_text_us": round(microseconds(
                       lambda: check_text(tokenizer, "text", part, MAX_INPUT_TOKENS), args.reps), 1)}
            print(json.dumps(row))
    for row in segment_rows(args.reps) + deflate_rows():
        print(json.dumps(row))


if __name__ == "__main__":
    main()
