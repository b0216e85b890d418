#!/bin/bash -e
# Start from the previous stage's root filesystem (pi-gen's convention).
if [ ! -d "${ROOTFS_DIR}" ]; then
	copy_previous
fi
