"""The replicated-object examples, each run as documented: three processes, one node
each (examples/objects/README.md), checked on what they print."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "objects"


def free_base() -> int:
    """A port base whose base+1 .. base+3 are free on loopback right now."""
    for _ in range(100):
        base = random.randrange(20000, 60000)
        socks = []
        try:
            for port in (base + 1, base + 2, base + 3):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port base")


def run_example(name: str, tmp: Path) -> list[str]:
    base = free_base()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLES / f"replicated_{name}.py"),
                str(node),
                "--base-port",
                str(base),
                "--dir",
                str(tmp / f"n{node}"),
                "--linger",
                "0.5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (1, 2, 3)
    ]
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=90)
            assert p.returncode == 0, out
            outputs.append(out.strip().splitlines()[-1])
    finally:
        for p in procs:
            p.kill()
    return outputs


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("counter", ["node {n}: counter = 300"]),
        ("lock", ["node {n}: stale write accepted=False log=9"]),
    ],
)
def test_example_prints_the_same_on_every_node(
    name: str, expected: list[str], tmp_path: Path
) -> None:
    lines = run_example(name, tmp_path)
    assert lines == [expected[0].format(n=n) for n in (1, 2, 3)]


def test_dict_example_exactly_one_cas_wins(tmp_path: Path) -> None:
    lines = run_example("dict", tmp_path)
    assert sum("won=True" in line for line in lines) == 1
    owners = {line.split("owner=")[1].split()[0] for line in lines}
    assert len(owners) == 1 and all(line.endswith("keys=16") for line in lines)


def test_queue_example_every_job_taken_once(tmp_path: Path) -> None:
    lines = run_example("queue", tmp_path)
    taken = [int(line.split("took ")[1].split()[0]) for line in lines]
    assert sum(taken) == 60
    assert all(line.endswith("total 60") for line in lines)
