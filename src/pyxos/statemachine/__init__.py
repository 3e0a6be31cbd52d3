"""pyxos.statemachine."""
