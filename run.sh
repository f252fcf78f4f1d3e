#!/usr/bin/env bash
# clipcal's one entry point for set-up. Usage:
#   bash run.sh demo    set everything up, then start the dashboard on the built-in demo (http://localhost:8501)
#   bash run.sh test    set everything up (with test tools and Chromium), then run the full test suite
#   bash run.sh setup   only set up (.venv with pinned requirements; Debian packages where apt-get exists)
# Idempotent: a second run reinstalls nothing unless requirements*.txt changed (or a Debian package is broken).
# `source run.sh` only defines the functions (tests call deb_status / apt_install that way).
set -euo pipefail

# Debian packages: real photos and emoji for the demo; Chromium for the browser tests.
DEMO_DEBS=(fonts-noto-color-emoji plasma-workspace-wallpapers mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04)
TEST_DEBS=(chromium)
# A file each package must have put in place (what clipcal uses of it; clipcal/data/demo.py for the photos).
declare -A DEB_KEY_FILES=(
  [chromium]=/usr/bin/chromium
  [fonts-noto-color-emoji]=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
  [plasma-workspace-wallpapers]=/usr/share/wallpapers/BytheWater/contents/images/1280x800.jpg
  [mate-backgrounds]=/usr/share/backgrounds/mate/nature/Aqua.jpg
  [lomiri-wallpapers-16.04]=/usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg
  [lomiri-wallpapers-20.04]=/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg
)

# deb_status PKG: prints "ok", "absent", "broken (<dpkg status>)" or "files missing (<file>)".
# `dpkg -s` exits 0 for a package left "reinstreq half-installed" by an interrupted install, so the status
# letters are read instead: installed means status "i" with no error flag ("ii ", or "hi " when held).
deb_status() {
  local p=$1 st f
  st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) || st=""
  case "$st" in
    ?i" ") ;;
    ""|?n" "|?c" ") echo "absent"; return 0 ;;
    *) echo "broken (dpkg status '$st')"; return 0 ;;
  esac
  for f in ${DEB_KEY_FILES[$p]:-}; do
    [ -e "$f" ] || { echo "files missing ($f)"; return 0; }
  done
  echo "ok"
}

apt_install() {
  local missing=() broken=() p s
  for p in "$@"; do
    s=$(deb_status "$p")
    case "$s" in
      ok) ;;
      absent) missing+=("$p") ;;
      *) echo "[clipcal] Debian package $p is not properly installed: $s; reinstalling it"; broken+=("$p") ;;
    esac
  done
  [ ${#missing[@]} -eq 0 ] && [ ${#broken[@]} -eq 0 ] && return 0
  if command -v apt-get >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
    [ ${#missing[@]} -gt 0 ] && echo "[clipcal] installing Debian packages: ${missing[*]}"
    if [ ${#broken[@]} -gt 0 ]; then  # finish an interrupted dpkg run first: apt-get refuses to work until then
      $sudo dpkg --configure -a >/dev/null 2>&1 || true
    fi
    if $sudo apt-get update -qq \
        && { [ ${#broken[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends --reinstall "${broken[@]}" >/dev/null; } \
        && { [ ${#missing[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
      local still=()
      for p in "${missing[@]}" "${broken[@]}"; do
        s=$(deb_status "$p")
        [ "$s" = ok ] || still+=("$p: $s")
      done
      [ ${#still[@]} -eq 0 ] && return 0
      missing=("${still[@]}") broken=()
    fi
  fi
  echo "[clipcal] could not install Debian packages: ${missing[*]}${broken[*]:+ ${broken[*]}}." >&2
  echo "[clipcal] The dashboard still runs; the built-in demo and the page 'Data' say what is missing and how to add it." >&2
}

# venv_setup REQ [EXTRA...]: install requirement files; the stamp (named after REQ) hashes requirements.txt and
# every file given, so a change to any of them reinstalls.
venv_setup() {
  local req=$1 py
  py=$(command -v python3.11 || command -v python3)
  if [ ! -x .venv/bin/python ]; then
    echo "[clipcal] creating .venv with $($py --version)"
    "$py" -m venv .venv
  fi
  local stamp=".venv/.clipcal-$(basename "$req" .txt)"
  local want
  want=$(cat requirements.txt "$@" | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[clipcal] installing Python packages from $* (torch is large: a few minutes the first time)"
    .venv/bin/python -m pip install -q --upgrade pip
    local f args=()
    for f in "$@"; do args+=(-r "$f"); done
    .venv/bin/python -m pip install -q "${args[@]}"
    echo "$want" > "$stamp"
  fi
}

main() {
  cd "$(dirname "${BASH_SOURCE[0]}")"
  local mode=${1:-demo}
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
      venv_setup requirements-dev.txt requirements-scale.txt  # the Ray engine's tests run in CI too
      export HF_HUB_OFFLINE=1
      exec .venv/bin/python -m pytest "${@:2}"
      ;;
    *)
      echo "usage: bash run.sh demo|test|setup" >&2; exit 2 ;;
  esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
