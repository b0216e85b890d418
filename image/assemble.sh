#!/bin/bash
# The card image from a root directory, without loop devices or mounts:
#   partition 1  FAT32 "RASPIFIRM"  what is in ROOT/boot/firmware (the Pi's
#                firmware, kernel, config.txt, cmdline.txt; the operator's
#                files such as diemcau-enroll.toml go here too)
#   partition 2  ext4 "RASPIROOT"   the rest; grown to the card at first boot
#
#   assemble.sh ROOT IMAGE BOOT_MB SPARE_MB
set -euo pipefail
root=$1 image=$2 boot_mb=$3 spare_mb=$4
work=$(mktemp -d "$(dirname "$image")/.assemble.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The boot partition's files leave the root tree (there it is a mount point).
mkdir "$work/boot"
find "$root/boot/firmware" -mindepth 1 -maxdepth 1 -exec mv -t "$work/boot" {} +
mkfs.vfat -F 32 -n RASPIFIRM -C "$work/boot.img" $((boot_mb * 1024)) >/dev/null
mcopy -s -p -m -i "$work/boot.img" "$work/boot/"* ::/

used_mb=$(du -sm "$root" | cut -f1)
root_mb=$((used_mb + used_mb / 5 + spare_mb))   # ext4's own tables need room too
mkfs.ext4 -q -F -L RASPIROOT -E root_owner=0:0 -d "$root" "$work/root.img" "${root_mb}M"

start_mb=4   # the first partition 4 MiB in: aligned to SD cards' erase blocks
rm -f "$image"
truncate -s $(( (start_mb + boot_mb + root_mb) * 1024 * 1024 )) "$image"
sfdisk -q "$image" <<TABLE
label: dos
unit: sectors
start=$((start_mb * 2048)), size=$((boot_mb * 2048)), type=c
start=$(((start_mb + boot_mb) * 2048)), size=$((root_mb * 2048)), type=83
TABLE
dd if="$work/boot.img" of="$image" bs=1M seek=$start_mb conv=notrunc,sparse status=none
dd if="$work/root.img" of="$image" bs=1M seek=$((start_mb + boot_mb)) conv=notrunc,sparse status=none
