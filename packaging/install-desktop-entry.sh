#!/bin/sh
# Adds Fathom Desktop to the desktop's application menu for the current user, pointing at this
# unpacked folder. Run it again after moving the folder; --remove takes the entry out again.
# Nothing is written inside this folder, so replacing it with a newer version keeps the entry.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
data=${XDG_DATA_HOME:-$HOME/.local/share}
apps="$data/applications"
icons="$data/icons/hicolor"

if [ "${1:-}" = "--remove" ]; then
    rm -f "$apps/fathom-desktop.desktop" "$icons/scalable/apps/fathom-desktop.svg" \
        "$icons/256x256/apps/fathom-desktop.png"
    echo "Removed the Fathom Desktop menu entry."
    exit 0
fi

resources="$here/_internal/resources"
if [ ! -x "$here/fathom-desktop" ] || [ ! -f "$resources/fathom-desktop.desktop" ]; then
    echo "install-desktop-entry.sh: run me from the unpacked fathom-desktop folder." >&2
    exit 1
fi

mkdir -p "$apps" "$icons/scalable/apps" "$icons/256x256/apps"
cp "$resources/icons/fathom-desktop.svg" "$icons/scalable/apps/fathom-desktop.svg"
cp "$resources/icons/fathom-desktop-256.png" "$icons/256x256/apps/fathom-desktop.png"
# Desktop entries need an absolute Exec path; quote it for folders with spaces.
sed -e "s|^Exec=.*|Exec=\"$here/fathom-desktop\"|" -e "s|^TryExec=.*|TryExec=$here/fathom-desktop|" \
    "$resources/fathom-desktop.desktop" > "$apps/fathom-desktop.desktop"
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$apps" || true
echo "Added Fathom Desktop to the application menu ($apps/fathom-desktop.desktop)."
