"""pyxos: Paxos consensus for Python.

Basic (single-decree) Paxos, a Multi-Paxos replicated state machine, and a replicated,
linearizable key-value store built on it. The protocol lives in :mod:`pyxos.core` as a
pure, sans-IO object; the simulator, the storage layer and the network runtime drive it.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
