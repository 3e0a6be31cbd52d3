"""Mutual TLS between nodes over real sockets on 127.0.0.1 (pyxos.net.tls, issue 12 item 3).

Certificates come from ``pyxos.certs.init_certs`` (two independent CAs: the
cluster's and a stranger's). A node of the cluster gets its messages through; a node
with a certificate from another CA, with none, or not speaking TLS at all is refused
at the handshake, counted (``tls_refused``) and logged once at WARNING, and never
delivers a message. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import stat
from pathlib import Path

import pytest

from pyxos.certs import CertFiles, init_certs
from pyxos.net.link import PeerLinks
from pyxos.net.tls import TlsError, TlsFiles, client_context, server_context
from pyxos.server.config import Config, ConfigError
from test_net_link import GOOD_HELLO, HOST, accepted, eventually, run, with_server


@pytest.fixture(scope="module", autouse=True)
def _needs_cryptography() -> None:
    """Certificates are made with ``cryptography`` (a dependency since issue 12): a
    virtualenv installed before it skips these tests until ``pip install -e .[dev]``."""
    pytest.importorskip("cryptography")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertFiles, CertFiles]:
    """The cluster's certificates and a stranger's (another CA)."""
    ours = init_certs(tmp_path_factory.mktemp("ours"), nodes=3)
    theirs = init_certs(tmp_path_factory.mktemp("theirs"), nodes=3)
    return ours, theirs


def node_files(certs: CertFiles, node: int, ca: Path | None = None) -> TlsFiles:
    cert, key = certs.nodes[node]
    return TlsFiles(ca if ca is not None else certs.ca, cert, key)


def test_certs_init_writes_keys_0600_and_names_localhost(tmp_path: Path) -> None:
    certs = init_certs(tmp_path, nodes=2, hosts=["10.1.2.3", "db.example"])
    for path in [certs.ca_key, *(k for _, k in certs.nodes.values()), certs.client[1]]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(certs.nodes[1][0].read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "10.1.2.3",
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "db.example"]


def test_a_node_of_the_cluster_ca_joins_over_mutual_tls(
    pki: tuple[CertFiles, CertFiles],
) -> None:
    ours, _ = pki

    async def main() -> None:
        tls = server_context(node_files(ours, 1), require_client_cert=True)

        async def body(server, inbox) -> None:  # type: ignore[no-untyped-def]
            links = PeerLinks(
                2, "a", {1: (HOST, server.port)}, tls=client_context(node_files(ours, 2))
            )
            links.start()
            await eventually(lambda: links.is_connected(1), what="link up")
            for i in range(100):
                assert links.send(1, accepted(i, src=2))
            await eventually(lambda: len(inbox.messages) == 100, what="100 messages")
            assert inbox.slots_from(2) == list(range(100))
            assert server.counters["tls_refused"] == 0
            await links.close()

        await with_server(body, tls=tls)

    run(main)


@pytest.mark.parametrize("rogue", ["other-ca", "other-ca-trusting-ours", "no-cert", "plain-tcp"])
def test_a_node_without_a_certificate_of_the_cluster_ca_is_refused_counted_and_logged(
    pki: tuple[CertFiles, CertFiles], rogue: str, caplog: pytest.LogCaptureFixture
) -> None:
    ours, theirs = pki
    caplog.set_level(logging.INFO, logger="pyxos.net")

    async def main() -> None:
        tls = server_context(node_files(ours, 1), require_client_cert=True)

        async def body(server, inbox) -> None:  # type: ignore[no-untyped-def]
            if rogue == "plain-tcp":
                reader, writer = await asyncio.open_connection(HOST, server.port)
                writer.write(GOOD_HELLO + accepted(1))
                with contextlib.suppress(ConnectionError):
                    await asyncio.wait_for(reader.read(), 5.0)
                writer.close()
            else:
                files = {
                    "other-ca": node_files(theirs, 2),
                    "other-ca-trusting-ours": node_files(theirs, 2, ca=ours.ca),
                    "no-cert": TlsFiles(ours.ca),
                }[rogue]
                links = PeerLinks(
                    2,
                    "a",
                    {1: (HOST, server.port)},
                    tls=client_context(files),
                    rng=random.Random(1),
                    backoff_cap=0.1,
                )
                links.start()
                await eventually(
                    lambda: server.counters["tls_refused"] >= 2, what="refusals counted"
                )
                for i in range(10):
                    links.send(1, accepted(i, src=2))
                await links.close()
            await eventually(lambda: server.counters["tls_refused"] >= 1, what="refusal counted")
            await eventually(lambda: not server.connections, what="refused connections freed")
            assert inbox.messages == []
            assert server.guard.connections == set()

        await with_server(body, tls=tls)

    run(main)
    refusals = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "refused TLS connection" in r.getMessage()
    ]
    assert refusals, caplog.text
    text = caplog.text
    for secret in [ours.ca_key, *(k for _, k in ours.nodes.values())]:
        body = secret.read_text().splitlines()[1]
        assert body not in text
    assert "PRIVATE KEY" not in text


def test_bad_tls_files_are_one_line_config_errors(
    tmp_path: Path, pki: tuple[CertFiles, CertFiles]
) -> None:
    ours, _ = pki
    base = {
        "cluster_id": "c",
        "node_id": 1,
        "peers": {"1": "127.0.0.1:7001"},
        "client_port": 7101,
        "data_dir": str(tmp_path),
    }
    cert, key = ours.nodes[1]
    good = {"tls_ca": str(ours.ca), "tls_cert": str(cert), "tls_key": str(key)}
    assert Config.from_mapping(base | good).tls is not None
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    wrong_key = ours.nodes[2][1]
    for bad, needle in [
        ({"tls_ca": str(ours.ca)}, "tls_cert"),
        (good | {"tls_ca": str(tmp_path / "missing.pem")}, "cannot read"),
        (good | {"tls_ca": str(garbage)}, "not a valid PEM CA"),
        (good | {"tls_cert": str(garbage)}, "not a valid PEM certificate"),
        (good | {"tls_key": str(wrong_key)}, "not a valid PEM certificate"),
        (good | {"tls_key": 5}, "tls_key"),
    ]:
        with pytest.raises(ConfigError) as info:
            Config.from_mapping(base | bad)
        message = str(info.value)
        assert needle in message and "\n" not in message, message
        assert "PRIVATE KEY" not in message
    with pytest.raises(TlsError):
        server_context(TlsFiles(ours.ca), require_client_cert=True)
    assert isinstance(client_context(TlsFiles(ours.ca)), ssl.SSLContext)


def test_a_node_claiming_another_nodes_id_than_its_certificate_is_refused(
    pki: tuple[CertFiles, CertFiles], caplog: pytest.LogCaptureFixture
) -> None:
    # A valid certificate of the cluster CA for node 2, presented by a node that says
    # in its Hello that it is node 3: the signature proves membership, not identity.
    ours, _ = pki
    caplog.set_level(logging.INFO, logger="pyxos.net")

    async def main() -> None:
        tls = server_context(node_files(ours, 1), require_client_cert=True)

        async def body(server, inbox) -> None:  # type: ignore[no-untyped-def]
            impostor = PeerLinks(
                3,
                "a",
                {1: (HOST, server.port)},
                tls=client_context(node_files(ours, 2)),
                rng=random.Random(1),
                backoff_cap=0.1,
            )
            impostor.start()
            for i in range(10):
                impostor.send(1, accepted(i, src=3))
            await eventually(
                lambda: server.counters["tls_identity_refused"] >= 2, what="refusals counted"
            )
            await impostor.close()
            await eventually(lambda: not server.connections, what="refused connections freed")
            assert inbox.messages == []
            honest = PeerLinks(
                2, "a", {1: (HOST, server.port)}, tls=client_context(node_files(ours, 2))
            )
            honest.start()
            await eventually(lambda: honest.is_connected(1), what="the honest node's link")
            await honest.close()

        await with_server(body, tls=tls, known_nodes={2, 3})

    run(main)
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("claims to be node 3" in m and "names node 2" in m for m in refusals), refusals


def test_a_dialer_refuses_a_listener_holding_another_nodes_certificate(
    pki: tuple[CertFiles, CertFiles], caplog: pytest.LogCaptureFixture
) -> None:
    ours, _ = pki
    caplog.set_level(logging.INFO, logger="pyxos.net")

    async def main() -> None:
        # The listener is node 1 by its Hello checks, but holds node 2's certificate.
        tls = server_context(node_files(ours, 2), require_client_cert=True)

        async def body(server, inbox) -> None:  # type: ignore[no-untyped-def]
            links = PeerLinks(
                3,
                "a",
                {1: (HOST, server.port)},
                tls=client_context(node_files(ours, 3)),
                rng=random.Random(1),
                backoff_cap=0.1,
            )
            links.start()
            await eventually(
                lambda: links.counters["tls_identity_refused"] >= 2, what="refusals counted"
            )
            assert not links.is_connected(1)
            links.send(1, accepted(1, src=3))
            await links.close()
            assert inbox.messages == []

        await with_server(body, tls=tls)

    run(main)
    assert "names node 2" in caplog.text and "not node 1" in caplog.text
