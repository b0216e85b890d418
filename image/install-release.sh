#!/bin/sh
# Installs the first release inside the target system (run in its chroot),
# the way an update installs one: a virtual environment over the
# distribution's python3-av, numpy, systemd (and python3-picamera2 on
# Raspberry Pi OS), the firmware and its PyPI dependencies from a wheelhouse;
# then "current" and "committed" point at it and the release is never
# modified again.
#
#   install-release.sh SRC VERSION WHEELHOUSE
#
# SRC holds firmware/ and docs/. The wheelhouse is built here, in the target,
# so every wheel is for the target's architecture (pyalsaaudio has no arm64
# wheel on PyPI: it is compiled, which needs gcc, libasound2-dev, python3-dev).
set -eu
src=$1 version=$2 wheels=$3
release=/opt/diemcau/releases/$version

python3 -m venv --system-site-packages /tmp/wheel-venv
# --use-pep517: pyalsaaudio has only a setup.py, and this pip has no "wheel".
/tmp/wheel-venv/bin/pip wheel -q --disable-pip-version-check --use-pep517 --wheel-dir "$wheels" "$src/firmware"
rm -rf /tmp/wheel-venv /root/.cache/pip

python3 -m venv --system-site-packages "$release"
"$release/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$wheels" diemcau
cp -a "$src/docs" "$release/docs"
printf '{"version": "%s"}\n' "$version" > "$release/release.json"
# As `diemcau release install --activate` leaves a first release (docs/updates.md):
# the mark that says it is whole, written last, then "current" and "committed"
# both on it (the unit runs the committed release's `release check`).
printf '%s\n' "$version" > "$release/.installed"
ln -sfn "releases/$version" /opt/diemcau/current
ln -sfn "releases/$version" /opt/diemcau/committed

# The release belongs to root: the service user cannot change it, but may
# add new releases beside it and switch "current" (updates).
chown -R root:root "$release"
chmod -R a-w "$release"
chown diemcau:diemcau /opt/diemcau /opt/diemcau/releases
chown -h diemcau:diemcau /opt/diemcau/current /opt/diemcau/committed
