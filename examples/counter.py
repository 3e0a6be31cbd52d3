"""A replicated counter: a whole pyxos application, written outside the package.

Run it as a 3-node cluster:  pyxos cluster start --app examples.counter:Counter
Commands: b"incr", b"add N". Query: b"get". Every result is the value, in decimal.
"""

from typing import Any


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def validate(self, command: bytes) -> str | None:  # garbage never reaches the log
        op, _, n = command.partition(b" ")
        ok = command == b"incr" or (op == b"add" and n.removeprefix(b"-").isdigit())
        return None if ok else f"not a counter command: {command[:40]!r}"

    def apply(self, command: bytes) -> bytes:  # deterministic: state and command only
        self.value += 1 if command == b"incr" else int(command.split()[1])
        return str(self.value).encode()

    def query(self, q: bytes) -> bytes:
        return str(self.value).encode()

    def snapshot(self) -> bytes:
        return str(self.value).encode()

    def restore(self, data: bytes) -> None:
        self.value = int(data)

    # Optional JSON codec, for POST /v1/app/command ("incr", {"add": 5}) and /v1/app/query.
    def json_command(self, doc: Any) -> bytes:
        return b"incr" if doc == "incr" else b"add %d" % int(doc["add"])

    def json_query(self, doc: Any) -> bytes:
        return b"get"

    def json_result(self, result: bytes) -> int:
        return int(result)
