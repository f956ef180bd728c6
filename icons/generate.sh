#!/bin/sh
# Regenerates every icon in this directory from a vector description of the
# Airlock glyph: a shield with a vertical airlock door (two doors split by a
# seam) and a status dot for the tray variants.
#
# Needs ImageMagick 6 or 7 (`apt-get install imagemagick`). Usage:
#   icons/generate.sh            # writes into the directory of this script
# The output is committed; rerun only when the design changes.
set -eu

here=$(cd "$(dirname "$0")" && pwd)

# Pick a real ImageMagick: `magick` (IM7) or `convert` (IM6). Prefer the
# distribution binary over any wrapper earlier on PATH.
if command -v magick >/dev/null 2>&1; then
    IM="magick"
elif [ -x /usr/bin/convert ]; then
    IM="/usr/bin/convert"
elif command -v convert >/dev/null 2>&1; then
    IM="convert"
else
    echo "error: ImageMagick not found; install it (e.g. apt-get install imagemagick) and rerun" >&2
    exit 1
fi
if ! "$IM" -version 2>/dev/null | grep -q ImageMagick; then
    echo "error: '$IM' is not ImageMagick; install it (e.g. apt-get install imagemagick) and rerun" >&2
    exit 1
fi

# Everything is drawn on a 512x512 canvas, then downscaled (good antialiasing).
S=512
SHIELD="path 'M 256,28 L 452,96 L 452,236 C 452,360 372,440 256,486 C 140,440 60,360 60,236 L 60,96 Z'"
INNER="path 'M 256,70 L 414,124 L 414,236 C 414,338 350,404 256,444 C 162,404 98,338 98,236 L 98,124 Z'"
# The airlock door: a rounded portal with a vertical seam and two handles.
DOOR="roundrectangle 176,150 336,380 36,36"
SEAM="line 256,158 256,372"

# $1 = shield colour, $2 = inner colour, $3 = door colour, $4 = output (512px)
master() {
    "$IM" -size ${S}x${S} xc:none \
        -fill "$1" -draw "$SHIELD" \
        -fill "$2" -draw "$INNER" \
        -fill "$3" -draw "$DOOR" \
        -stroke "$2" -strokewidth 14 -draw "$SEAM" \
        -stroke none -fill "$2" \
        -draw "circle 232,265 232,279" -draw "circle 280,265 280,279" \
        "$4"
}

# $1 = master, $2 = dot colour (or none), $3 = output 32x32 png
tray() {
    if [ "$2" = none ]; then
        "$IM" "$1" -resize 32x32 -strip "$3"
    else
        "$IM" "$1" \
            -fill white -draw "circle 400,400 400,296" \
            -fill "$2" -draw "circle 400,400 400,312" \
            -resize 32x32 -strip "$3"
    fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# App icon: teal shield, dark inner field, light door.
master "#0f9d8a" "#12343b" "#e8f6f3" "$tmp/app.png"
# Tray "off": greyscale glyph, no dot.
master "#8a9096" "#2b2f33" "#d5d8db" "$tmp/off.png"

"$IM" "$tmp/app.png" -strip PNG32:"$here/icon.png"
"$IM" "$tmp/app.png" -resize 32x32 -strip PNG32:"$here/32x32.png"
"$IM" "$tmp/app.png" -resize 128x128 -strip PNG32:"$here/128x128.png"
"$IM" "$tmp/app.png" -resize 256x256 -strip PNG32:"$here/128x128@2x.png"
"$IM" "$tmp/app.png" -define icon:auto-resize=256,128,64,48,32,16 "$here/icon.ico"

# macOS .icns: PNG payloads in an icns container (written by Python, since
# ImageMagick cannot write .icns). OSType -> pixel size.
"$IM" "$tmp/app.png" -resize 64x64 -strip PNG32:"$tmp/64.png"
if command -v python3 >/dev/null 2>&1; then
    python3 - "$here" "$tmp" <<'PY'
import struct, sys
here, tmp = sys.argv[1], sys.argv[2]
entries = [
    (b"ic11", f"{here}/32x32.png"),       # 16x16@2x
    (b"ic12", f"{tmp}/64.png"),           # 32x32@2x
    (b"ic07", f"{here}/128x128.png"),     # 128x128
    (b"ic13", f"{here}/128x128@2x.png"),  # 128x128@2x
    (b"ic08", f"{here}/128x128@2x.png"),  # 256x256
    (b"ic14", f"{here}/icon.png"),        # 256x256@2x
    (b"ic09", f"{here}/icon.png"),        # 512x512
]
body = b""
for ostype, path in entries:
    with open(path, "rb") as f:
        data = f.read()
    body += ostype + struct.pack(">I", len(data) + 8) + data
with open(f"{here}/icon.icns", "wb") as f:
    f.write(b"icns" + struct.pack(">I", len(body) + 8) + body)
PY
else
    echo "warning: python3 not found, icon.icns not regenerated" >&2
fi

tray "$tmp/off.png" none "$tmp/t-off.png"
tray "$tmp/app.png" "#f2b01e" "$tmp/t-connecting.png"
tray "$tmp/app.png" "#2ecc71" "$tmp/t-connected.png"
tray "$tmp/app.png" "#e5484d" "$tmp/t-attention.png"
for v in off connecting connected attention; do
    "$IM" "$tmp/t-$v.png" PNG32:"$here/tray-$v.png"
done

echo "icons written to $here"
