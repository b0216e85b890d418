"""Fixtures shared by the end-to-end tests; a module may define its own ``box`` instead."""

from __future__ import annotations

import pytest

from tests.harness.box import start_box


@pytest.fixture
def box(make_box, observer, tmp_path):  # noqa: ANN001, ANN201
    """One box from :func:`start_box`; alive at the end."""
    b = start_box(make_box, observer, tmp_path)
    yield b
    assert b.running, "the box died"
