"""The one Ready driver (``pyxos.driver``), alone with recording effects; and the proof
that the server and the simulator both run it (docs/architecture.md, *The core's
contract*)."""

from __future__ import annotations

import ast
from pathlib import Path

from pyxos.core.ballot import Ballot
from pyxos.core.messages import Commit, Entry, Nack
from pyxos.core.ready import Persist, Ready, Send
from pyxos.driver import ReadyDriver

B = Ballot(1, 1)
SRC = Path(__file__).resolve().parents[1] / "src" / "pyxos"


class ScriptedNode:
    node_id = 1

    def __init__(self) -> None:
        self.script: list[Ready] = []
        self.advances = 0
        self.durable: list[int] = []
        self.failed: list[int] = []

    def step(self, msg: object) -> None:
        pass

    def tick(self, now: float) -> None:
        pass

    def ready(self) -> Ready:
        return self.script.pop(0) if self.script else Ready()

    def advance(self) -> None:
        self.advances += 1

    def next_deadline(self) -> float | None:
        return 5.0

    def snapshot_durable(self, slot: int) -> None:
        self.durable.append(slot)

    def snapshot_failed(self, slot: int) -> None:
        self.failed.append(slot)


class Recorder:
    """Effects that record, in order, what the driver asked for."""

    def __init__(self) -> None:
        self.log: list[tuple[str, object]] = []
        self.fail_write = False
        self.checkpoint_at: int | None = None
        self.snapshots_complete = True
        self.driver: ReadyDriver | None = None

    def write(self, persist: Persist) -> None:
        if self.fail_write:
            raise OSError("EIO")
        self.log.append(("write", persist))

    def start_fsync(self) -> None:
        self.log.append(("fsync", None))

    def send(self, send: Send) -> None:
        self.log.append(("send", send.to[0]))

    def committed(self, entries: list[Entry]) -> None:
        self.log.append(("committed", len(entries)))

    def save_snapshot(self, slot: int, data: bytes) -> None:
        self.log.append(("snapshot", slot))
        if self.snapshots_complete:
            assert self.driver is not None
            self.driver.snapshot_saved(slot)

    def checkpoint(self) -> int | None:
        self.log.append(("checkpoint", self.checkpoint_at))
        return self.checkpoint_at

    def truncate(self, index: int) -> None:
        self.log.append(("truncate", index))

    def wake_at(self, deadline: float | None) -> None:
        self.log.append(("wake", deadline))

    def fail(self, error: BaseException) -> None:
        self.log.append(("fail", repr(error)))


def nack(dst: int) -> Send:
    return Send((dst,), Nack(1, B, B))


def commit(dst: int) -> Send:
    return Send((dst,), Commit(1, B, 0))


def make() -> tuple[ReadyDriver, ScriptedNode, Recorder]:
    node, effects = ScriptedNode(), Recorder()
    driver = ReadyDriver(effects, node)
    effects.driver = driver
    return driver, node, effects


def kinds(effects: Recorder) -> list[tuple[str, object]]:
    return [(k, v if k != "write" else None) for k, v in effects.log]


def test_persist_then_send_now_then_replies_after_the_fsync_then_advance() -> None:
    driver, node, effects = make()
    node.script.append(
        Ready(
            Persist(promised=B),
            send_now=[commit(2)],
            send_after_sync=[nack(3)],
            committed=[Entry(0, B, b"x")],
        )
    )
    driver.drive()
    assert kinds(effects) == [
        ("write", None),
        ("send", 2),
        ("committed", 1),
        ("fsync", None),
        ("wake", 5.0),
    ]
    assert node.advances == 1 and driver.waiting_sends() == 1
    driver.fsync_done()
    assert effects.log[-1] == ("send", 3)
    assert driver.synced == driver.written == 1 and not driver.fsync_in_flight


def test_one_fsync_in_flight_covers_every_write_before_it_started() -> None:
    driver, node, effects = make()
    for dst in (3, 4, 5):
        node.script.append(Ready(Persist(promised=B), send_after_sync=[nack(dst)]))
        driver.drive()
    assert [k for k, _ in effects.log].count("fsync") == 1  # 2 and 3 wait for the next
    driver.fsync_done()  # covered write 1 only
    assert [v for k, v in effects.log if k == "send"] == [3]
    assert effects.log[-1] == ("fsync", None), "the next fsync starts at once"
    driver.fsync_done()  # covers writes 2 and 3 together
    assert [v for k, v in effects.log if k == "send"] == [3, 4, 5]
    assert driver.counters.fsyncs == 2


def test_a_reply_without_persist_never_overtakes_a_waiting_one() -> None:
    driver, node, effects = make()
    node.script.append(Ready(Persist(promised=B), send_after_sync=[nack(3)]))
    node.script.append(Ready(send_after_sync=[nack(4)]))
    driver.drive()
    driver.drive()
    assert [v for k, v in effects.log if k == "send"] == []
    driver.fsync_done()
    assert [v for k, v in effects.log if k == "send"] == [3, 4]


def test_the_ack_before_sync_mutant_sends_replies_before_the_fsync() -> None:
    node, effects = ScriptedNode(), Recorder()
    driver = ReadyDriver(effects, node, ack_before_sync=True)
    node.script.append(Ready(Persist(promised=B), send_after_sync=[nack(3)]))
    driver.drive()
    assert ("send", 3) in effects.log and not driver.waiting


def test_a_failed_write_is_fatal_and_nothing_leaves() -> None:
    driver, node, effects = make()
    effects.fail_write = True
    node.script.append(Ready(Persist(promised=B), send_now=[commit(2)]))
    driver.drive()
    assert [k for k, _ in effects.log] == ["fail"]
    assert node.advances == 0, "a Ready half carried out is not advanced"
    node.script.append(Ready(send_now=[commit(2)]))
    driver.drive()
    assert [k for k, _ in effects.log] == ["fail"], "a failed driver does nothing more"


def test_a_failed_fsync_is_fatal_and_the_waiting_replies_never_leave() -> None:
    driver, node, effects = make()
    node.script.append(Ready(Persist(promised=B), send_after_sync=[nack(3)]))
    driver.drive()
    driver.fsync_failed(OSError("EIO"))
    driver.fsync_done()  # a stray completion changes nothing
    assert ("send", 3) not in effects.log and effects.log[-1][0] == "fail"


def test_a_postponed_fsync_keeps_the_replies_waiting_until_a_retry_completes() -> None:
    # A full disk (server/diskfull.py): not fatal, nothing more durable, nothing leaves.
    driver, node, effects = make()
    node.script.append(Ready(Persist(promised=B), send_after_sync=[nack(3)]))
    driver.drive()
    driver.fsync_postponed()
    assert driver.failed is None and not driver.fsync_in_flight and driver.synced == 0
    assert ("send", 3) not in effects.log
    driver.retry_fsync()
    assert [k for k, _ in effects.log].count("fsync") == 2 and driver.fsync_in_flight
    driver.retry_fsync()  # one in flight at a time
    assert [k for k, _ in effects.log].count("fsync") == 2
    driver.fsync_done()
    assert ("send", 3) in effects.log and driver.synced == driver.written == 1


def test_snapshot_after_advance_then_compaction_then_checkpoint_and_truncation() -> None:
    driver, node, effects = make()
    effects.checkpoint_at = 17
    node.script.append(Ready(snapshot=(40, b"state")))
    driver.drive()
    assert node.advances == 1 and node.durable == [40]
    assert [k for k, _ in effects.log] == ["snapshot", "checkpoint", "fsync", "wake"]
    assert driver.written == 1, "the checkpoint is numbered like any write"
    driver.fsync_done()
    assert effects.log[-1] == ("truncate", 17), "segments go once the checkpoint is durable"


def test_one_snapshot_write_at_a_time_and_the_newest_waiting_one_wins() -> None:
    driver, node, effects = make()
    effects.snapshots_complete = False
    for slot in (10, 20, 30):
        node.script.append(Ready(snapshot=(slot, b"s")))
        driver.drive()
    assert [v for k, v in effects.log if k == "snapshot"] == [10]
    driver.snapshot_failed(10)  # changes nothing; the newest waiting one goes next
    assert node.durable == [] and node.failed == [10], "the node is told (a rebuild retakes)"
    assert [v for k, v in effects.log if k == "snapshot"] == [10, 30]
    driver.snapshot_saved(30)
    assert node.durable == [30] and driver.counters.snapshots == 1


def test_a_closed_driver_starts_no_fsync() -> None:
    driver, node, effects = make()
    driver.close()
    node.script.append(Ready(Persist(promised=B), send_after_sync=[nack(3)]))
    driver.drive()
    assert "fsync" not in [k for k, _ in effects.log]


def _ready_consumers() -> list[str]:
    """Modules outside the core that read a Ready's ``send_after_sync``: a driver."""
    found = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "send_after_sync":
                found.append(str(path.relative_to(SRC)))
                break
    return sorted(found)


def test_there_is_one_ready_driver_and_both_the_server_and_the_simulator_run_it() -> None:
    from pyxos.server.node import NodeServer
    from pyxos.sim.world import Simulator

    # The model checker makes every write durable at once (its own, deliberately
    # simpler world); every other driver of a Ready is this one.
    assert _ready_consumers() == ["driver/ready.py", "model/engine.py"]
    assert NodeServer.__init__.__code__.co_names.count("ReadyDriver") == 1
    assert "ReadyDriver" in Simulator._start.__code__.co_names


def test_a_chosen_watermark_alone_starts_no_fsync_and_rides_with_the_next() -> None:
    """The chosen watermark is a hint, safe to lose: written, but no fsync of its own
    (a leader at one client used to fsync twice per command), and it holds back no
    reply; the next fsync covers it."""
    driver, node, effects = make()
    node.script.append(Ready(Persist(chosen=3), send_after_sync=[nack(2)]))
    driver.drive()
    assert kinds(effects) == [("write", None), ("send", 2), ("wake", 5.0)]
    assert driver.written == driver.synced == 0 and not driver.fsync_in_flight
    node.script.append(Ready(Persist(accepted=[Entry(3, B, b"x")], chosen=4)))
    driver.drive()
    assert kinds(effects)[3:] == [("write", None), ("fsync", None), ("wake", 5.0)]
    driver.fsync_done()
    assert driver.synced == driver.written == 1


def test_a_record_the_host_wrote_outside_persist_starts_an_fsync() -> None:
    """A LEARNED record (written by the host as it applies a value fetched from a peer)
    must become durable even when the node writes nothing else but watermarks: a
    follower catching up by fetching did no fsync at all, and a forced recovery lost
    what it had fetched (tests/test_recover_processes.py)."""
    driver, node, effects = make()
    node.script.append(Ready(Persist(chosen=3)))
    driver.drive()
    assert not driver.fsync_in_flight
    driver.wrote()
    node.script.append(Ready(Persist(chosen=4)))
    driver.drive()
    assert driver.fsync_in_flight and ("fsync", None) in kinds(effects)
    driver.fsync_done()
    assert driver.synced == driver.written == 1


def test_a_held_fsync_starts_only_when_released_and_then_covers_every_write() -> None:
    """The server holds the next fsync while it carries out what a reported fsync
    released (server/effects.py); holding only delays: nothing leaves before its fsync."""
    driver, node, effects = make()
    driver.hold_fsync()
    for dst in (3, 4):
        node.script.append(Ready(Persist(promised=B), send_after_sync=[nack(dst)]))
        driver.drive()
    assert "fsync" not in [k for k, _ in effects.log] and not driver.fsync_in_flight
    assert driver.waiting_sends() == 2
    driver.release_fsync()
    assert effects.log[-1] == ("fsync", None) and driver.fsync_in_flight
    driver.fsync_done()
    assert [v for k, v in effects.log if k == "send"] == [3, 4]
    assert driver.synced == driver.written == 2
    driver.release_fsync()  # nothing written since: no fsync
    assert [k for k, _ in effects.log].count("fsync") == 1
