"""Decoder probe: one streamed decode call of the real-size codec decoder alone (its convolution weights
laid out as `qtts.load` lays them), captured as a CUDA graph, with cuDNN's heuristics picking each
convolution's algorithm (the default) or cuDNN benchmarking them while the graph warms up. Random weights
of the real dimensions; seconds to start, not the minute of a whole engine.

    python bench/decoder_probe.py --batch 16 64 --chunk 16 --dtype bfloat16

Prints one JSON line per (variant, batch, chunk): ms per call, audio seconds per second, and the largest
difference of its audio from the first variant's (the same function, so rounding only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

# Appended: a qtts already on the path (PYTHONPATH set to another tree, to measure it with this script)
# comes first; without one, this checkout's.
sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))

from engine_probe import cuda_ms  # noqa: E402
from qtts.config import SpeechTokenizerConfig  # noqa: E402
from qtts.engine.graphs import capture  # noqa: E402
from qtts.models import codec_decoder  # noqa: E402
from qtts.models.codec_stream import CodecStream  # noqa: E402
from qtts.testing import real_speech_tokenizer_config  # noqa: E402

# cudnn.benchmark per variant
VARIANTS = {"default": False, "benchmark": True}


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--chunk", type=int, nargs="+", default=[16])
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    config = SpeechTokenizerConfig.from_dict(real_speech_tokenizer_config()).decoder_config
    torch.manual_seed(0)
    decoder = codec_decoder.CodecDecoder(config, device="cuda", dtype=getattr(torch, args.dtype)).eval()
    for module in decoder.modules():  # codebooks and snake parameters start at constants; vary them
        if isinstance(module, codec_decoder.Codebook):
            module.embedding_sum.normal_()
        if isinstance(module, codec_decoder.SnakeBeta):
            module.alpha.normal_(0, 0.3)
            module.beta.normal_(0, 0.3)
    codec_decoder.channels_last_convolutions(decoder)
    first: dict = {}
    for name in args.variants:
        torch.backends.cudnn.benchmark = VARIANTS[name]
        for batch in args.batch:
            for chunk in args.chunk:
                stream = CodecStream(decoder, batch_size=batch)
                generator = torch.Generator(device="cuda").manual_seed(1000 * batch + chunk)  # same codes per variant
                codes = torch.randint(0, config.codebook_size, (batch, chunk, config.num_quantizers), device="cuda",
                                      generator=generator)
                side = torch.cuda.Stream()
                graph, audio = capture(lambda: stream.decode(codes), warmup=2, stream=side)
                stream.reset()
                graph.replay()
                torch.cuda.synchronize()
                sample = audio.clone()
                ms = cuda_ms(graph.replay, args.reps)
                reference = first.setdefault((batch, chunk), sample)
                print(json.dumps({"part": "decoder", "variant": name, "batch": batch, "chunk": chunk,
                                  "dtype": args.dtype, "ms": round(ms, 3),
                                  "audio_s_per_s": round(batch * chunk * 0.08 / (ms / 1e3), 1),
                                  "max_diff_from_first": round((sample - reference).abs().max().item(), 5)}),
                      flush=True)


if __name__ == "__main__":
    main()
