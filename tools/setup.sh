#!/usr/bin/env bash
# One set-up for everything: a venv with torch (CPU), the ROS 2 wheels, the project's
# interfaces built with CMake, and the drqv2_ros Python package installed editable.
# Idempotent: each step leaves a stamp keyed on its inputs, so a second run takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DRQV2_VENV:-$ROOT/.venv}"
ROS_DISTRO_WHEELS="${DRQV2_ROS_DISTRO:-jazzy}"
PY="${PYTHON:-python3}"
STAMPS="$VENV/.drqv2_stamps"
log() { printf '[setup] %s\n' "$*" >&2; }

# One set-up at a time per venv (the test and the sim commands may start together).
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9

# System packages (Debian/Ubuntu): compilers and CMake for the interface build, EGL for
# MuJoCo's offscreen renderer. Only installed when something is missing.
need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || need_apt+=(libegl1 libgl1)
ldconfig -p 2>/dev/null | grep -q 'libOSMesa' || need_apt+=(libosmesa6)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing system packages: ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    log "missing system packages: ${need_apt[*]} (install them with apt-get)"; exit 1
  fi
fi

[ -x "$VENV/bin/python" ] || { log "creating venv $VENV"; "$PY" -m venv "$VENV"; }
VPY="$VENV/bin/python"
mkdir -p "$STAMPS"

stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { printf '%s' "$2" >"$STAMPS/$1"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

REQ="$ROOT/tools/requirements.txt"
key="$(hash_of "$REQ" "$0")-$ROS_DISTRO_WHEELS"
if ! stamp_ok pip "$key"; then
  log "installing Python dependencies (torch 2.13.0 CPU, ROS 2 $ROS_DISTRO_WHEELS wheels, ...)"
  PLOG="$STAMPS/pip.log"
  : >"$PLOG"
  pipi() { "$VPY" -m pip install -q "$@" >>"$PLOG" 2>&1 || { tail -40 "$PLOG" >&2; exit 1; }; }
  pipi --upgrade pip wheel
  # torch first and pinned exactly: any looser spec resolves to a CUDA build.
  pipi torch==2.13.0
  # Kilted split ament_cmake_ros into ament_cmake_ros_core; Jazzy still has the old name.
  case "$ROS_DISTRO_WHEELS" in jazzy|humble) acr="ament-cmake-ros ros-$ROS_DISTRO_WHEELS-ament-cmake-gmock ros-$ROS_DISTRO_WHEELS-ament-cmake-gtest ros-$ROS_DISTRO_WHEELS-ament-cmake-pytest ros-$ROS_DISTRO_WHEELS-python-cmake-module" ;; *) acr=ament-cmake-ros-core ;; esac
  sed -e "s/@ROS@/$ROS_DISTRO_WHEELS/g" -e "s/@AMENT_CMAKE_ROS@/$acr/g" -e 's/#.*//' "$REQ" | tr ' ' '\n' | grep -v '^$' >"$STAMPS/requirements.resolved.txt"
  pipi -r "$STAMPS/requirements.resolved.txt" torch==2.13.0
  stamp_set pip "$key"
fi

SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PYINC="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NPINC="$("$VPY" -c 'import numpy; print(numpy.get_include())')"

# The message wheels' exported CMake files hard-code the wheel build machine's Python and
# numpy include dirs: point them at this venv's.
if ! stamp_ok cmakefix "$key"; then
  grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+|site-packages/numpy/_core/include' \
    "$VENV/share"/*/cmake/ 2>/dev/null | while read -r f; do
    sed -i -E -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g" \
      -e "s#[^;\"]*site-packages/numpy/_core/include#$NPINC#g" "$f"
  done
  stamp_set cmakefix "$key"
fi

# pip (re)installs of the editable package remove site-packages/drqv2_ros: do it first,
# and rebuild the interfaces after it.
pkey="$(hash_of "$ROOT/setup.py" "$ROOT/drqv2_ros/executables.py")-$key"
if ! stamp_ok editable "$pkey"; then
  log "installing drqv2_ros (editable)"
  "$VPY" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" \
    --config-settings editable_mode=compat >"$STAMPS/pip-editable.log" 2>&1 \
    || { tail -40 "$STAMPS/pip-editable.log" >&2; exit 1; }
  stamp_set editable "$pkey"
fi
# Interfaces (msg/, srv/) with CMake into the venv prefix; the Python package itself is
# installed editable by pip below (DRQV2_INSTALL_PYTHON=OFF).
ikey="$(hash_of "$ROOT"/msg/*.msg "$ROOT"/srv/*.srv "$ROOT/CMakeLists.txt" "$ROOT/package.xml")-$pkey"
if ! stamp_ok interfaces "$ikey" || [ ! -d "$SITE/drqv2_ros/srv" ]; then
  log "building ROS 2 interfaces (msg/, srv/)"
  BUILD="$VENV/build/drqv2_ros"
  rm -rf "$BUILD"; mkdir -p "$BUILD"
  (
    cd "$BUILD"
    export AMENT_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
    cmake "$ROOT" -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_PREFIX_PATH="$VENV" \
      -DBUILD_TESTING=OFF -DDRQV2_INSTALL_PYTHON=OFF \
      -DPython3_EXECUTABLE="$VPY" -DPYTHON_EXECUTABLE="$VPY" >cmake.log 2>&1 \
      || { tail -40 cmake.log >&2; exit 1; }
    make -j"$(nproc)" >make.log 2>&1 || { tail -40 make.log >&2; exit 1; }
    make install >install.log 2>&1 || { tail -40 install.log >&2; exit 1; }
  )
  # rosidl writes a stub drqv2_ros/__init__.py into site-packages; the real one comes from
  # the source tree (editable install) and extends its __path__ to find msg/ and srv/.
  rm -f "$SITE/drqv2_ros/__init__.py"
  # ...and an egg-info without entry points: pip's dist-info must stay the package's only
  # metadata record (importlib.metadata would otherwise list none of its executables).
  rm -rf "$SITE"/drqv2_ros-*.egg-info
  stamp_set interfaces "$ikey"
fi

# >>> feetech backend: LeRobot's SO-101 follower (docs/feetech.md) >>>
# lerobot itself goes in with --no-deps (its metadata pins torch < 2.11 and torchvision);
# tools/requirements-lerobot.txt lists what the follower + Feetech bus path really imports,
# installed with torch==2.13.0 alongside so pip cannot move torch. Verified by importing it.
LEROBOT_VERSION=0.4.4
LREQ="$ROOT/tools/requirements-lerobot.txt"
lkey="$(hash_of "$LREQ")-lerobot$LEROBOT_VERSION-$pkey"
if ! stamp_ok lerobot "$lkey"; then
  log "installing lerobot $LEROBOT_VERSION (--no-deps) and its SO-101 follower's dependencies"
  LLOG="$STAMPS/lerobot-pip.log"
  { "$VPY" -m pip install -q -r "$LREQ" torch==2.13.0 \
      && "$VPY" -m pip install -q --no-deps "lerobot==$LEROBOT_VERSION"; } >"$LLOG" 2>&1 \
    || { tail -40 "$LLOG" >&2; exit 1; }
  "$VPY" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else "torch moved")' \
    >>"$LLOG" 2>&1 || { tail -40 "$LLOG" >&2; log "torch changed while installing lerobot"; exit 1; }
  "$VPY" -c 'from drqv2_ros.robot.feetech_backend import import_lerobot_follower as f; f()' \
    >>"$LLOG" 2>&1 || { tail -40 "$LLOG" >&2; log "LeRobot's SO-101 follower does not import"; exit 1; }
  stamp_set lerobot "$lkey"
fi
# <<< feetech backend <<<

# >>> LeRobot policy, dataset and rl modules (README: LeRobot) >>>
# torchvision 0.28.0 is the only wheel for torch 2.13 and a CUDA build: installed without
# dependencies (so torch stays 2.13.0+cpu), plus a lazy import hook of this set-up
# (tools/torchvision_fix: a .pth that, on the first `import torchvision` and only when its
# compiled extension cannot load against this torch, defines the two operator schemas its
# meta registrations need). Then what LeRobot's policies, datasets and rl modules import,
# and this repository's LeRobot policy plugin.
TVFIX="$ROOT/tools/torchvision_fix/drqv2_torchvision_fix.py"
tkey="$(hash_of "$LREQ" "$TVFIX" "$ROOT/lerobot_plugin/pyproject.toml")-torchvision0.28.0-$lkey"
check_torch() {
  "$VPY" -c 'import torch, sys; v = torch.__version__; sys.exit(0 if v == "2.13.0+cpu" or v.startswith("2.13.0") else f"torch is {v}, not 2.13.0")' \
    || { log "torch changed during the set-up ($1)"; exit 1; }
}
if ! stamp_ok lerobot_modules "$tkey"; then
  log "installing torchvision 0.28.0 (--no-deps) and the torchvision import fix"
  TLOG="$STAMPS/torchvision-pip.log"
  "$VPY" -m pip install -q --no-deps "torchvision==0.28.0" >"$TLOG" 2>&1 \
    || { tail -40 "$TLOG" >&2; exit 1; }
  check_torch "torchvision"
  cp "$TVFIX" "$SITE/drqv2_torchvision_fix.py"
  printf 'import drqv2_torchvision_fix\n' >"$SITE/drqv2_torchvision_fix.pth"
  "$VPY" -c 'import torchvision, torchvision.transforms, lerobot.configs.policies, lerobot.policies.pretrained, lerobot.policies.factory, lerobot.datasets.lerobot_dataset, lerobot.rl.buffer, lerobot.rl.learner' \
    >>"$TLOG" 2>&1 || { tail -40 "$TLOG" >&2; log "LeRobot's policy/dataset/rl modules do not import"; exit 1; }
  check_torch "lerobot modules"
  # the DrQ-v2 policy plugin (lerobot_plugin/: distribution lerobot_policy_drqv2, found by
  # LeRobot's register_third_party_plugins), editable, no dependencies
  "$VPY" -m pip install -q --no-deps --no-build-isolation -e "$ROOT/lerobot_plugin" \
    >>"$TLOG" 2>&1 || { tail -40 "$TLOG" >&2; exit 1; }
  "$VPY" -c 'from lerobot.utils.import_utils import register_third_party_plugins as r; r(); from lerobot.policies.factory import get_policy_class as g; g("drqv2")' \
    >>"$TLOG" 2>&1 || { tail -40 "$TLOG" >&2; log "the drqv2 LeRobot plugin is not found"; exit 1; }
  check_torch "lerobot plugin"
  stamp_set lerobot_modules "$tkey"
fi
# <<< LeRobot policy, dataset and rl modules <<<

log "ready: $VENV"
