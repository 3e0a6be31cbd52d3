"""Where the members are: the peer address book, links that follow the membership, joining.

Theory of operation
-------------------
A node's own config lists the **founding** members (``peers``); a member added at run
time is known from the log: every configuration the server proposes carries the peer
address of each node it names (``Configuration.addresses``, docs/membership.md,
*Operations*), and a snapshot carries the configurations. The ``PeerBook`` is this
node's address book: the config's peers, overlaid with every address a configuration
of the replica's timeline gave (the log's word wins), minus the ids retired. It is
kept durable in ``membership.json`` in the data directory, so a node that restarts
behind can reach members it has not re-learned yet (its replies to a leader added
since must have a link to go on).

After every drive pass ``observe`` compares the replica's newest configuration and
retired ids with what it last saw (two identity/size checks: nothing per message), and
on a change updates the book, writes it, and makes the links follow it: a link is
dialed to every node of the book (``PeerLinks.add_peer``) and closed to every id
retired (``remove_peer``). The peer port refuses a retired id's handshake with a
``Removed`` frame (``check_peer``, the ``farewell`` of the refusal): the removed node
learns why and says so (its replica's ``removed``, logged once, shown by status). A
node whose view is behind still treats an id retired later as a member (the core's
rule: ``Membership.retired`` is as of its first unchosen slot), so a node that may
still need a removed node's vote for slots before its removal still reaches it.

**Joining** (``pyxos serve --join URL``, a new node id): before the node opens its
data directory it asks the member at ``URL`` (its HTTP API, ``GET
/v1/members?node=N``, answered by the leader) for the cluster's oldest known
configuration (the *founding* one of the new node's timeline), the addresses, and
whether N is a member that was never heard from (added, and not running yet). It
refuses to start, saying why, if the cluster id differs, if N was removed (ids are
never reused), or if N is not a member yet (add it first). The answer is written to
``membership.json`` before anything else, so a restart needs no ``--join``. A fresh
id starts with an empty data directory and ``Replica.join_fresh``: it votes, once a
configuration names it as a voter, with no bootstrap round. An id the leader has
heard from before is not fresh (its disk was lost): it rebuilds, like any member.
The ids a node has had a link up to are kept in ``membership.json`` too (``heard``),
so a leader's restart does not make a wiped member look new.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from pyxos.core.membership import Configuration
from pyxos.core.messages import Removed
from pyxos.net.codec import HandshakeError, encode_message
from pyxos.net.link import PeerLinks
from pyxos.server.config import Config, ConfigError, parse_address
from pyxos.server.disk import NodeStartupError
from pyxos.statemachine.members import config_from_json, config_json
from pyxos.statemachine.service import ServiceNode

__all__ = ["MEMBERSHIP_FILE", "JoinRefused", "PeerBook"]

logger = logging.getLogger("pyxos.server")

MEMBERSHIP_FILE = "membership.json"
"""The address book (and, for a node that joined, its founding configuration)."""


class JoinRefused(NodeStartupError):
    """``--join`` cannot go ahead: the answer says why (another cluster, a removed id,
    not a member yet, the member could not be asked)."""


class PeerBook:
    """This node's address book and the links that follow it (see the module notes)."""

    def __init__(self, config: Config, join: str | None = None) -> None:
        self.config = config
        self.join_url = join
        """``--join``: the HTTP address of a member to join the cluster through."""
        self.node_id = config.node_id
        self.static = {n: f"{h}:{p}" for n, (h, p) in config.peers.items()}
        self.learned: dict[int, str] = {}
        """Addresses the log gave (they win over the config's)."""
        self.retired: set[int] = set()
        self.founding: Configuration | None = None
        """The founding configuration of a node that joined (None: the config's peers)."""
        self.heard: set[int] = set()
        """Ids this node has ever had a link up to (``MemberDesk.heard``), kept here so
        that a restart of the leader does not forget them: a wiped node that rejoins
        with ``--join`` under such an id is told it is not new, and rebuilds."""
        self.fresh_join = False
        """This start joins the cluster with a new, never used id (``join_fresh``)."""
        self.links: PeerLinks | None = None
        self.node: ServiceNode | None = None
        self._seen: tuple[object, int] = (None, -1)
        self._load()

    @property
    def path(self) -> Path:
        """The book's file in the data directory."""
        return self.config.data_dir / MEMBERSHIP_FILE

    def addresses(self) -> dict[int, str]:
        """Every node's peer address known here, ``host:port`` (retired ids left out, and
        the ids a forced recovery disowned: no link to them, none handed to a joiner)."""
        book = self.static | self.learned
        gone = self.retired | (self.node.replica.disowned if self.node is not None else set())
        return {n: a for n, a in sorted(book.items()) if n not in gone}

    def dial(self) -> dict[int, tuple[str, int]]:
        """The nodes to keep a link to, and where."""
        out: dict[int, tuple[str, int]] = {}
        for node, address in self.addresses().items():
            if node == self.node_id:
                continue
            try:
                out[node] = parse_address(address, f"address of node {node}")
            except ConfigError as e:
                logger.warning("node %d: ignoring a peer address: %s", self.node_id, e)
        return out

    # -- the running node ------------------------------------------------------------------

    def attach(self, node: ServiceNode, links: PeerLinks) -> None:
        """Follow ``node``'s membership with ``links`` from now on (before its first
        input); a fresh joiner's empty state is the truth (``Replica.join_fresh``)."""
        self.node, self.links = node, links
        if self.fresh_join and node.replica.bootstrapping:
            node.replica.join_fresh()
        node.members.addresses = self.addresses
        node.members.heard |= self.heard
        self.observe(node)

    def observe(self, node: ServiceNode | None) -> None:
        """After a drive pass: follow a change of the membership (see the module notes)."""
        if node is None:
            return
        if len(node.members.heard) != len(self.heard):  # it only grows: a size check
            self.heard = set(node.members.heard)
            self._save()
        replica = node.replica
        m = replica.membership
        seen = (m.latest, len(m.retired))
        if seen == self._seen:
            return
        self._seen = seen
        learned = dict(self.learned)
        for config in m.configs:
            learned.update(config.addresses)
        # The replica's own view, not a union over time: a node restarted behind a
        # removal still counts the removed node as a member (the core's rule), so it
        # must reach it until it has caught up past the removal again.
        retired = set(m.retired) - {self.node_id}
        if learned != self.learned or retired != self.retired:
            self.learned, self.retired = learned, retired
            self._save()
        if self.links is None:
            return
        want = self.dial()
        for gone in set(self.links.peers) - set(want):
            logger.info("node %d: closing the link to node %d (removed)", self.node_id, gone)
            self.links.remove_peer(gone)
        for peer, address in want.items():
            if peer not in self.links.peers:
                logger.info("node %d: linking to node %d at %s:%d", self.node_id, peer, *address)
            self.links.add_peer(peer, address)

    def check_peer(self, node: int) -> None:
        """The peer port's handshake check: a retired id is refused with ``Removed``."""
        service = self.node
        if service is None:
            return
        replica = service.replica
        config = replica.configuration
        if node in replica.disowned:  # pyxos recover --force-new-cluster: its reason
            reason = replica.disowned_reason
        elif node in replica.membership.retired:
            reason = (
                f"node {node} was removed from cluster {self.config.cluster_id!r}: "
                f"configuration epoch {config.epoch} has voters {list(config.voters)} and "
                f"learners {list(config.learners)} (a removed id is never used again)"
            )
        else:
            return
        replica.refused_removed += 1
        farewell = encode_message(Removed(self.node_id, node, config.epoch, reason))
        raise HandshakeError(reason, farewell=farewell)

    # -- joining ---------------------------------------------------------------------------

    async def join(self, initialize: bool) -> bool:
        """With ``--join``, ask the member at ``join_url`` to let this node in (see the
        module notes); returns whether its data directory may be initialized (a fresh
        id; without ``--join``: ``initialize``). ``JoinRefused`` says why not."""
        url = self.join_url
        if url is None:
            return initialize
        if self.founding is not None:
            logger.info(
                "node %d: joined before (%s): --join has no effect", self.node_id, self.path
            )
            return False
        me = self.node_id
        loop = asyncio.get_running_loop()
        doc = await loop.run_in_executor(None, self._ask, url)
        if doc.get("cluster") != self.config.cluster_id:
            raise JoinRefused(
                f"node {me}: {url} serves cluster {doc.get('cluster')!r}, "
                f"not {self.config.cluster_id!r}"
            )
        joining = doc.get("joining") or {}
        if joining.get("removed") or me in doc.get("removed", []):
            raise JoinRefused(
                f"node {me} was removed from cluster {self.config.cluster_id!r}: a removed "
                "id is never used again; give the new node a new id"
            )
        if not joining.get("member"):
            raise JoinRefused(
                f"node {me} is not a member of cluster {self.config.cluster_id!r} yet: add "
                f"it first (pyxos member add {me} --addr HOST:PORT)"
            )
        try:
            founding = config_from_json(doc["founding"])
        except (KeyError, ValueError) as e:
            raise JoinRefused(f"node {me}: {url} sent no usable configuration: {e}") from None
        self.founding = founding
        for node, address in dict(doc.get("addresses", {})).items():
            self.learned[int(node)] = str(address)
        self.retired = set(doc.get("removed", [])) - {me}
        self.fresh_join = not joining.get("heard")
        self._save()
        logger.info(
            "node %d: joining cluster %r through %s (%s); founding configuration epoch %d",
            me,
            self.config.cluster_id,
            url,
            "a new id" if self.fresh_join else "an id heard from before: it rebuilds",
            founding.epoch,
        )
        return self.fresh_join

    def _ask(self, url: str) -> dict[str, Any]:
        import urllib.error
        import urllib.request

        from pyxos.net.tls import TlsError, client_context

        files = self.config.tls
        scheme = "https" if files is not None else "http"  # a TLS cluster's HTTP is https
        base = url if url.startswith(("http://", "https://")) else f"{scheme}://{url}"
        full = f"{base.rstrip('/')}/v1/members?node={self.node_id}"
        token = os.environ.get("PYXOS_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            context = client_context(files) if files is not None else None
            request = urllib.request.Request(full, headers=headers)
            with urllib.request.urlopen(request, timeout=20.0, context=context) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise JoinRefused(
                f"node {self.node_id}: {full}: HTTP {e.code}: {e.read()[:300]!r}"
            ) from None
        except (OSError, ValueError, TlsError) as e:
            raise JoinRefused(f"node {self.node_id}: cannot ask {full}: {e}") from None
        if not isinstance(doc, dict):
            raise JoinRefused(f"node {self.node_id}: {full} did not answer a JSON object")
        return doc

    # -- the file --------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            text = self.path.read_text()
        except OSError:
            # None yet, or a data directory that is not one (a file in the way, no
            # permission): the data directory check at startup says what is wrong.
            return
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise NodeStartupError(f"node {self.node_id}: {self.path} is damaged: {e}") from None
        try:
            self.learned = {int(n): str(a) for n, a in dict(doc.get("addresses", {})).items()}
            self.retired = {int(n) for n in doc.get("removed", [])}
            self.heard = {int(n) for n in doc.get("heard", [])}
            if doc.get("founding") is not None:
                self.founding = config_from_json(doc["founding"])
        except (TypeError, ValueError, AttributeError) as e:
            raise NodeStartupError(f"node {self.node_id}: {self.path} is damaged: {e}") from None

    def _save(self) -> None:
        doc = {
            "cluster_id": self.config.cluster_id,
            "node_id": self.node_id,
            "founding": config_json(self.founding) if self.founding is not None else None,
            "addresses": {str(n): a for n, a in sorted(self.learned.items())},
            "removed": sorted(self.retired),
            "heard": sorted(self.heard),
        }
        path = self.path
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                f.write(json.dumps(doc, indent=1) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:  # the log still has every address: only a restart needs it
            logger.warning("node %d: could not write %s: %s", self.node_id, path, e)
