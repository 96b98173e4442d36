#!/bin/sh
# Downloads, here, the wheels bench/gpu_wheels.txt lists for a Python 3.12 x86-64 Linux
# machine that cannot reach a package index (the GPU machine), into DIR (default .whl).
#   bench/gpu_wheels.sh .whl            # then: python3 bench/gpu_check.py DATA --wheels .whl
#   bench/gpu_wheels.sh /tmp/w 3.11     # another Python version
set -eu
dir=${1:-.whl}
python=${2:-3.12}
here=$(dirname "$0")
mkdir -p "$dir"
platforms=""
for p in manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms="$platforms --platform $p"
done
# shellcheck disable=SC2086  # the platforms are separate words
python3 -m pip download --no-deps --only-binary=:all: --python-version "$python" \
    --implementation cp $platforms -d "$dir" -r "$here/gpu_wheels.txt"
# antlr4-python3-runtime (omegaconf's parser) is published as a source archive only: its
# wheel is pure Python, so building it here serves every platform.
python3 -m pip wheel --no-deps -q -w "$dir" antlr4-python3-runtime==4.9.3
du -sh "$dir"
