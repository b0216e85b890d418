#!/bin/bash
# mmdebstrap's customize hook (see build.sh): turns the bare Debian root in
# $1 into the box. Runs on the build machine; arm64 programs run in the
# chroot through qemu-user-static.
set -euo pipefail
root=$1
# A clean environment inside: nothing of the build machine's own settings
# (PIP_*, locale) leaks into the target, but its proxy if it has one.
in_root() {
    chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive ${http_proxy:+http_proxy="$http_proxy"} \
        ${https_proxy:+https_proxy="$https_proxy"} ${PIP_BUILD_CERT:+PIP_CERT="$PIP_BUILD_CERT"} "$@"
}

# Before the packages (mmdebstrap's essential hook): every package that
# touches the initramfs would rebuild it, minutes each under emulation.
# update-initramfs does nothing until the customize hook runs it once.
if [ "${2:-}" = essential ]; then
    in_root dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs
    ln -s /bin/true "$root/usr/sbin/update-initramfs"
    exit 0
fi
if [ "$(in_root dpkg-divert --truename /usr/sbin/update-initramfs)" != /usr/sbin/update-initramfs ]; then
    rm "$root/usr/sbin/update-initramfs"
    in_root dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
fi

# Files of our own: configuration, units, the first-boot script.
cp -a --no-preserve=ownership "$IMAGE_DIR/rootfs/." "$root/"
install -m 0644 "$IMAGE_DIR"/systemd/*.service "$root/etc/systemd/system/"

# The system user (diemcau, in video, audio, gpio) now, so that files can be
# given to it; systemd-sysusers would make the same at boot.
in_root systemd-sysusers

# raspi-firmware: the root filesystem by label; then the initramfs, once,
# and raspi-firmware's kernel hook, which puts kernel, initramfs, device
# trees, config.txt and cmdline.txt into /boot/firmware.
sed -i 's/^#\?ROOTPART=.*/ROOTPART=LABEL=RASPIROOT/' "$root/etc/default/raspi-firmware"
kernel=$(in_root linux-version list | sort -V | tail -n1)
in_root update-initramfs -c -k "$kernel"
in_root env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware "$kernel"

# The first release (install-release.sh, shared with the Raspberry Pi OS
# recipe), with the compiler it needs only for the time of the build.
release="/opt/diemcau/releases/$RELEASE_VERSION"
# systemd-resolved made /etc/resolv.conf a link to its stub, not running
# here: the build machine's resolver for the time of the build, and its
# certificate authorities for pip (a build machine behind a proxy that
# inspects TLS has that proxy's in its own list).
mv "$root/etc/resolv.conf" "$root/etc/resolv.conf.image"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/tmp/build-ca.crt"
PIP_BUILD_CERT=/tmp/build-ca.crt
# shellcheck disable=SC2086
in_root apt-get install -y -qq --no-install-recommends $BUILD_ONLY
cp -a "$IMAGE_WORK/src" "$root/tmp/diemcau-src"
install -m 0755 "$IMAGE_DIR/install-release.sh" "$root/tmp/install-release.sh"
in_root /tmp/install-release.sh /tmp/diemcau-src "$RELEASE_VERSION" /tmp/wheels
# The configuration every box starts with: it names no box; the identity the
# box enrolls for is laid over it (docs/provisioning.md). A
# diemcau/endpoint.toml on the boot partition replaces it at first boot.
in_root install -D -m 0640 -o root -g diemcau /tmp/diemcau-src/firmware/examples/endpoint-image.toml \
    /etc/diemcau/endpoint.toml

# The same wheels as a release artefact (release.json + wheels/), the file an
# update would download.
mkdir -p "$IMAGE_WORK/release/wheels"
cp "$root"/tmp/wheels/*.whl "$IMAGE_WORK/release/wheels/"
cp "$root$release/release.json" "$IMAGE_WORK/release/"
tar -C "$IMAGE_WORK/release" --sort=name --owner=0 --group=0 --numeric-owner \
    --mtime="@$SOURCE_DATE_EPOCH" -cf "$IMAGE_OUT/diemcau-$RELEASE_VERSION.tar" release.json wheels

# shellcheck disable=SC2086
in_root apt-get purge -y -qq --autoremove $BUILD_ONLY
rm -rf "$root/tmp/diemcau-src" "$root/tmp/wheels" "$root/tmp/install-release.sh" "$root/root/.cache" \
    "$root/tmp/build-ca.crt"
PIP_BUILD_CERT=
mv "$root/etc/resolv.conf.image" "$root/etc/resolv.conf"

# Services: the box, networking, time. SSH is off until the operator puts
# an authorized_keys file on the boot partition (see firstboot).
systemctl --root="$root" enable diemcau.service diemcau-firstboot.service \
    systemd-networkd.service systemd-resolved.service systemd-timesyncd.service \
    systemd-time-wait-sync.service
systemctl --root="$root" disable ssh.service
rm -f "$root"/etc/ssh/ssh_host_*

# The clock never starts earlier than this build: timesyncd sets it to its
# clock file's time when it starts, and the firmware refuses TLS and expiry
# decisions while the clock is earlier (diemcau.adapters.clock).
mkdir -p "$root/var/lib/systemd/timesync"
touch -d "@$SOURCE_DATE_EPOCH" "$root/var/lib/systemd/timesync/clock"
in_root chown -R systemd-timesync:systemd-timesync /var/lib/systemd/timesync

# Each card makes its own machine id at first boot.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

# Every package and version in the image, then the Python ones of the release.
{
    # shellcheck disable=SC2016  # dpkg-query's own ${...} fields
    in_root dpkg-query -W -f '${Package}\t${Version}\t${Architecture}\n'
    in_root "$release/bin/python" -m pip list --disable-pip-version-check --format=freeze --path \
        "$(in_root "$release/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" |
        sed 's/==/\t/; s/$/\tpypi/'
} > "$IMAGE_WORK/packages.txt"
