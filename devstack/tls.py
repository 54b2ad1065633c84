"""Throwaway TLS certificates for the local stack: one CA, a server and a client certificate.

The server certificate names ``localhost``, ``127.0.0.1`` and ``::1``, so clients that verify the
host name (redis-py, librdkafka) accept it for every loopback address the stack listens on. The
same files serve Redis (``--tls-cert-file``) and Kafka (a PEM keystore), so a client needs one
CA file for both. Keys are unencrypted and live only in a server's temp dir.

    certs = make_certificates(run_dir / "tls")
    certs.ca_cert      # PEM file clients trust (redis.tls_ca_file, kafka.ssl_ca_location)
    certs.client_cert  # for mutual TLS, with certs.client_key
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from devstack.exceptions import MissingToolError

#: Host names and addresses the server certificate is valid for.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_VALID_DAYS = 7  # a test run lasts minutes; a week covers a `python -m devstack up` session


@dataclass(frozen=True)
class TlsCertificates:
    """PEM files of one throwaway PKI, all in ``directory``."""

    directory: Path
    #: The CA certificate: what clients trust.
    ca_cert: Path
    #: Server certificate (signed by the CA) and its unencrypted PKCS#8 key.
    server_cert: Path
    server_key: Path
    #: The server key followed by its certificate: Kafka's ``ssl.keystore.type=PEM`` file.
    server_keystore: Path
    #: Client certificate (CN ``streamseg-client``, signed by the CA) and its key, for mTLS.
    client_cert: Path
    client_key: Path


def make_certificates(directory: Path) -> TlsCertificates:
    """Generate a CA, a loopback server certificate and a client certificate into ``directory``
    (created if missing; files are readable by the owner only). Takes well under a second
    (EC P-256 keys).

    Raises `MissingToolError` when the ``cryptography`` package is not installed.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # a dev-only dependency: say how to get it
        raise MissingToolError(
            "TLS for the local stack needs the `cryptography` package: "
            "`pip install -c constraints.txt cryptography` (make setup installs it)."
        ) from exc

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)  # tolerate a little clock skew
    not_after = now + datetime.timedelta(days=_VALID_DAYS)

    def name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "streamseg devstack"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,  # Kafka's PEM keystore reads PKCS#8 only
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("streamseg devstack CA")
    ca = (
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
                digital_signature=True,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server_sans: list[x509.GeneralName] = []
    for host in LOOPBACK_NAMES:
        try:
            server_sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            server_sans.append(x509.DNSName(host))
    server, server_key = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH, server_sans)
    client, client_key = leaf("streamseg-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])

    pem = serialization.Encoding.PEM
    certs = TlsCertificates(
        directory=directory,
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        server_keystore=directory / "server-keystore.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    contents = {
        certs.ca_cert: ca.public_bytes(pem),
        certs.server_cert: server.public_bytes(pem),
        certs.server_key: key_pem(server_key),
        certs.server_keystore: key_pem(server_key) + server.public_bytes(pem),
        certs.client_cert: client.public_bytes(pem),
        certs.client_key: key_pem(client_key),
    }
    for path, data in contents.items():
        path.touch(mode=0o600)
        path.write_bytes(data)
    return certs
