"""Deciding how a client logs in when enable_pool_hba is on.

pgpool-II's ClientAuthentication: the first pool_hba.conf rule that fits the
connection decides; ``trust`` lets the client in, ``reject`` and no rule refuse
it with PostgreSQL's words, and password methods run an exchange against
pool_passwd (``protocol.auth.FrontendAuth``).  A ``Login`` remembers what that
proved, so the pooler can answer the server's own password request
(``BackendAuth``) and may hand the client pooled connections.  Must never mark
a login verified unless the rule was trust or the exchange succeeded in this
very login (pgpool-II's CVE-2025-46801 was a reused connection that skipped it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from pgpool_tw.config.authfiles import AuthFiles
from pgpool_tw.config.hba import NO_MATCH_SQLSTATE, match, no_match_message, reject_message
from pgpool_tw.protocol.auth import FrontendAuth
from pgpool_tw.protocol.backend_auth import BackendAuth
from pgpool_tw.protocol.credentials import Secret
from pgpool_tw.protocol.messages import error_response


@dataclass
class Login:
    """One client's login as far as the pooler has seen it."""

    user: str
    secret: Optional[Secret]
    exchange: Optional[FrontendAuth]
    #: Trust, or the pooler checked the password in this login.
    verified: bool = False
    client_key: Optional[bytes] = None

    def backend_auth(self) -> Optional[BackendAuth]:
        """What answers a server's password request, or None when pool_passwd can't."""
        if self.secret is None:
            return None
        return BackendAuth(self.user, self.secret, self.client_key)


def begin(
    files: AuthFiles,
    allow_cleartext: bool,
    user: str,
    database: str,
    address: Optional[str],
    ssl: bool = False,
    certificate_name: Optional[str] = None,
) -> Union[Login, bytes]:
    """The Login to carry out, or the FATAL ErrorResponse that refuses the client.

    ``address`` is the client's IP address, or None for a unix-socket client;
    ``certificate_name`` the CN of the client certificate TLS verified, if any.
    """
    rule = match(
        files.rules, local=address is None, address=address, ssl=ssl, database=database, user=user
    )
    if rule is None:
        return error_response(NO_MATCH_SQLSTATE, no_match_message(address, user, database, ssl))
    secret = files.secrets.get(user)
    method = rule.method
    # As PostgreSQL: clientcert wants a verified certificate on top of the method,
    # and verify-full also wants its CN to be the user name.
    clientcert = rule.option("clientcert") if method != "cert" else None
    missing = clientcert in ("verify-ca", "verify-full") and certificate_name is None
    if missing or (clientcert == "verify-full" and certificate_name != user):
        why = "no client certificate" if certificate_name is None else "its CN differs"
        return error_response(
            NO_MATCH_SQLSTATE, f'certificate authentication failed for user "{user}" ({why})'
        )
    if method == "trust":
        return Login(user, secret, None, verified=True)
    if method == "reject":
        return error_response(NO_MATCH_SQLSTATE, reject_message(address, user, database, ssl))
    if method == "cert":
        if certificate_name is not None and certificate_name == user:
            return Login(user, secret, None, verified=True)
        why = "no client certificate" if certificate_name is None else "its CN differs"
        return error_response(
            NO_MATCH_SQLSTATE,
            f'certificate authentication failed for user "{user}" ({why})',
        )
    if method == "password" and not allow_cleartext:
        return error_response(
            NO_MATCH_SQLSTATE,
            f"pool_hba.conf line {rule.line} asks for a cleartext password, "
            "which allow_clear_text_frontend_auth does not allow",
        )
    if method == "md5" and secret is None and files.mostly_scram:
        method = "scram-sha-256"  # an unknown user's fake exchange looks like most users'
    return Login(user, secret, FrontendAuth(method, user, secret, allow_cleartext))
