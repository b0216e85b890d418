#!/bin/bash
# make image: a bootable arm64 image for Raspberry Pi 4 and 5, from Debian's
# own packages, with the firmware installed and enabled.
#
#   image/build.sh            writes out/image/diemcau-<version>-arm64.img
#                             + .img.sha256, .packages.txt, and the release
#                             artefact diemcau-<version>.tar (arm64 wheels)
#
# Runs as root on Debian 12 (amd64 or arm64): mmdebstrap builds the root
# filesystem in a chroot, arm64 programs run through qemu-user-static and
# binfmt_misc. The two partitions are made from directories (mkfs.ext4 -d,
# mtools), so no loop device and no mount are needed.
#
# Environment: MIRROR (Debian mirror), OUT (output directory), WORK (scratch),
# APT_CACHE (downloaded packages, reused by the next build),
# SOURCE_DATE_EPOCH (the build time written into the image; default now).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
OUT=${OUT:-$repo/out/image}
WORK=${WORK:-$repo/build/image}
APT_CACHE=${APT_CACHE:-$repo/build/apt-cache}   # downloaded .debs, kept for the next build
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm
BOOT_MB=256
ROOT_SPARE_MB=768   # free room on the root filesystem before it grows to the card

version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$repo/firmware/diemcau/__init__.py")
name="diemcau-$version-arm64"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(date +%s)}

# What the box runs. raspi-firmware and linux-image-arm64 as Debian's own
# Raspberry Pi images use them (raspi-firmware's kernel hook copies the
# kernel, initramfs and device trees to /boot/firmware and writes
# cmdline.txt and config.txt there).
PACKAGES=(
    systemd systemd-sysv systemd-timesyncd systemd-resolved udev dbus kmod
    linux-image-arm64 raspi-firmware firmware-brcm80211 initramfs-tools
    wpasupplicant iproute2 ca-certificates openssh-server
    cloud-guest-utils dosfstools e2fsprogs fdisk
    python3 python3-venv python3-av python3-numpy python3-systemd
    libasound2 alsa-utils
    fonts-dejavu-core
    # The far end (docs/farend.md): libmpv and its Python binding for the TV, and the
    # software echo canceller's speexdsp and libsamplerate (docs/audio.md).
    libmpv2 python3-mpv libspeexdsp1 libsamplerate0
)
# Only while building the release (pyalsaaudio has no arm64 wheel on PyPI);
# purged before the image is written.
BUILD_ONLY="gcc libc6-dev libasound2-dev python3-dev"

need() { command -v "$1" >/dev/null || { echo "image: $1 is missing (make image installs it)" >&2; exit 1; }; }
for tool in mmdebstrap mkfs.ext4 mkfs.vfat mcopy sfdisk; do need "$tool"; done
[ "$(id -u)" = 0 ] || { echo "image: run as root (the chroot needs it)" >&2; exit 1; }
if [ "$(dpkg --print-architecture)" != arm64 ]; then
    [ -d /proc/sys/fs/binfmt_misc ] && ! mountpoint -q /proc/sys/fs/binfmt_misc &&
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64 2>/dev/null || true
    arch-test arm64 >/dev/null || {
        echo "image: this machine cannot run arm64 programs (qemu-user-static + binfmt_misc)" >&2; exit 1; }
fi

rm -rf "$WORK"
mkdir -p "$WORK" "$OUT" "$APT_CACHE"
root="$WORK/root"
# The firmware's source, without what a development checkout adds to it.
mkdir -p "$WORK/src"
tar -C "$repo" --exclude='*.egg-info' --exclude=__pycache__ --exclude=build -cf - firmware docs |
    tar -C "$WORK/src" -xf -

started=$(date +%s)
export IMAGE_DIR="$here" IMAGE_WORK="$WORK" IMAGE_OUT="$OUT" RELEASE_VERSION="$version" BUILD_ONLY
mmdebstrap --mode=root --architectures=arm64 --variant=minbase \
    --components="main contrib non-free-firmware" \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --skip=download/empty --skip=essential/unlink \
    --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\"" \
    --setup-hook="sync-in $APT_CACHE /var/cache/apt/archives" \
    --essential-hook="$here/customize.sh \"\$1\" essential" \
    --customize-hook="$here/customize.sh \"\$1\"" \
    --customize-hook="sync-out /var/cache/apt/archives $APT_CACHE" \
    "$SUITE" "$root" \
    "deb $MIRROR $SUITE main contrib non-free-firmware" \
    "deb $MIRROR $SUITE-updates main contrib non-free-firmware" \
    "deb $SECURITY_MIRROR $SUITE-security main contrib non-free-firmware"
echo "image: root filesystem built in $(( $(date +%s) - started )) s"

"$here/assemble.sh" "$root" "$OUT/$name.img" "$BOOT_MB" "$ROOT_SPARE_MB"
cp "$WORK/packages.txt" "$OUT/$name.packages.txt"
(cd "$OUT" && sha256sum "$name.img" > "$name.img.sha256")
echo "image: $OUT/$name.img ($(du -h --apparent-size "$OUT/$name.img" | cut -f1)) in $(( $(date +%s) - started )) s"
