"""Measure faster-qwen3-tts (qwen-tts-hf, transformers 5.16.1) on one checkpoint; one JSON line per text.

Length forcing: its public API takes min_new_tokens and masks EOS until that many frames exist; each loop
step emits one frame, so max_new_tokens = min_new_tokens = frames. Streaming uses its default chunk of 12.
"""

from __future__ import annotations

import time

from peer_common import decode_ms_per_frame, measure, parse_args, versions

CHUNK = 12


def main() -> None:
    args = parse_args(__doc__)
    if args.device != "cuda":
        raise SystemExit("faster-qwen3-tts runs only on CUDA (its loop is CUDA graphs)")
    import torch
    from faster_qwen3_tts import FasterQwen3TTS

    tts = FasterQwen3TTS.from_pretrained(args.checkpoint, device="cuda", dtype=torch.bfloat16,
                                         attn_implementation="sdpa")
    clock = measure.StepClock()
    clock.wrap(tts.talker_graph, "run")  # one talker graph replay per loop step; the loop syncs every step
    request = dict(speaker=measure.SPEAKER, language=measure.LANGUAGE, max_new_tokens=args.frames,
                   min_new_tokens=args.frames)

    def call(text: str) -> int:
        wavs, rate = tts.generate_custom_voice(text=text, **request)
        if rate != measure.SAMPLE_RATE:
            raise RuntimeError(f"faster-qwen3-tts returned {rate} Hz, expected {measure.SAMPLE_RATE}")
        return len(wavs[0])

    def stream(text: str) -> tuple[float, float, int]:
        """(first chunk ms, total s, samples) of one streaming call."""
        start = time.perf_counter()
        first, samples = None, 0
        for audio, _, _ in tts.generate_custom_voice_streaming(text=text, chunk_size=CHUNK, **request):
            if first is None:
                first = 1000.0 * (time.perf_counter() - start)
            samples += len(audio)
        return first, time.perf_counter() - start, samples

    start = time.perf_counter()
    for _ in range(2):  # the first call captures the CUDA graphs
        call(measure.TEXTS[args.texts[0]])
    stream(measure.TEXTS[args.texts[0]])  # the first streaming call meets new codec window shapes
    warmup_s = time.perf_counter() - start
    decode = decode_ms_per_frame(lambda codes: tts.speech_tokenizer.decode({"audio_codes": codes}), args.frames,
                                 "cuda")
    for name in args.texts:
        text = measure.TEXTS[name]
        measure.reset_peak_memory()
        steps = []

        def stamped_call(seed: int) -> int:
            clock.take()
            samples = call(text)
            steps.append(measure.step_ms(clock.take()))
            return samples

        walls, speeds = measure.measure_calls(stamped_call, args.frames, range(args.runs))
        firsts, stream_speeds = [], []
        for seed in range(args.runs):
            measure.seed_everything(seed)
            first, total, samples = stream(text)
            # Its streaming decoder cuts the re-decoded left context by a calibrated samples-per-frame,
            # so the total is checked to within one frame rather than exactly.
            if abs(samples - args.frames * measure.SAMPLES_PER_FRAME) >= measure.SAMPLES_PER_FRAME:
                raise RuntimeError(f"streaming returned {samples} samples for {args.frames} frames")
            firsts.append(first)
            stream_speeds.append(measure.xrt(samples, total))
        clock.take()
        alloc, reserved = measure.peak_memory_gib()
        result = measure.Result(
            system="faster-qwen3-tts 0.5.4", model=args.model, text=name, frames=args.frames, runs=args.runs,
            xrt=measure.Spread.of(speeds),
            e2e_ms_per_frame=measure.Spread.of(1000.0 * w / args.frames for w in walls),
            step_ms_per_frame=measure.Spread.of(steps), step_method="host stamps at each talker graph replay",
            decode_ms_per_frame=decode, ttfa_ms=measure.Spread.of(firsts),
            ttfa_note=f"streaming, chunk {CHUNK}", streaming_xrt=measure.Spread.of(stream_speeds),
            peak_alloc_gib=alloc, peak_reserved_gib=reserved,
            versions=versions("faster-qwen3-tts", "qwen-tts-hf", "transformers", "torch")
            | {"warmup_s": round(warmup_s, 1)},
        )
        print(result.to_json(), flush=True)


if __name__ == "__main__":
    main()
