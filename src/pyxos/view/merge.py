"""Several real nodes' traces (``pyxos serve --trace``) made into one run to view.

Theory of operation
-------------------
A real node writes only its own side (``pyxos.server.tracefile``): what it sent and
received, each message with a digest of its content (``h``), and its own state. This
module merges the files of the nodes of one cluster into the simulator's shape: all
records in wall-clock order (the nodes of one machine share that clock), and every
``send`` given a message id ``m`` that the matching ``recv`` on the other side takes,
matched by (sender, receiver, digest), oldest send first. A receipt whose send is in
no file (that node was not traced) keeps no id; a send whose receipt is in no file
is drawn as still in flight. Clients (any id not a member) share one lifeline, 1000.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

from pyxos.sim.traceout import TRACE_FORMAT, TRACE_VERSION

__all__ = ["CLIENTS", "merge_node_traces"]

CLIENTS = 1000
"""The one lifeline every client of a real cluster is drawn on."""


def _read(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0]) if lines else {}
    records = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number != len(lines):  # only a node killed mid-line tears its last line
                raise ValueError(f"{path}:{number}: not JSON") from None
    return header, records


def merge_node_traces(paths: list[Path]) -> bytes:
    """One trace file's bytes (header line, then records) from the files of real nodes."""
    replicas: set[int] = set()
    tagged: list[tuple[float, int, int, dict[str, Any]]] = []
    for n, path in enumerate(paths):
        header, records = _read(path)
        replicas.update(int(x) for x in header.get("replicas", []))
        for k, record in enumerate(records):
            tagged.append((float(record.get("t", 0.0)), n, k, record))
    tagged.sort(key=lambda x: (x[0], x[1], x[2]))
    queues: dict[tuple[Any, Any, Any], deque[int]] = defaultdict(deque)
    next_m = 0
    clients = False
    out: list[dict[str, Any]] = []
    for t, _, _, record in tagged:
        record = dict(record)
        for key in ("src", "dst"):
            who = record.get(key)
            if isinstance(who, int) and who not in replicas:
                record[key] = CLIENTS
                clients = True
        kind = record.get("kind")
        if kind == "send":
            record["m"] = next_m
            queues[(record.get("src"), record.get("dst"), record.get("h"))].append(next_m)
            next_m += 1
        elif kind == "recv":
            queue = queues.get((record.get("src"), record.get("dst"), record.get("h")))
            record["m"] = queue.popleft() if queue else None
        record["i"] = len(out)
        record["t"] = t
        out.append({"i": record.pop("i"), **record})
    start = out[0]["t"] if out else 0.0
    for record in out:  # seconds since the first record, like a simulated run
        record["t"] = round(record["t"] - start, 6)
    header_out = {
        "format": TRACE_FORMAT,
        "version": TRACE_VERSION,
        "source": "serve",
        "seed": None,
        "replicas": sorted(replicas),
        "clients": [CLIENTS] if clients else [],
        "files": [p.name for p in paths],
        "start_time": start,
        "events": len(out),
    }
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    return ("\n".join(dumps(x) for x in [header_out, *out]) + "\n").encode()
