"""The address book (server/peerbook.py): the ids heard from survive a restart; no disowned id
is dialed or handed to a joiner.

Adversarial review: ``--join`` tells a joiner it is new (``Replica.join_fresh``: it
votes with no rebuild) unless the leader has "heard" from its id, and that memory was
the leader's process only. A voter whose disk was wiped, rejoining with ``--join``
after the leader restarted, was taken for new and voted with its promises forgotten.
The book now keeps the ids heard in ``membership.json``.
"""

from __future__ import annotations

import random
from pathlib import Path

from pyxos.core.membership import Configuration
from pyxos.core.replica import Replica, ReplicaConfig
from pyxos.server.peerbook import PeerBook
from pyxos.statemachine.kv import KVStore
from pyxos.statemachine.service import ServiceNode
from test_server_harness import cluster_configs

CFG = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.02, window=8)


def service(node_id: int) -> ServiceNode:
    founding = Configuration(0, (1, 2, 3), alpha=8)
    replica = Replica(node_id, founding, random.Random(node_id), config=CFG)
    return ServiceNode(replica, KVStore(), snapshot_every=10**9)


def test_the_ids_heard_from_survive_a_restart(tmp_path: Path) -> None:
    config = cluster_configs(tmp_path, http_port=0)[0]
    book, node = PeerBook(config), service(config.node_id)
    book.attach(node, None)  # type: ignore[arg-type]  # no links: the book alone
    node.link_changed(4, True)  # node 4 (added, then running) linked to us
    book.observe(node)
    assert node.members.describe(4)["joining"]["heard"]
    # The process restarts (say, the leader): a wiped node 4 rejoining is not new.
    again, restarted = PeerBook(config), service(config.node_id)
    again.attach(restarted, None)  # type: ignore[arg-type]
    assert restarted.members.describe(4)["joining"]["heard"]
    assert not restarted.members.describe(5)["joining"]["heard"]


def test_a_recovered_node_hands_no_disowned_address_to_a_joiner(tmp_path: Path) -> None:
    # Adversarial review: after pyxos recover --force-new-cluster the old ids are
    # disowned but not retired, so the recovered node kept dialing them (refused) and
    # its answer to a joiner (GET /v1/members?node=N) listed their addresses: the new
    # node linked to old members of another history.
    config = cluster_configs(tmp_path, http_port=0)[2]
    book, node = PeerBook(config), service(config.node_id)
    node.replica.force_configuration(Configuration(5, (3,), alpha=8), [1, 2], "recovered")
    book.attach(node, None)  # type: ignore[arg-type]
    assert set(book.addresses()) == {3}
    assert book.dial() == {}
    assert set(node.members.describe(9)["addresses"]) == {"3"}
