"""Exhaustive model checking of small scopes, on the real core objects.

See :mod:`pyxos.model.engine` for the states, actions, checks and reductions,
:mod:`pyxos.model.synod` and :mod:`pyxos.model.replica` for the two scopes, and
docs/architecture.md for where the model checker sits among the layers.
"""
