"""Throwaway certificate authorities and the certificates they issue, for the TLS tests.

Owns: making EC P-256 keys (fast), a self-signed CA, server certificates with the loopback
names in their SANs (DNS localhost, IP 127.0.0.1, IP ::1) and client certificates whose CN is
a user name, all written as PEM files into a directory the caller gives.

Must never: write outside that directory, or make a key file anyone but its owner can read
(PostgreSQL refuses such a key, and a test key is still a key).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
from typing import NamedTuple, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_LIFETIME = datetime.timedelta(days=2)
_BACKDATE = datetime.timedelta(hours=1)  # clock skew between the test and OpenSSL


class Issued(NamedTuple):
    """A certificate and its key as PEM files, and the certificate's DER (what TLS sends)."""

    cert: str
    key: str
    der: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pgpool-tw tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(path: str, data: bytes, mode: int, owner: Optional[str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # O_CREAT's mode is ignored for an existing file
    if owner is not None:
        user = pwd.getpwnam(owner)
        os.chown(path, user.pw_uid, user.pw_gid)


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates.

    ``owner`` (an OS user name) is given to every file written, for a PostgreSQL server
    running as another user than the tests (the ``postgres`` user when they run as root).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = _new_key()
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write_ca(self, directory: str, owner: Optional[str] = None) -> str:
        """The CA certificate as ``<name>-ca.crt`` in ``directory``; returns its path."""
        path = os.path.join(directory, f"{self.name}-ca.crt")
        _write(path, self.pem, 0o644, owner)
        return path

    def issue_server(
        self,
        directory: str,
        common_name: str = "localhost",
        stem: Optional[str] = None,
        owner: Optional[str] = None,
        addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    ) -> Issued:
        """A server certificate for localhost and ``addresses`` (a fresh key and serial)."""
        names: list[x509.GeneralName] = [x509.DNSName("localhost")]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        if common_name != "localhost":
            names.insert(0, x509.DNSName(common_name))
        return self._issue(
            directory,
            stem or f"{self.name}-server-{common_name}",
            common_name,
            [
                x509.SubjectAlternativeName(names),
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            ],
            owner,
        )

    def issue_client(self, common_name: str, directory: str, owner: Optional[str] = None) -> Issued:
        """A client certificate whose CN is ``common_name`` (a user name, for ``cert`` logins)."""
        return self._issue(
            directory,
            f"{self.name}-client-{common_name}",
            common_name,
            [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])],
            owner,
        )

    def _issue(
        self,
        directory: str,
        stem: str,
        common_name: str,
        extensions: list[x509.ExtensionType],
        owner: Optional[str],
    ) -> Issued:
        key = _new_key()
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        cert_path = os.path.join(directory, f"{stem}.crt")
        key_path = os.path.join(directory, f"{stem}.key")
        _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644, owner)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write(key_path, key_pem, 0o600, owner)
        return Issued(cert_path, key_path, certificate.public_bytes(serialization.Encoding.DER))
