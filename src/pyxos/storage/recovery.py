"""The durable record of a forced recovery (``pyxos recover --force-new-cluster``).

Theory of operation
-------------------
A forced recovery (``core/recovery.py``; docs/recovery.md) turns one survivor of a
cluster that lost its majority into a one-node cluster. The whole change to the data
directory is this one file, ``pyxos.recovery``, written atomically (temporary file,
fsync, rename, directory fsync) while the recovery holds the directory's lock: before
the rename nothing changed, after it the node is recovered. The WAL, the snapshots and
the node marker are left exactly as they were; the node applies the record at every
start (``server.disk.build_node``), so what the recovered node is stays visible on disk
and in ``pyxos status`` for good.

The file holds every recovery the directory went through, oldest first (a recovered
cluster that later loses its majority too may be recovered again), as JSON, with a
CRC-32C over the canonical encoding of that list: a damaged or hand-edited record is
refused (``RecoveryRecordError``), never half-read. Format version 1::

    {"format": "pyxos-recovery", "version": 1, "recoveries": [RECORD, ...], "crc32c": N}

where each ``RECORD`` is a :class:`RecoveryRecord` (field names as below).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import crc32c
import msgspec

from pyxos.core.membership import Configuration
from pyxos.core.recovery import RecoveryPlan, recovery_reason
from pyxos.storage.fs import OS, FileSystem
from pyxos.storage.wal import StorageError

__all__ = [
    "RECOVERY_FILENAME",
    "RecoveryRecord",
    "RecoveryRecordError",
    "read_recoveries",
    "write_recoveries",
]

RECOVERY_FILENAME = "pyxos.recovery"
"""The record's file name in the data directory."""
_FORMAT = "pyxos-recovery"
_VERSION = 1
_MAX_BYTES = 1 << 20


class RecoveryRecordError(StorageError):
    """The recovery record exists but cannot be trusted (damaged, or not one)."""


class RecoveryRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One forced recovery: when, of which node, into what, and what may be lost."""

    at: str
    """When (UTC, ISO 8601)."""
    node_id: int
    cluster_id: str
    epoch: int
    """The new configuration's epoch (its only voter: ``node_id``)."""
    alpha: int
    previous_epoch: int
    previous_voters: tuple[int, ...]
    previous_learners: tuple[int, ...] = ()
    disowned: tuple[int, ...]
    """The old cluster's other ids: refused for good."""
    snapshot_slot: int
    known_chosen_end: int
    """The first slot the node had not learned chosen (the new cluster decides again
    from the first slot whose value it does not hold, ``first_uncertain``)."""
    first_uncertain: int
    known_held: int
    known_not_held: int
    accepted_not_known_chosen: int
    gaps: int
    last_accepted: int
    voided_config_entries: int = 0
    promised: str = ""
    wal_last_index: int = -1
    """The node's last WAL record when it was recovered: a second run that finds the
    same one (the node has not run since) has nothing to do."""
    warnings: tuple[str, ...] = ()
    """What was printed, loudly, when it was done."""

    @classmethod
    def from_plan(
        cls, plan: RecoveryPlan, *, at: str, cluster_id: str, wal_last_index: int
    ) -> RecoveryRecord:
        """The record of carrying out ``plan``."""
        return cls(
            at=at,
            node_id=plan.node_id,
            cluster_id=cluster_id,
            epoch=plan.configuration.epoch,
            alpha=plan.configuration.alpha,
            previous_epoch=plan.previous.epoch,
            previous_voters=plan.previous.voters,
            previous_learners=plan.previous.learners,
            disowned=plan.disowned,
            snapshot_slot=plan.snapshot_slot,
            known_chosen_end=plan.known_chosen_end,
            first_uncertain=plan.first_uncertain,
            known_held=plan.known_held,
            known_not_held=plan.known_not_held,
            accepted_not_known_chosen=plan.accepted_not_known_chosen,
            gaps=plan.gaps,
            last_accepted=plan.last_accepted,
            voided_config_entries=plan.voided_config_entries,
            promised=str(plan.promised),
            wal_last_index=wal_last_index,
            warnings=tuple(plan.warnings()),
        )

    @property
    def configuration(self) -> Configuration:
        """The configuration the recovery forced: ``node_id`` alone."""
        return Configuration(self.epoch, (self.node_id,), (), 0, 0, self.alpha)

    @property
    def reason(self) -> str:
        """What a disowned node is told."""
        return recovery_reason(self.node_id, self.epoch, self.first_uncertain)

    def summary(self) -> dict[str, Any]:
        """What status shows (``/v1/status`` ``recovered``)."""
        return {
            "at": self.at,
            "forced_new_cluster_from": self.node_id,
            "epoch": self.epoch,
            "previous_voters": list(self.previous_voters),
            "disowned": list(self.disowned),
            "snapshot_slot": self.snapshot_slot,
            "known_chosen_end": self.known_chosen_end,
            "first_uncertain_slot": self.first_uncertain,
            "known_chosen_not_held": self.known_not_held,
            "accepted_not_known_chosen": self.accepted_not_known_chosen,
            "message": (
                f"this cluster was forced from node {self.node_id}'s state alone at "
                f"{self.at} (pyxos recover --force-new-cluster): values the old "
                f"cluster chose at slot {self.first_uncertain} or later that this node "
                "did not hold may be lost"
            ),
        }


_records = msgspec.json.Decoder(list[RecoveryRecord])


def _crc(records: list[RecoveryRecord]) -> int:
    canonical = json.dumps(msgspec.to_builtins(records), sort_keys=True, separators=(",", ":"))
    return crc32c.crc32c(canonical.encode())


def read_recoveries(
    dirpath: str | os.PathLike[str], *, fs: FileSystem = OS
) -> list[RecoveryRecord]:
    """Every recovery recorded in ``dirpath``, oldest first ([] if none);
    ``RecoveryRecordError`` if the record is damaged."""
    path = Path(dirpath) / RECOVERY_FILENAME
    try:
        raw = fs.read_bytes(path, _MAX_BYTES)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise RecoveryRecordError(f"{path}: unreadable: {e}") from e
    try:
        body = json.loads(raw)
        if not isinstance(body, dict) or body.get("format") != _FORMAT:
            raise RecoveryRecordError(f"{path}: not a pyxos recovery record")
        if body.get("version") != _VERSION:
            raise RecoveryRecordError(f"{path}: unsupported version {body.get('version')!r}")
        records = _records.decode(json.dumps(body.get("recoveries")))
    except (ValueError, msgspec.ValidationError) as e:  # JSON errors are ValueErrors
        raise RecoveryRecordError(f"{path}: damaged: {e}") from e
    if not records or body.get("crc32c") != _crc(records):
        raise RecoveryRecordError(f"{path}: checksum mismatch (damaged or edited)")
    return records


def write_recoveries(
    dirpath: str | os.PathLike[str], records: list[RecoveryRecord], *, fs: FileSystem = OS
) -> Path:
    """Atomically replace the record in ``dirpath`` with ``records``; its path."""
    path = Path(dirpath) / RECOVERY_FILENAME
    body = {
        "format": _FORMAT,
        "version": _VERSION,
        "recoveries": msgspec.to_builtins(records),
        "crc32c": _crc(records),
    }
    fs.write_atomic(path, [json.dumps(body, indent=1).encode() + b"\n"])
    return path
