"""``python -m pyxos.server``: run one node from a TOML config file.

Theory of operation
-------------------
Like uvicorn's ``main``: this only builds a ``Config`` (file plus command-line
overrides) and calls ``run``. A bad configuration, a port that cannot be bound, or a
data directory that cannot be used (a file in the way, a read-only file system, no
permission) prints one line and exits with status 2; a node that cannot start otherwise (another
node's data directory) prints one line and exits with status 1. Neither prints a
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from pyxos.server.config import Config, ConfigError
from pyxos.server.disk import DataDirUnusable, NodeStartupError, PortUnavailable
from pyxos.server.node import NodeFailed
from pyxos.server.peerbook import JoinRefused
from pyxos.server.process import run
from pyxos.server.tracefile import NodeTracer
from pyxos.statemachine.loader import make_app
from pyxos.storage.durable import DurableStateError
from pyxos.storage.wal import StorageError

__all__ = ["JsonFormatter", "main"]


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the node; return the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m pyxos.server", description=__doc__)
    parser.add_argument("--config", required=True, help="TOML config file")
    parser.add_argument("--node-id", type=int, default=None, help="override node_id")
    parser.add_argument("--data-dir", default=None, help="override data_dir")
    parser.add_argument("--client-port", type=int, default=None, help="override client_port")
    parser.add_argument("--http-port", type=int, default=None, help="override http_port")
    parser.add_argument(
        "--app",
        default=None,
        help="override app: the application as module:Factory (default: the KV store); "
        "the current directory is on the import path",
    )
    parser.add_argument(
        "--q1", type=int, default=None, help="override the phase-1 (election) quorum size"
    )
    parser.add_argument(
        "--q2", type=int, default=None, help="override the phase-2 (accept) quorum size"
    )
    parser.add_argument(
        "--init",
        action="store_true",
        help="initialize an empty data directory (only for a node new to the cluster)",
    )
    parser.add_argument(
        "--join",
        default=None,
        metavar="URL",
        help="join a running cluster through the member whose HTTP API is at URL "
        "(host:port): a new node id, added first with 'pyxos member add' "
        "(docs/membership.md, Operations); later starts need no --join",
    )
    parser.add_argument(
        "--chaos-clock",
        type=float,
        default=1.0,
        metavar="RATE",
        help="testing only: this node's clock runs at RATE times real time (0.5-2)",
    )
    parser.add_argument(
        "--trace",
        default=None,
        metavar="FILE",
        help="write this node's side of the run to FILE (docs/trace-format.md; pyxos view)",
    )
    parser.add_argument(
        "--trace-max-mb",
        type=float,
        default=64.0,
        metavar="MB",
        help="stop writing the trace after this many megabytes (default 64)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines, or one JSON object per line (for log shippers)",
    )
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    if args.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    try:
        if os.getcwd() not in sys.path and "" not in sys.path:
            # Like uvicorn's --app-dir ".": `--app examples.counter:Counter` finds the
            # module where the node was started, whatever the entry point.
            sys.path.insert(0, os.getcwd())
        config = Config.load(
            args.config,
            app=args.app,
            node_id=args.node_id,
            data_dir=args.data_dir,
            client_port=args.client_port,
            http_port=args.http_port,
            q1=args.q1,
            q2=args.q2,
        )
        try:  # the factory runs and makes an application, before --init touches the disk
            make_app(config.app)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    except ConfigError as e:
        print(f"pyxos: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        if not 0.5 <= args.chaos_clock <= 2.0:
            raise ConfigError(f"--chaos-clock must lie in [0.5, 2], not {args.chaos_clock}")
        tracer = None
        if args.trace is not None:
            if not args.trace_max_mb > 0:
                raise ConfigError(f"--trace-max-mb must be positive, not {args.trace_max_mb}")
            try:
                tracer = NodeTracer(
                    args.trace,
                    config.node_id,
                    config.peers,
                    max_bytes=int(args.trace_max_mb * 1024 * 1024),
                )
            except OSError as e:
                raise ConfigError(f"--trace {args.trace}: {e.strerror or e}") from e
        run(
            config,
            initialize=args.init,
            clock_rate=args.chaos_clock,
            trace=tracer,
            join=args.join,
        )
    except (PortUnavailable, DataDirUnusable, ConfigError, JoinRefused) as e:
        print(f"pyxos: configuration error: {e}", file=sys.stderr)
        return 2
    except (NodeStartupError, DurableStateError, StorageError, NodeFailed) as e:
        print(f"pyxos: node {config.node_id}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
