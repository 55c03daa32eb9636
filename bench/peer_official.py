"""Measure the official qwen-tts 0.1.1 (transformers 4.57.3) on one checkpoint; one JSON line per text.

Length forcing: the package hard-codes min_new_tokens=2 for the talker and forwards no extra kwargs, so the
talker's `generate` is wrapped to set min_new_tokens = max_new_tokens (HF's min-length processor, which the
package already runs for its first steps, then masks EOS every step), and max_new_tokens = frames + 1.
"""

from __future__ import annotations

import time

from peer_common import decode_ms_per_frame, dtype_for, measure, parse_args, versions


def force_length(talker) -> None:
    inner = talker.generate

    def generate_exactly(*args, **kwargs):
        kwargs["min_new_tokens"] = kwargs["max_new_tokens"]
        return inner(*args, **kwargs)

    talker.generate = generate_exactly


def main() -> None:
    args = parse_args(__doc__)
    from qwen_tts import Qwen3TTSModel

    tts = Qwen3TTSModel.from_pretrained(args.checkpoint, device_map=args.device, dtype=dtype_for(args.device),
                                        attn_implementation="sdpa")
    force_length(tts.model.talker)
    clock = measure.StepClock()
    clock.wrap(tts.model.talker, "forward")  # one talker forward per loop step; the loop syncs every step

    def call(text: str, seed: int) -> int:
        wavs, rate = tts.generate_custom_voice(text=text, speaker=measure.SPEAKER, language=measure.LANGUAGE,
                                               max_new_tokens=measure.talker_tokens(args.frames))
        if rate != measure.SAMPLE_RATE:
            raise RuntimeError(f"official engine returned {rate} Hz, expected {measure.SAMPLE_RATE}")
        return len(wavs[0])

    start = time.perf_counter()
    call(measure.TEXTS[args.texts[0]], 0)  # full length: a short warm-up leaves the first run 6-30 % slow
    warmup_s = time.perf_counter() - start
    decode = decode_ms_per_frame(lambda codes: tts.model.speech_tokenizer.decode({"audio_codes": codes}),
                                 args.frames, args.device)
    for name in args.texts:
        text = measure.TEXTS[name]
        measure.reset_peak_memory()
        steps = []

        def stamped_call(seed: int) -> int:
            clock.take()
            samples = call(text, seed)
            steps.append(measure.step_ms(clock.take()))
            return samples

        walls, speeds = measure.measure_calls(stamped_call, args.frames, range(args.runs))
        alloc, reserved = measure.peak_memory_gib()
        result = measure.Result(
            system="qwen-tts 0.1.1 (official)", model=args.model, text=name, frames=args.frames, runs=args.runs,
            xrt=measure.Spread.of(speeds),
            e2e_ms_per_frame=measure.Spread.of(1000.0 * w / args.frames for w in walls),
            step_ms_per_frame=measure.Spread.of(steps), step_method="host stamps at each talker forward",
            decode_ms_per_frame=decode, ttfa_ms=None, ttfa_note="no streaming API", streaming_xrt=None,
            peak_alloc_gib=alloc, peak_reserved_gib=reserved,
            versions=versions("qwen-tts", "transformers", "torch") | {"warmup_s": round(warmup_s, 1)},
        )
        print(result.to_json(), flush=True)


if __name__ == "__main__":
    main()
