"""``pyxos bench``: the one benchmark entry point, pyxos side by side with other systems.

Modules: ``histogram`` (an HDR-style latency histogram), ``results`` (one measured case,
medians, the ratio table, JSON and plot), ``loadgen`` (closed-loop HTTP and gRPC load,
process CPU), ``systems`` (how each system is started and loaded: pyxos, etcd, the
ceiling), ``pysyncobj`` (the PySyncObj driver and its node processes) and ``kv`` (the
interleaved sweep behind ``pyxos bench kv``). See docs/architecture.md for the layers:
this package may start node processes but never imports the server or simulator.
"""
