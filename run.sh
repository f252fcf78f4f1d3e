#!/usr/bin/env bash
# clipcal's one entry point for set-up. Usage:
#   bash run.sh demo    set everything up, then start the dashboard on the built-in demo (http://localhost:8501)
#   bash run.sh test    set everything up (with test tools and Chromium), then run the full test suite
#   bash run.sh setup   only set up (.venv with pinned requirements; Debian packages where apt-get exists)
# Idempotent: a second run reinstalls nothing unless requirements*.txt changed.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
mode=${1:-demo}

# Debian packages: real photos and emoji for the demo; Chromium for the browser tests.
DEMO_DEBS=(fonts-noto-color-emoji plasma-workspace-wallpapers mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04)
TEST_DEBS=(chromium)

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if command -v apt-get >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
    echo "[clipcal] installing Debian packages: ${missing[*]}"
    if $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
      return 0
    fi
  fi
  echo "[clipcal] could not install Debian packages: ${missing[*]}." >&2
  echo "[clipcal] The dashboard still runs; the built-in demo and the page 'Data' say what is missing and how to add it." >&2
}

venv_setup() {
  local req=$1 py
  py=$(command -v python3.11 || command -v python3)
  if [ ! -x .venv/bin/python ]; then
    echo "[clipcal] creating .venv with $($py --version)"
    "$py" -m venv .venv
  fi
  local stamp=".venv/.clipcal-$(basename "$req" .txt)"
  local want
  want=$(cat requirements.txt "$req" | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[clipcal] installing Python packages from $req (torch is large: a few minutes the first time)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r "$req"
    echo "$want" > "$stamp"
  fi
}

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-0}
# passive OpenMP waiting: spinning torch threads starve each other on a busy CPU (clipcal/__init__.py)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
case "$mode" in
  setup)
    apt_install "${DEMO_DEBS[@]}"
    venv_setup requirements.txt
    ;;
  demo)
    apt_install "${DEMO_DEBS[@]}"
    venv_setup requirements.txt
    exec .venv/bin/python -m streamlit run app.py "${@:2}"
    ;;
  test)
    apt_install "${DEMO_DEBS[@]}" "${TEST_DEBS[@]}"
    venv_setup requirements-dev.txt
    export HF_HUB_OFFLINE=1
    exec .venv/bin/python -m pytest "${@:2}"
    ;;
  *)
    echo "usage: bash run.sh demo|test|setup" >&2; exit 2 ;;
esac
