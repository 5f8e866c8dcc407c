"""Pure tensor functions: no file, no model. Each is tested against a float64 reference."""
