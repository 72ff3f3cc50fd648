#!/usr/bin/env bash
# Debian/Ubuntu packages napari needs to open a window headless (Xvfb + Mesa OpenGL + Qt 6's xcb plugin).
# Only what is missing is installed; needs root or sudo. Other systems: install the equivalents by hand.
set -euo pipefail
PKGS=(xvfb xauth libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
      libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0
      libxcb-cursor0 libdbus-1-3 libfontconfig1)
if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "not a Debian-like system: install Xvfb, Mesa OpenGL and Qt 6's xcb libraries yourself" >&2
    exit 0
fi
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing system packages: ${missing[*]}"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
