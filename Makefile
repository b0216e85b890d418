# diemcau: the box's firmware (firmware/), the centre's tools (provisioning/).
#
#   make demo    one box, a local broker and media server: watch it join a meeting
#   make test    the whole test suite (fast tests and end-to-end ones on real parts)
#   make test-fast  only the pure, fast tests (no broker, no ffmpeg)
#   make bench   benchmarks, printed as figures
#   make lint    ruff
#   make image   the box's OS image for Raspberry Pi 4/5 (out/image/; as root)
#   make image-test  boot that image in QEMU and check it is a working box
#   make release the firmware as a release artefact, out/diemcau-<version>.tar (docs/updates.md)
#
# Every target installs what it needs first (`make setup`): Debian packages
# and a virtual environment in .venv made from the system Python, so that
# Debian's PyAV (built with SRT) is used. pyalsaaudio is built from PyPI:
# Debian's python3-alsaaudio 0.8 cannot read audio on Python 3.11.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3-venv python3-dev gcc libasound2-dev python3-av python3-numpy python3-systemd ffmpeg \
	mosquitto mosquitto-clients alsa-utils libasound2-plugins fonts-dejavu-core espeak-ng \
	shellcheck zbar-tools iproute2 libspeexdsp1 libsamplerate0 ejabberd erlang-base \
	libmpv2 python3-mpv mpv srt-tools \
	gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-ugly \
	chromium chromium-driver postgresql
# Only for `make image` and `make image-test`.
IMAGE_APT_PACKAGES := mmdebstrap qemu-user-static binfmt-support arch-test dosfstools mtools fdisk \
	e2fsprogs
IMAGE_TEST_APT_PACKAGES := qemu-system-arm socat mtools fdisk e2fsprogs
IMAGE_VERSION = $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' firmware/diemcau/__init__.py)
IMAGE_FILE = out/image/diemcau-$(IMAGE_VERSION)-arm64.img
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# The official AsyncAPI 3.0.0 JSON Schema, to validate docs/asyncapi.yaml in
# the tests: taken from the npm package @asyncapi/specs, checked by its hash.
ASYNCAPI_SPECS := 6.11.1
ASYNCAPI_SPECS_SHA256 := 01af8744dc33c0c7eb2e908f6a955319ee58b70ecadc9387d1aeb16c0cd28928
ASYNCAPI_SCHEMA := build/asyncapi/package/schemas/3.0.0.json

.PHONY: setup apt-packages demo test test-fast bench lint clean image image-test release

# The Debian packages are checked every time (a dpkg query, fast); the
# Python packages again only when a requirements file changes.
setup: apt-packages $(STAMP) $(ASYNCAPI_SCHEMA)

$(ASYNCAPI_SCHEMA):
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm; }
	@mkdir -p build/asyncapi
	@cd build/asyncapi && npm pack --silent @asyncapi/specs@$(ASYNCAPI_SPECS) >/dev/null
	@echo "$(ASYNCAPI_SPECS_SHA256)  build/asyncapi/asyncapi-specs-$(ASYNCAPI_SPECS).tgz" | sha256sum -c --quiet
	@tar -xzf build/asyncapi/asyncapi-specs-$(ASYNCAPI_SPECS).tgz -C build/asyncapi \
		package/schemas/3.0.0.json package/LICENSE package/NOTICE
	@touch $@

apt-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): firmware/pyproject.toml provisioning/pyproject.toml tests/requirements.txt | apt-packages
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@echo "setup: installing Python packages into $(VENV)"
	@PYTHONWARNINGS=ignore $(PY) -m pip install -q --disable-pip-version-check -e firmware -e provisioning -r tests/requirements.txt
	@touch $(STAMP)

demo: setup
	@$(PY) -m tests.demo

# The whole suite ends by naming its 20 slowest tests: the suite must stay well under
# 20 minutes on 2 cores, and that list says where its time goes.
test: setup
	@$(PY) -m pytest --durations=20 $(PYTEST_ARGS)

test-fast: setup
	@$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

bench: setup
	@$(PY) -m tests.bench

lint: setup
	@$(VENV)/bin/ruff check firmware provisioning tests

# The image takes a while (an arm64 chroot under emulation): it is not part
# of `make test`; CI runs it after `make test` (.ci/run, README.md).
image:
	@$(MAKE) --no-print-directory apt-packages APT_PACKAGES="$(IMAGE_APT_PACKAGES)"
	@$(SUDO) image/build.sh

# Boots out/image/ (built first if missing) in qemu-system-aarch64.
image-test: setup
	@$(MAKE) --no-print-directory apt-packages APT_PACKAGES="$(IMAGE_TEST_APT_PACKAGES)"
	@[ -f $(IMAGE_FILE) ] || $(MAKE) --no-print-directory image
	@DIEMCAU_IMAGE=$(IMAGE_FILE) $(PY) -m pytest -s tests/image/test_boot.py $(PYTEST_ARGS)
# Wheels for the machine this runs on: build on (or for) the boxes' architecture, arm64.
# The release's virtual environment takes python3-av and friends from Debian.
release: setup
	@rm -rf build/release && mkdir -p build/release/wheels
	@PYTHONWARNINGS=ignore $(PY) -m pip wheel -q --disable-pip-version-check \
		--wheel-dir build/release/wheels ./firmware
	@$(VENV)/bin/diemcau-centre release pack build/release/wheels --out out

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis out build
