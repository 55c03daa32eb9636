"""Speed measurement with one set of definitions for qtts and the peer engines (`qtts bench`, bench/).

Definitions (the same as reference/peers-measured-h100.md, so numbers compare across engines):
- x real time: audio seconds returned / wall seconds of the public call (decode and host copy included);
- frames are forced to a fixed count and checked from the sample count (1920 samples a frame);
- every figure is the median and range over the measured runs, taken after warm-up.

This module imports only the standard library at import time: the peer runners in bench/ load it by file
path inside environments where qtts and its dependencies must stay out of the way. torch is imported inside
the functions that touch the GPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 1920
FRAME_SECONDS = SAMPLES_PER_FRAME / SAMPLE_RATE

SPEAKER = "ryan"
LANGUAGE = "english"

TEXTS = {
    # 32 words: a typical short request.
    "sentence": (
        "The morning train to the coast was late again, so Maria bought a coffee, found a quiet bench "
        "near the platform, and read the first chapter of her new book."
    ),
    # ~300 words: a long request; with the whole text in the prefill it tests prompt length, not loop speed.
    "passage": (
        "When the old lighthouse keeper retired, the village expected the light to go dark for good. "
        "Ships had radar now, the council said, and nobody needed a lamp on a rock. But the keeper's "
        "granddaughter, who had spent every summer of her childhood climbing the spiral stairs, did not agree. "
        "She wrote letters to the harbour office, to the newspaper, and finally to the ministry in the capital. "
        "Most of them went unanswered. One of them, addressed to a clerk who happened to have grown up on the "
        "same coast, was read twice and then passed upstairs with a short note attached. Three months later a "
        "small grant arrived, enough to repair the windows, replace the wiring, and pay a part-time keeper for "
        "five years. The granddaughter took the job herself. She learned to clean the great lens without "
        "leaving a mark, to log the weather every four hours, and to listen for the particular change in the "
        "wind that meant a storm was coming in from the west. Fishermen began to wave when they passed at dawn. "
        "Children from the school came on Fridays to count the steps and to look through the telescope at the "
        "seals on the outer rocks. In the second winter a cargo ship lost its engines in heavy fog and drifted "
        "toward the reef. Its radar had failed along with everything else. The crew saw the beam sweep across "
        "the water, understood where they were, and dropped both anchors in time. Nobody was hurt. The captain "
        "visited in spring with a crate of oranges and a framed photograph of his ship, which still hangs at "
        "the bottom of the stairs. The council never mentioned closing the lighthouse again, and the grant, "
        "quietly, became permanent. People in the village still argue about whether the light really saved the "
        "ship, but every evening, when the lamp turns on, somebody on the quay stops to watch it."
    ),
}


# ---------------------------------------------------------------- statistics and length arithmetic


@dataclass(frozen=True)
class Spread:
    """Median and range of a measurement over runs."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        values = [float(v) for v in values]
        if not values:
            raise ValueError("a spread needs at least one value")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def text(self, digits: int = 2) -> str:
        if self.n == 1 or self.low == self.high:
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} [{self.low:.{digits}f}-{self.high:.{digits}f}]"


def frames_in(samples: int) -> int:
    """Frames that `samples` output samples hold; raises if the count is not whole frames."""
    frames, rest = divmod(samples, SAMPLES_PER_FRAME)
    if rest:
        raise ValueError(f"{samples} samples is not a whole number of {SAMPLES_PER_FRAME}-sample frames")
    return frames


def talker_tokens(frames: int) -> int:
    """`max_new_tokens` (= `min_new_tokens`) that gives `frames` frames in the official package and in qtts.

    The official loop runs the code predictor of frame t inside talker step t+1, so N talker tokens give
    N-1 frames; qtts keeps that meaning of max_new_tokens. (faster-qwen3-tts counts frames instead.)
    """
    return frames + 1


def xrt(samples: int, wall_s: float) -> float:
    """Audio seconds per wall second (higher is faster; 1/RTF)."""
    return samples / SAMPLE_RATE / wall_s


def step_ms(stamps: Sequence[float]) -> float:
    """Median interval in ms between host stamps taken at the start of each loop step.

    The first interval spans the prefill and is left out. Valid only for loops that block the host every step
    (both peer engines read the sampled token on the host each frame).
    """
    intervals = [b - a for a, b in zip(stamps[1:], stamps[2:])]
    if not intervals:
        raise ValueError("need at least three step stamps for a steady-state interval")
    return 1000.0 * statistics.median(intervals)


def marginal_ms_per_frame(long_wall_s: float, long_frames: int, short_wall_s: float, short_frames: int) -> float:
    """Cost of one more frame from two call lengths: removes prefill and fixed costs without stamps.

    Used for engines whose loop does not sync the host each step, where host stamps would be wrong.
    Includes the decoder's per-frame share.
    """
    if long_frames <= short_frames:
        raise ValueError(f"the long run ({long_frames} frames) must be longer than the short ({short_frames})")
    return 1000.0 * (long_wall_s - short_wall_s) / (long_frames - short_frames)


# ---------------------------------------------------------------- timing on the device


class StepClock:
    """Records a host time stamp each time a wrapped method is entered (one stamp per loop step)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def wrap(self, owner: object, method: str) -> None:
        inner = getattr(owner, method)

        @functools.wraps(inner)  # keeps the signature: HF generate validates kwargs against forward's
        def stamped(*args, **kwargs):
            self.stamps.append(time.perf_counter())
            return inner(*args, **kwargs)

        setattr(owner, method, stamped)

    def take(self) -> list[float]:
        stamps, self.stamps = self.stamps, []
        return stamps


def _sync() -> None:
    import torch

    if torch.cuda.is_available():  # CPU dry-runs of the harness have nothing to wait for
        torch.cuda.synchronize()


def synced_wall(call: Callable[[], object]) -> tuple[float, object]:
    """Wall seconds of `call()`, with the device idle before and after, and its result."""
    _sync()
    start = time.perf_counter()
    result = call()
    _sync()
    return time.perf_counter() - start, result


def seed_everything(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> tuple[float, float]:
    """(allocated, reserved) peak GiB since the last reset; the CUDA context is not included. 0 on CPU."""
    import torch

    if not torch.cuda.is_available():
        return 0.0, 0.0
    return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30


# ---------------------------------------------------------------- one system's result


@dataclass
class Result:
    """What one system measured on one text: one JSON line, one table row."""

    system: str
    model: str
    text: str
    frames: int
    runs: int
    xrt: Spread
    e2e_ms_per_frame: Spread
    step_ms_per_frame: Spread | None
    step_method: str
    decode_ms_per_frame: Spread | None
    ttfa_ms: Spread | None
    ttfa_note: str
    streaming_xrt: Spread | None
    peak_alloc_gib: float
    peak_reserved_gib: float
    versions: dict

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Result:
        spreads = {k: Spread(**v) if isinstance(v, dict) and "median" in v else v for k, v in d.items()}
        return cls(**spreads)


def markdown_table(results: Sequence[Result]) -> str:
    """Side-by-side table, one row per system and text, in the order given."""
    head = (
        "| system | model | text | frames | x real time, e2e | x real time, streaming | step ms/frame "
        "| e2e ms/frame | decode ms/frame | TTFA ms | peak GiB alloc / reserved |"
    )
    rows = [head, "|" + "---|" * 11]
    for r in results:
        def cell(s: Spread | None, digits: int = 2) -> str:
            return s.text(digits) if s is not None else "n/a"

        ttfa = f"{cell(r.ttfa_ms, 0)} ({r.ttfa_note})" if r.ttfa_ms is not None else f"n/a ({r.ttfa_note})"
        rows.append(
            f"| {r.system} | {r.model} | {r.text} | {r.frames} x{r.runs} | **{cell(r.xrt, 3)}** "
            f"| {cell(r.streaming_xrt, 3)} | {cell(r.step_ms_per_frame)} | {cell(r.e2e_ms_per_frame)} "
            f"| {cell(r.decode_ms_per_frame, 3)} "
            f"| {ttfa} | {r.peak_alloc_gib:.2f} / {r.peak_reserved_gib:.2f} |"
        )
    return "\n".join(rows)


def measure_calls(call: Callable[[int], int], frames: int,
                  seeds: Sequence[int]) -> tuple[list[float], list[float]]:
    """Run `call(seed) -> samples` once per seed; returns (wall seconds, x real time) per run.

    Raises if any run returned other than `frames` frames: a forced length that did not hold makes the
    comparison meaningless.
    """
    walls, speeds = [], []
    for seed in seeds:
        seed_everything(seed)
        wall, samples = synced_wall(lambda: call(seed))
        got = frames_in(samples)
        if got != frames:
            raise RuntimeError(f"seed {seed}: the call returned {got} frames, not the forced {frames}")
        walls.append(wall)
        speeds.append(xrt(samples, wall))
    return walls, speeds


# ---------------------------------------------------------------- qtts itself


def _concat_samples(chunks) -> int:
    return sum(len(chunk.samples) for chunk in chunks)


def bench_qtts(checkpoint: str, texts: Sequence[str], frames: int, runs: int, model: str,
               device: str = "cuda") -> list[Result]:
    """Measure qtts: warm-up, `runs` full-length calls per text, the marginal frame cost from calls of a
    fifth of the length, decode time, and time to first audio where `synthesize(stream=True)` exists.

    `device="cpu"` (float32) is for dry-runs of the harness only."""
    import inspect

    import torch

    import qtts
    from qtts import long_text

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tts = qtts.load(checkpoint, device=device, dtype=dtype)
    streams = "stream" in inspect.signature(tts.synthesize).parameters
    # Every text is one request with the whole text in its prompt, as the peers run it. qtts speaks a text
    # over SEGMENT_CHARS as consecutive requests, each of which the forced length would make `frames` long.
    segment_chars = long_text.SEGMENT_CHARS
    long_text.SEGMENT_CHARS = max(segment_chars, *(len(TEXTS[name]) for name in texts))
    try:
        return _measure(tts, texts, frames, runs, model, streams)
    finally:
        long_text.SEGMENT_CHARS = segment_chars
        tts.close()


def _measure(tts, texts: Sequence[str], frames: int, runs: int, model: str, streams: bool) -> list[Result]:
    import torch

    import qtts

    short = max(frames // 5, 2)

    def synthesize(text: str, n: int, seed: int, **extra):
        tokens = talker_tokens(n)
        return tts.synthesize(text, speaker=SPEAKER, language=LANGUAGE, max_new_tokens=tokens,
                              min_new_tokens=tokens, seed=seed, **extra)

    codes = torch.randint(0, 2048, (frames, 16))
    tts.decode(codes)  # warm-up: new shapes
    decode = Spread.of(1000.0 * synced_wall(lambda: tts.decode(codes))[0] / frames for _ in range(3))
    results = []
    seeds = range(runs)
    for i, name in enumerate(texts):
        text = TEXTS[name]
        if i == 0:  # the first call of each length may capture graphs or compile
            synthesize(text, frames, 0)
            synthesize(text, short, 0)
        reset_peak_memory()
        walls, speeds = measure_calls(lambda s: len(synthesize(text, frames, s).samples), frames, seeds)
        short_walls, _ = measure_calls(lambda s: len(synthesize(text, short, s).samples), short, seeds)
        marginal = Spread.of(
            marginal_ms_per_frame(w, frames, sw, short) for w, sw in zip(sorted(walls), sorted(short_walls))
        )
        ttfa = stream_xrt = None
        if streams:
            list(synthesize(text, frames, 0, stream=True))  # warm the chunk shapes
            firsts, stream_speeds = [], []
            for seed in seeds:
                seed_everything(seed)
                _sync()
                start = time.perf_counter()
                chunks = []
                for chunk in synthesize(text, frames, seed, stream=True):
                    if not chunks:
                        firsts.append(1000.0 * (time.perf_counter() - start))
                    chunks.append(chunk)
                total = time.perf_counter() - start
                samples = _concat_samples(chunks)
                if frames_in(samples) != frames:
                    raise RuntimeError(f"streaming returned {frames_in(samples)} frames, not {frames}")
                stream_speeds.append(xrt(samples, total))
            ttfa, stream_xrt = Spread.of(firsts), Spread.of(stream_speeds)
        alloc, reserved = peak_memory_gib()
        results.append(Result(
            system=f"qtts {qtts.__version__}", model=model, text=name, frames=frames, runs=runs,
            xrt=Spread.of(speeds), e2e_ms_per_frame=Spread.of(1000.0 * w / frames for w in walls),
            step_ms_per_frame=marginal,
            step_method=f"marginal: (wall {frames} - wall {short} frames) / {frames - short}, decode included",
            decode_ms_per_frame=decode, ttfa_ms=ttfa,
            ttfa_note="synthesize(stream=True), first chunk" if streams else "no streaming API yet",
            streaming_xrt=stream_xrt, peak_alloc_gib=alloc, peak_reserved_gib=reserved,
            versions={"torch": torch.__version__, "qtts": qtts.__version__},
        ))
    return results


def parse_args(argv: Sequence[str] | None, prog: str, description: str) -> argparse.Namespace:
    """The options every runner takes (qtts and the peers alike); `texts` comes back as a list."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("checkpoint", help="CustomVoice checkpoint folder in the official layout")
    parser.add_argument("--frames", type=int, default=250, help="forced length in 80 ms frames")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per text, after warm-up")
    parser.add_argument("--texts", default="sentence,passage", help=f"comma list of {', '.join(TEXTS)}")
    parser.add_argument("--model", default="custom_voice", help="model label for the table")
    parser.add_argument("--device", default="cuda", help="cpu only for dry-runs of the harness (float32)")
    args = parser.parse_args(argv)
    args.texts = args.texts.split(",")
    unknown = [t for t in args.texts if t not in TEXTS]
    if unknown or args.runs < 1 or args.frames < 10:
        parser.error(f"need known texts (got {unknown}), runs >= 1 and frames >= 10")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """`qtts bench CHECKPOINT`: print one JSON line per text, then the markdown table."""
    from qtts.errors import QttsError

    args = parse_args(argv, "qtts bench", main.__doc__)
    try:
        results = bench_qtts(args.checkpoint, args.texts, args.frames, args.runs, args.model, args.device)
    except QttsError as e:  # as every qtts command reports a user's mistake: one line, exit 2
        print(f"qtts bench: error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(r.to_json(), flush=True)
    print(markdown_table(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
