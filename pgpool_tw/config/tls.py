"""TLS contexts from the settings: the clients' side and the servers' side.

The client side follows pgpool-II's settings (``ssl``, ``ssl_key``,
``ssl_cert``, ``ssl_ca_cert``, ``ssl_ciphers``, ``ssl_min_protocol_version``,
``ssl_prefer_server_ciphers``).  The server side follows PgBouncer's names,
since pgpool-II has none: ``server_tls_sslmode`` (disable, allow, prefer,
require, verify-ca, verify-full; libpq's meanings, default prefer) and
``server_tls_ca_file``.  Every file is read and every context built here, at
start or reload, so a bad file fails there with one line and never in the
middle of a client's handshake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pgpool_tw.config.settings import BackendNode, Config
from pgpool_tw.net import twisted_private

try:  # twisted[tls]; without it the pooler still runs, in plaintext only (as libpq without SSL)
    from OpenSSL import SSL, crypto
    from twisted.internet import ssl
except ImportError:  # pragma: no cover - exercised on installs without pyOpenSSL
    SSL = crypto = ssl = None  # type: ignore[assignment]

_VERSIONS = (
    {
        "TLSv1": ssl.TLSVersion.TLSv1_0,
        "TLSv1.1": ssl.TLSVersion.TLSv1_1,
        "TLSv1.2": ssl.TLSVersion.TLSv1_2,
        "TLSv1.3": ssl.TLSVersion.TLSv1_3,
    }
    if ssl is not None
    else {}
)
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class TLSConfigError(Exception):
    """One line: which setting or file could not be used, and why."""


def _read(path: str, setting: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as e:
        raise TLSConfigError(f"{setting} {path}: cannot read: {e.strerror or e}") from None


def _certificates(path: str, setting: str) -> list[Any]:
    """Every certificate in a PEM file (a CA file may hold a chain of them)."""
    data = _read(path, setting)
    marker = b"-----END CERTIFICATE-----"
    blocks = [block + marker for block in data.split(marker) if b"-----BEGIN" in block]
    try:
        certificates = [crypto.load_certificate(crypto.FILETYPE_PEM, b) for b in blocks]
    except crypto.Error as e:
        raise TLSConfigError(f"{setting} {path}: not a PEM certificate: {e}") from None
    if not certificates:
        raise TLSConfigError(f"{setting} {path}: no certificate in it")
    return certificates


@dataclass(frozen=True)
class TLSContexts:
    """What new connections use; a reload swaps in a whole new one."""

    #: Offered to clients after SSLRequest (a CertificateOptions); None answers N.
    frontend: Optional[Any] = None
    sslmode: str = "prefer"
    _ca: Optional[tuple[Any, ...]] = None

    def for_server(self, node: BackendNode) -> Optional[Any]:
        """The client-side TLS creator for ``node``, or None for plaintext.

        libpq never uses TLS over a unix socket; neither does the pooler.
        """
        if node.is_unix or self.sslmode in ("disable", "allow"):
            return None
        if self.sslmode == "verify-full":
            assert self._ca is not None
            return ssl.optionsForClientTLS(
                node.hostname,
                trustRoot=ssl.trustRootFromCertificates([ssl.Certificate(c) for c in self._ca]),
            )
        if self.sslmode == "verify-ca":
            return ssl.CertificateOptions(
                verify=True, caCerts=list(self._ca or ()), raiseMinimumTo=ssl.TLSVersion.TLSv1_2
            )
        return _encrypt_only()

    def for_allow_retry(self, node: BackendNode) -> Optional[Any]:
        """``allow``'s second try: TLS, after the server refused the plaintext login.

        As libpq's allow: plaintext first, TLS (unverified) only when that fails.
        """
        if self.sslmode != "allow" or node.is_unix or ssl is None:
            return None
        return _encrypt_only()

    @property
    def server_tls_required(self) -> bool:
        return self.sslmode in ("require", "verify-ca", "verify-full")


def _encrypt_only() -> Any:
    """TLS with no certificate check: prefer, require, and allow's second try."""
    return ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


def load_tls(config: Config) -> TLSContexts:
    """Build both sides' contexts from ``config``; TLSConfigError says what is wrong."""
    if ssl is None:
        if config.ssl or config.server_tls_sslmode in ("require", "verify-ca", "verify-full"):
            raise TLSConfigError(
                "TLS settings need pyOpenSSL, which is not installed (pip install 'twisted[tls]')"
            )
        return TLSContexts(sslmode="disable")  # prefer/allow without TLS: plaintext
    frontend = _frontend(config) if config.ssl else None
    ca: Optional[tuple[Any, ...]] = None
    if config.server_tls_sslmode in ("verify-ca", "verify-full"):
        if not config.server_tls_ca_file:
            raise TLSConfigError(
                f"server_tls_sslmode {config.server_tls_sslmode} needs server_tls_ca_file"
            )
        ca = tuple(_certificates(config.server_tls_ca_file, "server_tls_ca_file"))
    return TLSContexts(frontend, config.server_tls_sslmode, ca)


def _frontend(config: Config) -> Any:
    if not config.ssl_cert or not config.ssl_key:
        raise TLSConfigError("ssl = on needs ssl_cert and ssl_key")
    certificate = _certificates(config.ssl_cert, "ssl_cert")
    key_pem = _read(config.ssl_key, "ssl_key")
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error as e:
        raise TLSConfigError(f"ssl_key {config.ssl_key}: not a PEM private key: {e}") from None
    ca = _certificates(config.ssl_ca_cert, "ssl_ca_cert") if config.ssl_ca_cert else []
    version = _VERSIONS.get(config.ssl_min_protocol_version)
    if version is None:
        raise TLSConfigError(
            f"ssl_min_protocol_version {config.ssl_min_protocol_version!r}: "
            f"expected one of {', '.join(_VERSIONS)}"
        )
    try:
        ciphers = ssl.AcceptableCiphers.fromOpenSSLCipherString(config.ssl_ciphers)
        options = ssl.CertificateOptions(
            privateKey=key,
            certificate=certificate[0],
            extraCertChain=certificate[1:],
            verify=bool(ca),
            caCerts=ca or None,
            requireCertificate=False,  # asked for, required only by an hba 'cert' line
            # libpq 17+ offers ALPN "postgresql"; with no protocol of its own
            # Twisted's ALPN callback makes OpenSSL fail the handshake.
            acceptableProtocols=[b"postgresql"],
            acceptableCiphers=ciphers,
            raiseMinimumTo=version,
        )
        if not config.ssl_prefer_server_ciphers:
            # Twisted always sets it; pgpool-II leaves the choice to the setting.
            twisted_private.clear_option(options, SSL.OP_CIPHER_SERVER_PREFERENCE)
        options.getContext()  # build now: a key that does not match fails here
    except (SSL.Error, ValueError) as e:
        raise TLSConfigError(f"ssl_cert/ssl_key: cannot make a TLS context: {e}") from None
    return options
