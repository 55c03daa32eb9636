"""`qtts` on the command line: speak, clone, serve, make checkpoints, benchmark, inspect.

A thin shell over the Python API; every user mistake surfaces as one line naming the problem, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import QttsError

DEMO_DIR = Path.home() / ".cache" / "qtts" / "tiny-demo"


def _read_text(value: str) -> str:
    """TEXT may be literal text, `@file` or `-` for standard input."""
    if value == "-":
        return sys.stdin.read()
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text(encoding="utf-8")
        except OSError as e:
            raise QttsError(f"cannot read text file {value[1:]}: {e.strerror}") from None
    return value


# Random weights rarely sample EOS, so a demo run is capped at 4 s of audio unless asked otherwise.
DEMO_MAX_FRAMES = 50


def _model_or_demo(model: str | None, variant: str) -> str:
    """`model`, or the tiny demo checkpoint of `variant` (written on first use) when none is given."""
    if model:
        return model
    from .testing import write_tiny_checkpoint

    folder = DEMO_DIR / variant
    if not (folder / "config.json").exists():
        write_tiny_checkpoint(folder, variant)
    print(
        f"note: no --model given, using the built-in tiny demo checkpoint ({folder}). Its weights are "
        "random, so the audio is noise; pass --model Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice (or a folder) "
        "for real speech.",
        file=sys.stderr,
    )
    return str(folder)


def _sampling(args) -> dict:
    out = {}
    if args.seed is not None:
        out["seed"] = args.seed
    if args.max_new_tokens is not None:
        out["max_new_tokens"] = args.max_new_tokens
    if args.greedy:
        out.update(do_sample=False, subtalker_dosample=False)
    return out


def cmd_speak(args) -> None:
    import qtts

    if args.voice and (args.speaker or args.instruct):
        raise QttsError("--voice cannot be combined with --speaker or --instruct")
    variant = "base" if args.voice else "voice_design" if (args.instruct and not args.speaker) else "custom_voice"
    model = _model_or_demo(args.model, variant)
    if not args.model and args.max_new_tokens is None:
        args.max_new_tokens = DEMO_MAX_FRAMES
    tts = qtts.load(model, device=args.device)
    voice = qtts.Voice.load(args.voice) if args.voice else None
    speaker = args.speaker
    if tts.model_type == "custom_voice" and speaker is None:
        speaker = tts.speakers[0]
    audio = tts.synthesize(
        _read_text(args.text),
        language=args.language,
        voice=voice,
        speaker=speaker,
        instruct=args.instruct,
        **_sampling(args),
    )
    audio.save(args.output)
    print(f"wrote {args.output}: {audio.duration:.2f} s of {audio.sample_rate} Hz audio")


def cmd_clone(args) -> None:
    import qtts

    tts = qtts.load(_model_or_demo(args.model, "base"), device=args.device)
    ref_text = _read_text(args.ref_text) if args.ref_text is not None else None
    voice = tts.create_voice(args.ref_audio, ref_text)
    voice.save(args.output)
    kind = "reference audio + transcript (ICL)" if voice.ref_text else "speaker embedding only (x-vector)"
    print(f"wrote {args.output}: voice from {kind}")


def cmd_make_tiny(args) -> None:
    from .testing import write_tiny_checkpoint

    path = write_tiny_checkpoint(args.folder, args.variant, seed=args.seed,
                                 mtp_projection=not args.no_mtp_projection)
    print(f"wrote a tiny random {args.variant} checkpoint to {path}")


def cmd_make_checkpoint(args) -> None:
    import torch

    from .testing import real_speech_tokenizer_config, real_tts_config, write_checkpoint

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = write_checkpoint(
        args.folder,
        real_tts_config(args.variant, args.size),
        real_speech_tokenizer_config(),
        seed=args.seed,
        dtype=torch.bfloat16,
        device=device,
    )
    print(f"wrote a real-size random {args.size} {args.variant} checkpoint to {path}")


def cmd_info(args) -> None:
    import qtts

    tts = qtts.load(args.model, device=args.device)
    print(f"model:      {args.model}")
    print(f"type:       {tts.model_type} ({tts.config.tts_model_size})")
    print(f"languages:  {', '.join(tts.languages)}")
    if tts.speakers:
        print(f"speakers:   {', '.join(tts.speakers)}")
    print(f"device:     {tts.device} ({tts.dtype})")


def cmd_serve(args) -> None:
    try:
        from .server import serve
    except ImportError as e:
        raise QttsError(f"qtts serve needs the server extra ({e.name} is not installed): "
                        "pip install 'qtts[server]'") from None
    model = _model_or_demo(args.model, "custom_voice")
    if args.replicas is not None or args.autoscale is not None or args.ray_address is not None:
        _serve_on_ray(args, model)
        return
    options = {"max_queue": args.max_queue, "voices_dir": args.voices_dir, "model_name": args.served_model_name}
    serve(model, host=args.host, port=args.port, device=args.device,
          **{key: value for key, value in options.items() if value is not None})


def _serve_on_ray(args, model: str) -> None:
    """`qtts serve` with --replicas, --autoscale or --ray-address: the same server as Ray Serve replicas."""
    try:
        from .cluster import ServeArgs, serve_replicas
    except ImportError as e:
        raise QttsError(f"--replicas, --autoscale and --ray-address need the cluster extra ({e.name} is not "
                        "installed): pip install 'qtts[cluster]'") from None
    from pydantic import ValidationError

    given = {"model": model, "device": args.device, "served_model_name": args.served_model_name,
             "voices_dir": args.voices_dir, "max_queue": args.max_queue, "replicas": args.replicas,
             "autoscale": args.autoscale}
    try:
        options = ServeArgs(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as e:
        problem = e.errors()[0]
        flag = "--" + str(problem["loc"][0]).replace("_", "-") + ": " if problem["loc"] else ""
        raise QttsError(flag + problem["msg"].removeprefix("Value error, ")) from None
    serve_replicas(options, host=args.host, port=args.port, ray_address=args.ray_address)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qtts", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, model_help="checkpoint folder or Hugging Face repo id (default: the tiny demo checkpoint)"):
        p.add_argument("--model", "-m", help=model_help)
        p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")

    p = sub.add_parser("speak", help="synthesize TEXT to an audio file")
    p.add_argument("text", metavar="TEXT", help="the text, @FILE to read it from a file, or - for stdin")
    p.add_argument("-o", "--output", default="out.wav", help="output file, .wav or .flac (default out.wav)")
    common(p)
    p.add_argument("--speaker", "-s", help="preset speaker (CustomVoice models)")
    p.add_argument("--voice", "-v", help="voice file made by `qtts clone` (Base models)")
    p.add_argument("--instruct", "-i", help="style instruction (1.7B CustomVoice) or voice description (VoiceDesign)")
    p.add_argument("--language", "-l", default="auto", help="language name or auto (default)")
    p.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    p.add_argument("--max-new-tokens", type=int, help="upper bound on generated frames")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.set_defaults(func=cmd_speak)

    p = sub.add_parser("clone", help="make a reusable voice file from reference audio")
    p.add_argument("ref_audio", metavar="REF_AUDIO", help="reference recording (wav, flac, ogg), 1 to 60 s")
    p.add_argument("--ref-text", help="its transcript (enables ICL cloning), @FILE or -")
    p.add_argument("-o", "--output", required=True, help="voice file to write (.safetensors)")
    common(p, "Base checkpoint folder or repo id (default: the tiny demo checkpoint)")
    p.set_defaults(func=cmd_clone)

    p = sub.add_parser("make-tiny", help="write a tiny random checkpoint in the official layout")
    p.add_argument("folder")
    p.add_argument("--variant", choices=["base", "custom_voice", "voice_design"], default="custom_voice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-mtp-projection", action="store_true", help="0.6B-style predictor (no projection)")
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("make-checkpoint", help="write a real-size random-weight checkpoint (for benchmarks)")
    p.add_argument("folder")
    p.add_argument("--variant", choices=["base", "custom_voice", "voice_design"], default="custom_voice")
    p.add_argument("--size", choices=["0.6b", "1.7b"], default="0.6b")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="where to draw the random numbers (default: cuda when available)")
    p.set_defaults(func=cmd_make_checkpoint)

    p = sub.add_parser("info", help="describe a checkpoint")
    p.add_argument("model")
    p.add_argument("--device")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("serve", help="serve the model over HTTP with OpenAI's speech API")
    common(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--voices-dir", help="folder that keeps cloned voices across restarts (Base models)")
    p.add_argument("--max-queue", type=int, help="requests that may wait before new ones get 503 (default 64)")
    p.add_argument("--served-model-name", help="model id clients send and /v1/models lists (default: --model)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, help="run N replicas (one GPU each) behind the port, on Ray Serve")
    scale.add_argument("--autoscale", metavar="MIN:MAX", help="let Ray Serve run MIN to MAX replicas, by load")
    p.add_argument("--ray-address", help="join this Ray cluster (auto, HOST:PORT, ray://...) instead of "
                   "starting one on this machine")
    p.set_defaults(func=cmd_serve)

    # Listed for --help only: main() hands `qtts bench ...` to qtts.bench, which parses its own options.
    sub.add_parser("bench", help="benchmark qtts on a checkpoint (qtts bench --help; see bench/README.md)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except QttsError as e:
        print(f"qtts: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
