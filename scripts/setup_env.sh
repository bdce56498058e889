#!/usr/bin/env bash
# Create or update the project's virtual environment at .venv/ (idempotent).
#
#   scripts/setup_env.sh            CPU set (default)
#   CLEAN_ROS_CUDA=cu126 scripts/setup_env.sh   CUDA set: spconv-cu126, onnxruntime-gpu, tensorrt
#   PYTHON=/path/to/python3.11 scripts/setup_env.sh   use that interpreter
#
# A stamp (hash of the variant, the pinned set and the ci/ interface sources: vision_msgs, tf2_msgs) is written only after every step
# succeeded. Same stamp -> nothing to do (seconds). Different stamp -> the pinned set changed: rebuild from scratch.
# No stamp -> an earlier run was interrupted (say a registry failure): resume on top of it and finish.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.clean_ros-setup-stamp"
VARIANT=${CLEAN_ROS_CUDA:-cpu}

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

case "$VARIANT" in
  cpu) REQ="$ROOT/requirements/cpu.txt" ;;
  cu[0-9][0-9]*) REQ="$ROOT/requirements/cuda.txt" ;;
  *) die "CLEAN_ROS_CUDA='$VARIANT' is not understood: leave it unset for the CPU set, or give the CUDA tag of your spconv build (cu118, cu121, cu124, cu126 ...)." ;;
esac

stamp_of() {
  {
    echo "variant=$VARIANT"
    cat "$ROOT/requirements/base.txt" "$REQ"
    find "$ROOT/ci/vision_msgs" "$ROOT/ci/tf2_msgs" -type f | LC_ALL=C sort | xargs cat
  } | sha256sum | cut -d' ' -f1
}
WANT=$(stamp_of)

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
  say ".venv is up to date ($VARIANT)."
  exit 0
fi

# ---------------------------------------------------------------- prerequisites, checked before touching anything
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && [[ "$("$cand" -c 'import sys;print("%d.%d"%sys.version_info[:2])' 2>/dev/null)" == "3.11" ]]; then
      PY=$(command -v "$cand"); break
    fi
  done
fi
[[ -n "$PY" ]] || die "Python 3.11 not found. The ROS 2 wheels are built for CPython 3.11 only. Install it (Debian: apt-get install python3.11 python3.11-venv python3.11-dev) or point PYTHON=/path/to/python3.11 at one."
PYVER=$("$PY" -c 'import sys;print("%d.%d"%sys.version_info[:2])' 2>/dev/null) || die "PYTHON=$PY does not run."
[[ "$PYVER" == "3.11" ]] || die "PYTHON=$PY is Python $PYVER; clean_ros needs Python 3.11 (the ROS 2 wheels are cp311)."
"$PY" -c 'import venv, ensurepip' 2>/dev/null || die "$PY lacks the venv/ensurepip modules (Debian: apt-get install python3.11-venv)."
for tool in cmake g++ make; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found: it builds the vision_msgs interfaces. Debian: apt-get install -y cmake g++ make python3-dev"
done
"$PY" - <<'EOF' || die "Python headers missing (Python.h): Debian: apt-get install -y python3.11-dev"
import os, sysconfig, sys
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
EOF

# ---------------------------------------------------------------- the virtual environment
if [[ -f "$STAMP" ]]; then
  say "the pinned set changed since .venv was built: rebuilding it from scratch."
  rm -rf "$VENV"
elif [[ -d "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say ".venv is broken: recreating it."
  rm -rf "$VENV"
elif [[ -d "$VENV" ]]; then
  say "resuming an unfinished set-up of .venv."
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating .venv with $PY"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

REQ_FILE="$REQ"
if [[ "$VARIANT" != cpu ]]; then
  REQ_FILE="$VENV/requirements-$VARIANT.txt"
  sed "s#@SPCONV@#spconv-$VARIANT#" "$REQ" >"$REQ_FILE"
  cp "$ROOT/requirements/base.txt" "$VENV/base.txt"
fi

say "installing the pinned $VARIANT set (first run: a few minutes)"
# (this machine's pip config names local mirrors that lack most projects: drop pip's warnings about them)
if ! "$VPY" -m pip install --disable-pip-version-check --no-input --retries "${PIP_RETRIES:-5}" --timeout 60 -q -r "$REQ_FILE" 2>&1 \
    | { grep -v "^WARNING: Location 'file:" || true; }; then
  die "pip could not install the pinned set (registry or network failure?). Nothing is marked done: run the same command again and it resumes."
fi

# ---------------------------------------------------------------- interface packages not on PyPI (ci/<name>)
# vision_msgs (what the node publishes) and tf2_msgs (/tf and /tf_static, read by clean_ros/ros/tf_buffer.py when
# tf2_ros is not installed), each built from its interface files into the venv prefix.
build_interfaces() {  # name, a Python import that proves it is installed
  local name=$1 check=$2
  "$VPY" -c "$check" >/dev/null 2>&1 && return 0
  say "building the $name interfaces into .venv (about 20 s)"
  local PYINC NPINC BUILD="$VENV/build/$name"
  PYINC=$("$VPY" -c "import sysconfig;print(sysconfig.get_paths()['include'])")
  NPINC=$("$VPY" -c "import numpy;print(numpy.get_include())")
  # The wheels' exported CMake files name the interpreter they were built with; point them at ours.
  grep -rl '/opt/python/cp311-cp311' "$VENV/share" --include='*.cmake' 2>/dev/null | xargs -r sed -i \
    -e "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g" \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NPINC#g" || true
  rm -rf "$BUILD"; mkdir -p "$BUILD"
  (
    export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
    cmake -S "$ROOT/ci/$name" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VPY" \
      -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >"$BUILD.log" 2>&1 &&
    cmake --build "$BUILD" -j2 >>"$BUILD.log" 2>&1 &&
    cmake --install "$BUILD" >>"$BUILD.log" 2>&1
  ) || die "building $name failed; the log is $BUILD.log (last lines: $(tail -n 5 "$BUILD.log" | tr '\n' ' '))"
  "$VPY" -c "$check" || die "$name was built but does not import; see $BUILD.log"
}
build_interfaces vision_msgs 'from vision_msgs.msg import Detection3DArray'
build_interfaces tf2_msgs 'from tf2_msgs.msg import TFMessage'

# ---------------------------------------------------------------- final check, then the stamp
"$VPY" - <<'EOF' || die "the environment was installed but a core import fails (above)."
import torch, numpy, yaml, onnx, rclpy, rosbags, spconv  # noqa: F401
from sensor_msgs.msg import PointCloud2  # noqa: F401
from vision_msgs.msg import Detection3DArray  # noqa: F401
from tf2_msgs.msg import TFMessage  # noqa: F401
EOF
printf '%s' "$WANT" >"$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
say ".venv ready ($VARIANT)."
