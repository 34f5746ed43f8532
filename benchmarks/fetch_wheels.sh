#!/usr/bin/env bash
# Wheels of the packages a GPU image with jax/flax/optax/orbax but without the data
# stack lacks (grain, ArrayRecord, TFDS, ml-collections, tensorboardX and what they
# need), for another Python than this machine's, into an ignored folder that the
# device run carries:
#
#   benchmarks/fetch_wheels.sh               # Python 3.12, x86-64 Linux, into .whl/
#   PYV=3.11 DEST=/tmp/w benchmarks/fetch_wheels.sh
#
# On the GPU host (benchmarks/device_check.sh does this itself):
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${DEST:-.whl}"
PYV="${PYV:-3.12}"
# Pinned to the versions the tests ran with; pure-Python ones may come as sdists (built here).
BINARY=(array-record==0.8.6 grain==0.2.18 dm-tree==0.1.10)
PURE=(tensorflow-datasets==4.9.10 ml-collections==1.1.0 tensorboardX==2.6.5 simple-parsing==0.1.9
      docstring-parser==0.18.0 tensorflow-metadata==1.21.0 termcolor==3.3.0 toml==0.10.2
      immutabledict==4.3.1 importlib-resources==7.1.0 portpicker==1.6.0 promise==2.3)
mkdir -p "$DEST"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  "${platforms[@]}" -d "$DEST" "${BINARY[@]}"
python3 -m pip wheel -q --no-deps -w "$DEST" "${PURE[@]}"
ls -1 "$DEST"
du -sh "$DEST"
