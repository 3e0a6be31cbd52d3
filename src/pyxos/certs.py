"""``pyxos certs init``: a CA and per-node certificates for a local cluster.

Theory of operation
-------------------
Mutual TLS between nodes (``pyxos.net.tls``) needs a cluster CA and, for every node, a
certificate signed by it. ``init_certs`` makes them with the ``cryptography``
package: one self-signed CA (``ca.pem``, ``ca.key``), ``node<N>.pem``/``node<N>.key``
for nodes 1..N and ``client.pem``/``client.key`` for clients that want to present a
certificate; ``add_node_cert`` signs one more node's with the same CA (a node added to
the cluster later, ``pyxos cluster add-node``). Keys are ECDSA P-256; every private
key file is created with mode 0600 (never world-readable, not even for a moment: it
is opened with that mode). Every leaf certificate names 127.0.0.1 and localhost (plus
any ``hosts``) as subject alternative names, because the dialer checks the server's
certificate against the address it dialed. This is for local and test clusters; a
production cluster would use its own PKI and keep the CA key offline.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["CertFiles", "add_node_cert", "init_certs"]


@dataclass(frozen=True, slots=True)
class CertFiles:
    """The files ``init_certs`` wrote."""

    ca: Path
    """The CA certificate (trust anchor of every node and client)."""
    ca_key: Path
    """The CA's private key (only needed to make more certificates)."""
    nodes: dict[int, tuple[Path, Path]]
    """Node id -> (certificate, key)."""
    client: tuple[Path, Path]
    """A client certificate and key."""


def _write_key(path: Path, data: bytes) -> None:
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def init_certs(
    directory: str | Path,
    nodes: int = 3,
    *,
    hosts: Iterable[str] = (),
    days: int = 825,
    cluster: str = "pyxos",
) -> CertFiles:
    """Make a CA, ``nodes`` node certificates and a client certificate in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, not {nodes}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=days)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, ca_key_path = out / "ca.pem", out / "ca.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key_path, key_pem(ca_key))

    names = _alt_names(hosts)

    def leaf(common_name: str, stem: str) -> tuple[Path, Path]:
        return _write_leaf(out, stem, common_name, names, ca_name, ca_key, not_before, not_after)

    node_files = {n: leaf(f"{cluster} node {n}", f"node{n}") for n in range(1, nodes + 1)}
    client = leaf(f"{cluster} client", "client")
    return CertFiles(ca_path, ca_key_path, node_files, client)


def add_node_cert(
    directory: str | Path,
    node_id: int,
    *,
    hosts: Iterable[str] = (),
    days: int = 825,
    cluster: str = "pyxos",
) -> tuple[Path, Path]:
    """Sign a certificate for node ``node_id`` with the CA ``init_certs`` made in
    ``directory`` (``ca.pem``, ``ca.key``); returns ``(node<N>.pem, node<N>.key)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(directory)
    ca_cert = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{out / 'ca.key'} is not the EC key init_certs makes")
    now = datetime.datetime.now(datetime.UTC)
    return _write_leaf(
        out,
        f"node{node_id}",
        f"{cluster} node {node_id}",
        _alt_names(hosts),
        ca_cert.subject,
        ca_key,
        now - datetime.timedelta(minutes=5),
        now + datetime.timedelta(days=days),
    )


def _alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """The subject alternative names of a node or client certificate: loopback, then
    ``hosts`` (IP addresses or DNS names), without repeats."""
    from cryptography import x509

    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    for host in hosts:
        try:
            general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            general = x509.DNSName(host)
        if general not in names:
            names.append(general)
    return names


def _write_leaf(
    out: Path,
    stem: str,
    common_name: str,
    names: list[x509.GeneralName],
    ca_name: x509.Name,
    ca_key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> tuple[Path, Path]:
    """Sign a server-and-client certificate with the CA; write ``<stem>.pem`` and
    ``<stem>.key`` (owner-only) in ``out``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = out / f"{stem}.pem", out / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return cert_path, key_path
