"""pool_hba.conf and pool_passwd as one snapshot that client sessions read.

Loaded at start (where an error refuses to start) and on reload (where an error
keeps the previous snapshot).  A snapshot is never changed in place: a reload
swaps in a new one, so a login in progress sees one consistent set of rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pgpool_tw.config.hba import HbaError, HbaRule, load_hba
from pgpool_tw.config.passwd import PasswdError, ScramSecret, Secret, load_passwd
from pgpool_tw.config.settings import Config


class AuthFilesError(Exception):
    """One line naming the file (and line) that could not be used."""


@dataclass(frozen=True)
class AuthFiles:
    rules: tuple[HbaRule, ...] = ()
    secrets: dict[str, Secret] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def mostly_scram(self) -> bool:
        """Whether most pool_passwd users have SCRAM secrets (ties count as SCRAM).

        An md5 rule gives a user with a SCRAM secret a SCRAM exchange; an unknown
        user must get the exchange most users get, or the flow tells them apart.
        """
        scram = sum(isinstance(secret, ScramSecret) for secret in self.secrets.values())
        return 2 * scram >= len(self.secrets)


def load_auth_files(config: Config) -> AuthFiles:
    """The files enable_pool_hba needs; an empty snapshot when it is off."""
    if not config.enable_pool_hba:
        return AuthFiles()
    try:
        rules = load_hba(config.pool_hba_file)
        entries: dict[str, Secret] = {}
        warnings: list[str] = []
        if config.pool_passwd:
            entries, warnings = load_passwd(config.pool_passwd)
    except (HbaError, PasswdError) as e:
        raise AuthFilesError(str(e)) from None
    return AuthFiles(rules, entries, tuple(warnings))
