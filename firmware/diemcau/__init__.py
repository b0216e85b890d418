"""diemcau: the endpoint firmware."""

__version__ = "0.1.0"
