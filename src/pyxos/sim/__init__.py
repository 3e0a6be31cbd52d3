"""pyxos.sim."""
