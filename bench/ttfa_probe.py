"""TTFA probe: where the time to first audio of `synthesize(stream=True)` goes, stage by stage.

Runs the stages of a streamed request by hand (the calls `TTS._stream` and `FastEngine._frames` make,
including the prefill graph's left padding), with the device synchronised after each, on a checkpoint folder (`qtts make-checkpoint`), and
prints the median ms of each stage over `--runs` requests after a warm-up; then the public call's first
chunk, timed as `qtts bench` times it. The synchronisation adds a little to the staged total.

    python bench/ttfa_probe.py CHECKPOINT [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import qtts  # noqa: E402
from qtts.bench import LANGUAGE, SPEAKER, TEXTS, talker_tokens  # noqa: E402
from qtts.engine.fast import FrameWatch  # noqa: E402
from qtts.prompt import pad_batch  # noqa: E402
from qtts.streaming import OfficialWindowStream, _audio  # noqa: E402


def staged(tts, text: str, tokens: int) -> dict[str, float]:
    stamps = {}
    last = time.perf_counter()

    def stamp(name):
        nonlocal last
        torch.cuda.synchronize()
        now = time.perf_counter()
        stamps[name] = 1000.0 * (now - last)
        last = now

    with torch.inference_mode():
        params = tts.sampling_params(max_new_tokens=tokens, min_new_tokens=tokens, seed=0)
        plan = tts.plan(text, language=LANGUAGE, speaker=SPEAKER)
        stamp("plan (tokenize, prompt embeddings)")
        engine = tts.fast_engine
        tokens_in = plan.prefill.shape[0]
        embeds, valid, trailing = pad_batch([plan], engine.PREFILL_BUCKET)
        frame, run = engine._frame_for(1, embeds.shape[1] + tokens, tokens - 1, trailing.shape[1], params)
        stamp("pad + frame lookup")
        engine._prefill(frame, embeds, valid)
        stamp(f"prefill ({tokens_in} tokens, graph of {valid.shape[1]})")
        frame.start(None, None, valid, trailing, plan.tts_pad, torch.tensor([0], device=embeds.device))
        stamp("frame.start")
        watch = FrameWatch(frame)
        run()
        watch.after_frame(0)
        watch.advance()
        stamp("first frame (graph replay + code 0 to host)")
        window = OfficialWindowStream(tts.codec_decoder, None, tts._streaming_decoder())
        chunk = _audio(window.decode(frame.codes[:, 0]))
        stamp("first chunk decode + copy to host")
    assert len(chunk.samples) == 1920
    return stamps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--frames", type=int, default=250)
    args = parser.parse_args()
    tts = qtts.load(args.checkpoint, device="cuda", dtype=torch.bfloat16)
    text, tokens = TEXTS["sentence"], talker_tokens(args.frames)

    def first_chunk_ms():
        torch.cuda.synchronize()
        start = time.perf_counter()
        chunks = tts.synthesize(text, speaker=SPEAKER, language=LANGUAGE, max_new_tokens=tokens,
                                min_new_tokens=tokens, seed=0, stream=True)
        next(chunks)
        ms = 1000.0 * (time.perf_counter() - start)
        chunks.close()
        return ms

    list(tts.synthesize(text, speaker=SPEAKER, language=LANGUAGE, max_new_tokens=tokens, min_new_tokens=tokens,
                        seed=0, stream=True))
    staged(tts, text, tokens)
    runs = [staged(tts, text, tokens) for _ in range(args.runs)]
    public = [first_chunk_ms() for _ in range(args.runs)]
    result = {name: round(statistics.median(r[name] for r in runs), 2) for name in runs[0]}
    result["staged total"] = round(sum(result.values()), 2)
    result["public first chunk (synthesize stream=True)"] = round(statistics.median(public), 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
