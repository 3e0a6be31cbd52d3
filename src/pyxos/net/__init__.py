"""pyxos.net."""
