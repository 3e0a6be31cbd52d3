"""``pyxos member list|add|promote|remove|replace`` and ``pyxos cluster add-node``.

Theory of operation
-------------------
The member commands are HTTP clients of ``/v1/members`` (``server.members_http``) on
any node: ``--http host:port``, or every node of the local cluster in ``--dir`` in turn
until one answers (a node that is down is skipped; a follower forwards the request to
the leader). They only build a request and print the answer; what is checked, and
where, is ``statemachine.members`` (docs/membership.md, *Operations*). Exit status 1
with the node's own words when a change is refused.

``pyxos cluster add-node`` grows the local cluster by one node: it writes the new
node's config (the next id never used, fresh ports; ``LocalCluster.add_node``), adds
it as a learner with its peer address, starts its process with ``--join`` (it learns
the members and catches up by snapshot and log), and, unless ``--no-promote``, promotes
it as soon as the leader finds it caught up. ``--replace N`` instead replaces voter N
(typically dead, its data directory gone) by the new node in one change, stopping N's
process first if it still runs.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["add_node", "member"]


class _Refused(click.ClickException):
    """The node answered with an error (its own words)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _request(
    base: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    *,
    ca: str | None,
    cert: str | None,
    key: str | None,
    token: str | None,
    timeout: float = 20.0,
) -> dict[str, Any]:
    import ssl
    import urllib.error
    import urllib.request

    from pyxos.net.tls import TlsError, TlsFiles, client_context

    context: ssl.SSLContext | None = None
    if ca is not None:
        try:
            files = TlsFiles(Path(ca), Path(cert) if cert else None, Path(key) if key else None)
            context = client_context(files)
        except (TlsError, OSError) as e:
            raise click.ClickException(f"TLS: {e}") from None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    url = base.rstrip("/") + path
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as r:
            answer = json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("error", e.reason)
        except (ValueError, AttributeError):
            detail = e.reason
        hint = " (pass --token, or set $PYXOS_TOKEN)" if e.code == 401 else ""
        raise _Refused(f"{detail}{hint}", e.code) from None
    except (OSError, ValueError) as e:
        raise click.ClickException(f"cannot reach {url}: {getattr(e, 'reason', e)}") from None
    return answer if isinstance(answer, dict) else {}


def _targets(url: str | None, base_dir: str, ca: str | None) -> list[str]:
    if url:
        if url.startswith(("http://", "https://")):
            return [url]
        return [f"{'https' if ca else 'http'}://{url}"]
    from pyxos.localcluster import ClusterError, LocalCluster

    try:
        local = LocalCluster.load(Path(base_dir))
    except ClusterError as e:
        raise click.ClickException(f"{e}; pass --http host:port") from None
    running = [i for i in local.members if local.pid(i) is not None]
    return [local.nodes[i].http_url for i in running or local.members]


def call(
    targets: list[str], method: str, path: str, body: dict[str, Any] | None, **security: Any
) -> dict[str, Any]:
    """Ask the first node of ``targets`` that answers (any node forwards to the leader)."""
    last: click.ClickException | None = None
    for base in targets:
        try:
            return _request(base, method, path, body, **security)
        except _Refused as e:
            if e.status not in (502, 503):
                raise
            last = e
        except click.ClickException as e:
            last = e
    raise last or click.ClickException("no node to ask")


def _options(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--http", "url", default=None, help="Any node's HTTP address."),
            click.option(
                "--dir",
                "base_dir",
                default="pyxos-cluster",
                show_default=True,
                type=click.Path(file_okay=False),
                help="The local cluster's directory (used without --http).",
            ),
            click.option("--ca", default=None, help="CA certificate to verify a TLS node."),
            click.option("--cert", default=None, help="Client certificate to present (TLS)."),
            click.option("--key", default=None, help="Key of --cert."),
            click.option(
                "--token", default=None, envvar="PYXOS_TOKEN", help="Bearer token ($PYXOS_TOKEN)."
            ),
        ]
    ):
        f = option(f)
    return f


def _run(
    method: str, path: str, body: dict[str, Any] | None, opts: dict[str, Any]
) -> dict[str, Any]:
    targets = _targets(opts["url"], opts["base_dir"], opts["ca"])
    security = {k: opts[k] for k in ("ca", "cert", "key", "token")}
    if not opts["url"] and security["ca"] is None:  # a local TLS cluster: trust its CA
        from pyxos.localcluster import ClusterError, LocalCluster

        with contextlib.suppress(ClusterError):
            ca_file = LocalCluster.load(Path(opts["base_dir"])).ca_file
            security["ca"] = str(ca_file) if ca_file is not None else None
    return call(targets, method, path, body, **security)


@click.group()
def member() -> None:
    """Cluster membership: list, add a learner, promote, remove, replace (asks any node;
    the leader makes the change; docs/membership.md, Operations)."""


@member.command("list")
@_options
def member_list(**opts: Any) -> None:
    """The voters, learners and their addresses, as the leader knows them."""
    doc = _run("GET", "/v1/members", None, opts)
    addresses = doc.get("addresses", {})
    click.echo(
        f"cluster {doc.get('cluster')}: epoch {doc.get('epoch')}, leader {doc.get('leader')}, "
        f"q1={doc.get('q1')} q2={doc.get('q2')}"
    )
    for kind in ("voters", "learners"):
        for node in doc.get(kind, []):
            click.echo(f"  {node:>4}  {kind[:-1]:<8} {addresses.get(str(node), '-')}")
    pending = doc.get("configurations", [])[1:]
    for config in pending:
        click.echo(
            f"  pending: epoch {config['epoch']} from slot {config['from_slot']}: "
            f"voters {config['voters']}, learners {config['learners']}"
        )
    if doc.get("removed"):
        click.echo(f"  removed (ids never reused): {', '.join(map(str, doc['removed']))}")


def _done(doc: dict[str, Any]) -> None:
    click.echo(f"{doc.get('done', 'done')} (leader: node {doc.get('leader')})")


@member.command("add")
@click.argument("node", type=click.IntRange(1))
@click.option("--addr", required=True, help="The new node's peer address, host:port.")
@_options
def member_add(node: int, addr: str, **opts: Any) -> None:
    """Add NODE (a new id) as a learner: it receives the log, does not vote."""
    _done(_run("POST", "/v1/members", {"node": node, "address": addr}, opts))


def _sizes(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--q2", type=click.IntRange(0), default=0, help="New phase-2 quorum size (0: majority)."
    )(f)
    return click.option(
        "--q1", type=click.IntRange(0), default=0, help="New phase-1 quorum size (0: majority)."
    )(f)


@member.command("promote")
@click.argument("node", type=click.IntRange(1))
@_sizes
@_options
def member_promote(node: int, q1: int, q2: int, **opts: Any) -> None:
    """Make learner NODE a voter (refused unless it has caught up)."""
    _done(_run("POST", f"/v1/members/{node}/promote", {"q1": q1, "q2": q2}, opts))


@member.command("remove")
@click.argument("node", type=click.IntRange(1))
@_sizes
@_options
def member_remove(node: int, q1: int, q2: int, **opts: Any) -> None:
    """Remove NODE for good (the leader too: it hands over); its id is never reused."""
    _done(_run("DELETE", f"/v1/members/{node}?q1={q1}&q2={q2}", None, opts))
    _mark_removed(opts, node)


@member.command("replace")
@click.argument("old", type=click.IntRange(1))
@click.argument("new", type=click.IntRange(1))
@click.option("--addr", required=True, help="The new node's peer address, host:port.")
@_sizes
@_options
def member_replace(old: int, new: int, addr: str, q1: int, q2: int, **opts: Any) -> None:
    """Voter OLD leaves and the new id NEW votes in its place, in one change (for a dead
    node whose data directory is gone); start NEW with --join."""
    body = {"new": new, "address": addr, "q1": q1, "q2": q2}
    _done(_run("POST", f"/v1/members/{old}/replace", body, opts))
    _mark_removed(opts, old)


def _mark_removed(opts: dict[str, Any], node: int) -> None:
    if opts["url"]:
        return
    from pyxos.localcluster import ClusterError, LocalCluster

    with contextlib.suppress(ClusterError):
        LocalCluster.load(Path(opts["base_dir"])).mark_removed(node)


@click.command("add-node")
@click.option(
    "--promote/--no-promote",
    default=True,
    show_default=True,
    help="Promote the new node to voter once it has caught up.",
)
@click.option(
    "--replace",
    "replaced",
    type=click.IntRange(1),
    default=None,
    help="Replace this voter (dead, or to be retired) by the new node, in one change.",
)
@click.option(
    "--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait at most."
)
@click.option(
    "--dir",
    "base_dir",
    default="pyxos-cluster",
    show_default=True,
    type=click.Path(file_okay=False),
)
def add_node(promote: bool, replaced: int | None, timeout: float, base_dir: str) -> None:
    """Start a new node and add it to the local cluster: a learner that catches up and
    is then promoted (or, with --replace N, a voter in N's place)."""
    from pyxos.localcluster import ClusterError, LocalCluster

    try:
        local = LocalCluster.load(Path(base_dir))
        if replaced is not None and replaced not in local.members:
            raise ClusterError(f"node {replaced} is not a member of this cluster")
        node = local.add_node()
    except ClusterError as e:
        raise click.ClickException(str(e)) from None
    opts: dict[str, Any] = {
        "url": None,
        "base_dir": base_dir,
        "ca": None,
        "cert": None,
        "key": None,
        "token": None,
    }
    address = f"{node.host}:{node.peer_port}"
    if replaced is not None:
        local.kill(replaced)
        _done(
            _run(
                "POST",
                f"/v1/members/{replaced}/replace",
                {"new": node.node_id, "address": address},
                opts,
            )
        )
        local.mark_removed(replaced)
    else:
        _done(_run("POST", "/v1/members", {"node": node.node_id, "address": address}, opts))
    try:
        pid = local.start_node(node.node_id)
    except ClusterError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"node {node.node_id} started (pid {pid}), peer address {address}")
    if replaced is not None or not promote:
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            _done(_run("POST", f"/v1/members/{node.node_id}/promote", None, opts))
            return
        except _Refused as e:
            if e.status != 409 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)
