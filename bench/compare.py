"""Side-by-side speed of qtts, faster-qwen3-tts and the official qwen-tts on one GPU, one checkpoint, one text.

Runs on the GPU machine (see bench/README.md): installs the three wheel sets from .whl/ into separate
folders, builds a real-size random CustomVoice checkpoint (unless --checkpoint is given), runs each system in
its own process with its own PYTHONPATH, one after the other, and prints a markdown table last. JSON lines,
the table and each system's log go to $OUT (or --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from peer_common import measure

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl"
ENVS = Path("/tmp/qtts-bench")
# Each system's folders, first on PYTHONPATH first; "shared" holds the audio packages all three need.
SYSTEMS = {
    "faster": {"paths": ["faster", "shared"], "runner": [str(REPO / "bench" / "peer_faster.py")]},
    "qtts": {"paths": ["shared"], "runner": ["-m", "qtts.bench"]},
    "official": {"paths": ["official", "shared"], "runner": [str(REPO / "bench" / "peer_official.py")]},
}
MAKE_CHECKPOINT = (
    "import sys, torch; from qtts.testing import write_checkpoint; "
    "from qtts.testing.configs import real_tts_config, real_speech_tokenizer_config; "
    "write_checkpoint(sys.argv[1], real_tts_config('custom_voice', sys.argv[2]), real_speech_tokenizer_config(), "
    "seed=0, dtype=torch.bfloat16, device='cuda', qwen_vocabulary=True)"
)


def install(wheel_set: str) -> Path:
    """pip-install one wheel set, without network or dependency resolution, into its own folder."""
    target = ENVS / wheel_set
    wheels = sorted((WHEELS / wheel_set).glob("*.whl"))
    if not wheels:
        raise SystemExit(f"no wheels in {WHEELS / wheel_set}: run bench/fetch_wheels.sh and carry .whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)], check=True)
    return target


def environment(paths: list[str]) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # src/ first makes `qtts` importable without installing it; the peers never import it.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *(str(ENVS / p) for p in paths)])
    return env


def machine() -> dict:
    import torch

    query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True)
    return {
        "gpu": query.stdout.strip(),  # not torch.cuda: a context here would sit beside the measured processes
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def run_system(name: str, checkpoint: Path, args: argparse.Namespace, timeout_s: float,
               out: Path) -> tuple[list, str]:
    """Run one system's runner in its own process; its results and a one-line account of the run."""
    spec = SYSTEMS[name]
    command = [sys.executable, *spec["runner"], str(checkpoint), "--frames", str(args.frames),
               "--runs", str(args.runs), "--texts", args.texts, "--model", f"{args.size}-CV"]
    log = out / f"{name}.log"
    start = time.perf_counter()
    try:
        done = subprocess.run(command, env=environment(spec["paths"]), cwd=REPO, capture_output=True, text=True,
                              timeout=timeout_s)
        stdout, stderr, status = done.stdout, done.stderr, f"exit {done.returncode}"
    except subprocess.TimeoutExpired as stopped:
        stdout = stopped.stdout.decode() if isinstance(stopped.stdout, bytes) else (stopped.stdout or "")
        stderr = stopped.stderr.decode() if isinstance(stopped.stderr, bytes) else (stopped.stderr or "")
        status = f"stopped after {timeout_s:.0f} s"
    log.write_text(stderr)
    results = [measure.Result.from_dict(json.loads(line)) for line in stdout.splitlines() if line.startswith("{")]
    took = time.perf_counter() - start
    account = f"{name}: {status}, {len(results)} result(s) in {took:.0f} s (log: {log.name})"
    print(account, flush=True)
    if len(results) < len(args.texts.split(",")):
        print("\n".join(stderr.strip().splitlines()[-15:]), flush=True)
    return results, account


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=["0.6b", "1.7b"], default="0.6b")
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--texts", default="sentence,passage")
    parser.add_argument("--systems", default="faster,qtts,official", help="comma list, run in this order")
    parser.add_argument("--checkpoint", type=Path, help="existing checkpoint folder; else one is built")
    parser.add_argument("--budget-s", type=float, default=570, help="wall budget for everything")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-out")))
    args = parser.parse_args()
    deadline = time.perf_counter() + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)

    for wheel_set in ("shared", "official", "faster"):
        install(wheel_set)
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = ENVS / f"checkpoint-{args.size}"
        subprocess.run([sys.executable, "-c", MAKE_CHECKPOINT, str(checkpoint), args.size],
                       env=environment(["shared"]), cwd=REPO, check=True)
    host = machine()
    print(f"ready after {args.budget_s - (deadline - time.perf_counter()):.0f} s: {host}", flush=True)

    results, accounts = [], []
    for name in args.systems.split(","):
        left = deadline - time.perf_counter()
        if left < 30:
            accounts.append(f"{name}: skipped, {left:.0f} s of the budget left")
            print(accounts[-1], flush=True)
            continue
        found, account = run_system(name, checkpoint, args, left, args.out)
        results += found
        accounts.append(account)

    table = measure.markdown_table(results)
    header = (f"{host['gpu']}, torch {host['torch']} (CUDA {host['cuda']}), Python {host['python']}, "
              f"{host['date']}; `{' '.join(sys.argv)}`")
    footer = "\n".join(f"- {account}" for account in accounts)
    (args.out / "results.jsonl").write_text("".join(r.to_json() + "\n" for r in results))
    (args.out / "table.md").write_text(f"{header}\n\n{table}\n\n{footer}\n")
    print(f"\n{header}\n\n{table}\n\n{footer}")


if __name__ == "__main__":
    main()
