#!/bin/bash -e
# The box on Raspberry Pi OS: the same files and first release as `make image`
# (image/build.sh), minus what Raspberry Pi OS does its own way (networking,
# fstab). Runs on the build machine; ROOTFS_DIR is the target's root.
REPO="$(cd "${STAGE_DIR}/../../.." && pwd)"
IMAGE="${REPO}/image"
VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "${REPO}/firmware/diemcau/__init__.py")"

install -D -m 644 "${IMAGE}/rootfs/usr/lib/sysusers.d/diemcau.conf" "${ROOTFS_DIR}/usr/lib/sysusers.d/diemcau.conf"
install -D -m 644 "${IMAGE}/rootfs/etc/systemd/journald.conf.d/diemcau.conf" "${ROOTFS_DIR}/etc/systemd/journald.conf.d/diemcau.conf"
install -D -m 644 "${IMAGE}/rootfs/etc/systemd/system/systemd-time-wait-sync.service.d/diemcau.conf" \
	"${ROOTFS_DIR}/etc/systemd/system/systemd-time-wait-sync.service.d/diemcau.conf"
install -D -m 644 "${IMAGE}/rootfs/etc/udev/rules.d/60-diemcau-gpio.rules" "${ROOTFS_DIR}/etc/udev/rules.d/60-diemcau-gpio.rules"
install -D -m 755 "${IMAGE}/rootfs/usr/libexec/diemcau/firstboot" "${ROOTFS_DIR}/usr/libexec/diemcau/firstboot"
install -m 644 "${IMAGE}/systemd/diemcau.service" "${IMAGE}/systemd/diemcau-firstboot.service" "${ROOTFS_DIR}/etc/systemd/system/"

rm -rf "${ROOTFS_DIR}/tmp/diemcau-src"
mkdir -p "${ROOTFS_DIR}/tmp/diemcau-src"
cp -a "${REPO}/firmware" "${REPO}/docs" "${ROOTFS_DIR}/tmp/diemcau-src/"
install -m 755 "${IMAGE}/install-release.sh" "${ROOTFS_DIR}/tmp/install-release.sh"

touch -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" "${ROOTFS_DIR}/tmp/diemcau-build-time"

on_chroot << CHROOT
systemd-sysusers
/tmp/install-release.sh /tmp/diemcau-src "${VERSION}" /tmp/diemcau-wheels
apt-get purge -y --autoremove gcc libc6-dev libasound2-dev python3-dev
systemctl enable diemcau.service diemcau-firstboot.service systemd-timesyncd.service systemd-time-wait-sync.service
mkdir -p /var/lib/systemd/timesync
touch -r /tmp/diemcau-build-time /var/lib/systemd/timesync/clock
chown -R systemd-timesync:systemd-timesync /var/lib/systemd/timesync
rm -rf /tmp/diemcau-src /tmp/diemcau-wheels /tmp/install-release.sh /tmp/diemcau-build-time
CHROOT
