"""bf16 numerics: teacher-forced logit agreement of bf16 with fp32, for qtts and the official qwen-tts.

On one checkpoint: a fixed prompt (the benchmark's 32-word sentence) and a fixed code sequence (fp32 greedy
frames of qtts's reference loop, EOS masked) are fed to each engine in fp32 and in bf16 with the same
weights; each bf16 run is compared with the same engine's fp32 run (see `qtts.numerics`). Engines: qtts's
reference loop, qtts's fast frame (Triton kernels on CUDA), the official talker. Also checks that fp32 logits
of qtts equal the official ones. Prints one JSON line, then a markdown table last.

    python bench/numerics.py CHECKPOINT [--device cuda] [--frames 48] [--json PATH]

The official package needs transformers 4.57.3: where `qwen_tts` is not importable and the wheels of
`bench/fetch_wheels.sh` are in `.whl/`, they are installed as `bench/compare.py` does and put on the path.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import time
import types
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# Appended: a qtts already on the path (PYTHONPATH set to another tree, to measure it with this script)
# comes first; without one, this checkout's.
sys.path.append(str(BENCH.parent / "src"))


def official_package_available() -> bool:
    """Make `qwen_tts` importable if it can be (before anything imports transformers or tokenizers)."""
    if importlib.util.find_spec("qwen_tts") is None and (BENCH.parent / ".whl" / "official").is_dir():
        from compare import ENVS, install

        for wheel_set in ("official", "shared"):  # reuse what an earlier compare.py run installed
            target = ENVS / wheel_set
            sys.path.insert(1, str(target if target.is_dir() else install(wheel_set)))
    if importlib.util.find_spec("qwen_tts") is None:
        return False
    import transformers  # noqa: F401  (probes torchaudio itself: the stand-in must come after it)

    if importlib.util.find_spec("torchaudio") is None and "torchaudio" not in sys.modules:
        # `import qwen_tts` imports torchaudio.compliance.kaldi, used only by its 25 Hz tokenizer.
        kaldi = types.ModuleType("torchaudio.compliance.kaldi")
        compliance = types.ModuleType("torchaudio.compliance")
        root = types.ModuleType("torchaudio")
        compliance.kaldi, root.compliance = kaldi, compliance
        sys.modules.update({"torchaudio": root, "torchaudio.compliance": compliance,
                            "torchaudio.compliance.kaldi": kaldi})
    return True


def official_talker(folder: Path, state: dict, device, dtype):
    """The official talker module built from the checkpoint's config.json, holding `state` (qtts's talker
    weights: the same `talker.*` tensors), cast to `dtype`."""
    import torch
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSTalkerForConditionalGeneration

    config = Qwen3TTSConfig(**json.loads((folder / "config.json").read_text()))
    with torch.device(device):  # random init on the GPU takes a moment; on the CPU a 0.6B one takes minutes
        model = Qwen3TTSTalkerForConditionalGeneration(config.talker_config)
    model.load_state_dict(state, strict=True)
    return model.to(dtype).eval()


def request_plan(tts, text: str):
    """A prompt plan of the model's kind: the benchmark speaker, a described voice, or a random x-vector."""
    import torch
    from qtts.bench import LANGUAGE, SPEAKER

    if tts.model_type == "custom_voice":
        speaker = SPEAKER if SPEAKER in tts.speakers else tts.speakers[0]
        return tts.plan(text, language=LANGUAGE, speaker=speaker), f"custom voice, speaker {speaker}"
    if tts.model_type == "voice_design":
        return tts.plan(text, language=LANGUAGE, instruct="A calm, clear voice."), "voice design"
    embedding = torch.randn(tts.hidden_size, generator=torch.Generator().manual_seed(0))
    return tts.prompts.voice_clone(text, embedding, language=LANGUAGE), "voice clone, random x-vector"


def measure(args, with_official: bool) -> dict:
    import torch

    import qtts
    from qtts import numerics
    from qtts.bench import TEXTS

    start = time.perf_counter()
    torch.set_float32_matmul_precision("highest")  # fp32 must mean fp32 (no TF32) for the reference runs
    device = torch.device(args.device)
    tts = qtts.load(args.checkpoint, device=device, dtype=torch.float32)
    talker32 = tts.talker
    plan, request = request_plan(tts, TEXTS["sentence"])
    frames = numerics.fixed_frames(talker32, plan, args.frames)
    talker16 = copy.deepcopy(talker32).to(torch.bfloat16)
    config = talker32.config

    runs = {}
    fp32 = {"qtts reference": numerics.teacher_forced_reference(talker32, plan, frames)}
    bf16 = {"qtts reference": numerics.teacher_forced_reference(talker16, plan, frames)}
    if not args.no_fast:
        fp32["qtts fast frame"] = numerics.teacher_forced_fast(talker32, plan, frames)
        bf16["qtts fast frame"] = numerics.teacher_forced_fast(talker16, plan, frames)
    official_note = "skipped" if args.no_official else "not installed"
    if with_official:
        state = talker32.state_dict()
        official32 = official_talker(tts.checkpoint.path, state, device, torch.float32)
        official16 = copy.deepcopy(official32).to(torch.bfloat16)
        fp32["official"] = numerics.teacher_forced_official(official32, plan, frames)
        bf16["official"] = numerics.teacher_forced_official(official16, plan, frames)
        official_note = f"attention {official32.config._attn_implementation}"
    for name in fp32:
        runs[name] = {k: v.as_dict() for k, v in numerics.compare(fp32[name], bf16[name], config).items()}

    # fp32 sanity: every engine computes the same function, so fp32 logits must agree closely.
    fp32_vs_reference = {name: numerics.max_abs_diff(fp32["qtts reference"], run)
                         for name, run in fp32.items() if name != "qtts reference"}
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "checkpoint": str(args.checkpoint), "device": gpu, "torch": torch.__version__,
        "hidden_size": config.hidden_size, "request": request, "prompt_len": int(plan.prefill.shape[0]),
        "frames": args.frames, "official": official_note, "bf16_vs_fp32": runs,
        "fp32_max_abs_diff_vs_qtts_reference": fp32_vs_reference,
        "fp32_logit_std": float(fp32["qtts reference"].code0.std()),
        "bf16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        "seconds": round(time.perf_counter() - start, 1),
    }


def table(result: dict) -> str:
    """Markdown: one row per engine, bf16 against the same engine in fp32, then the cross-engine lines."""
    runs = result["bf16_vs_fp32"]
    lines = [
        f"bf16 vs fp32, teacher-forced, {result['frames']} frames, prompt {result['prompt_len']} positions "
        f"({result['request']}), {result['device']}; official: {result['official']}",
        "",
        "| engine | code 0 top-1 | codes 1-15 top-1 | code 0 KL | codes 1-15 KL "
        "| code 0 max / mean rel. diff | codes 1-15 max / mean rel. diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        c0, cs = run["code0"], run["codes1_15"]
        lines.append(
            f"| {name} | {c0['top1']:.3f} | {cs['top1']:.3f} | {c0['kl']:.2e} | {cs['kl']:.2e} "
            f"| {c0['max_rel_diff']:.3f} / {c0['mean_rel_diff']:.4f} "
            f"| {cs['max_rel_diff']:.3f} / {cs['mean_rel_diff']:.4f} |"
        )
    lines.append("")
    if "official" in runs:
        official = runs["official"]
        ratios = ", ".join(
            f"{name} {run['code0']['kl'] / official['code0']['kl']:.3f} / "
            f"{run['codes1_15']['kl'] / official['codes1_15']['kl']:.3f}"
            for name, run in runs.items() if name != "official"
        )
        lines.append(f"bf16 KL over the official package's (code 0 / codes 1-15; at most 1 = no worse): {ratios}")
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in result["fp32_max_abs_diff_vs_qtts_reference"].items())
    lines.append(f"fp32 max |logit diff| against the qtts reference: {diffs or 'n/a'} "
                 f"(logit std {result['fp32_logit_std']:.2f})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="checkpoint folder in the official layout")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=48, help="length of the forced code sequence")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--no-fast", action="store_true", help="skip the fast frame")
    parser.add_argument("--no-official", action="store_true", help="skip the official package")
    args = parser.parse_args()
    if args.frames < 2:
        parser.error("--frames must be at least 2")
    # Before qtts is imported: the official wheel set brings the tokenizers version its transformers needs.
    with_official = not args.no_official and official_package_available()
    result = measure(args, with_official)
    line = json.dumps(result)
    if args.json:
        args.json.write_text(line + "\n")
    print(line)
    print()
    print(table(result))


if __name__ == "__main__":
    main()
