"""``pyxos view``: a simulated run's trace as a picture (docs/trace-format.md)."""
