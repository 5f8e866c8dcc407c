"""One module per method; each composes checkpoint I/O, pure ops and (maybe) calibration."""
