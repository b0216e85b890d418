"""diemcau_centre: what the centre runs to command and watch the boxes."""
