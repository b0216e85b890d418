"""diemcau_centre: what the centre runs to command and watch the boxes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("diemcau-centre")
except PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "0+unknown"
