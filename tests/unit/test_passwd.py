"""pgpool_tw.config.passwd: pool_passwd entries, safe rewriting and the pgpool-tw-passwd CLI."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import stat
import sys
import tempfile

import scramp
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config import passwd
from pgpool_tw.config.passwd import (
    Md5Secret,
    PasswdError,
    PlainSecret,
    ScramSecret,
    Secret,
    load_passwd,
    main,
    md5_entry,
    parse_passwd,
    parse_secret,
    scram_entry,
    set_entry,
    text_entry,
)

SALT = b"0123456789abcdef"
PASSWORD = "s3cr:et pässword"


def scramp_accepts(secret: ScramSecret, password: str) -> bool:
    """Whether scramp's server, holding ``secret``, accepts scramp's client using ``password``."""
    mechanism = scramp.ScramMechanism()
    server = mechanism.make_server(
        lambda user: (secret.salt, secret.stored_key, secret.server_key, secret.iterations)
    )
    client = scramp.ScramClient(["SCRAM-SHA-256"], "someone", password)
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    try:
        server.set_client_final(client.get_client_final())
    except scramp.ScramException:
        return False
    client.set_server_final(server.get_server_final())
    return True


class EntryTests(SynchronousTestCase):
    def test_md5_entry_is_postgres_md5(self) -> None:
        """md5_entry is 'md5' + md5(password + user), as PostgreSQL and pg_md5 write it."""
        expected = "md5" + hashlib.md5(b"passworduser").hexdigest()
        self.assertEqual(md5_entry("user", "password"), f"user:{expected}")
        self.assertEqual(expected, "md54d45974e13472b5a0be3533de4666414")  # pg_md5's own example

    def test_scram_entry_verifies_with_scramp(self) -> None:
        """A scram_entry secret lets scramp's client log in to scramp's server, and no other."""
        entry = scram_entry("alice", PASSWORD)
        self.assertTrue(entry.startswith("alice:SCRAM-SHA-256$4096:"))
        secret = parse_secret(entry.split(":", 1)[1])
        assert isinstance(secret, ScramSecret)
        self.assertEqual(len(secret.salt), 16)
        self.assertTrue(scramp_accepts(secret, PASSWORD))
        self.assertFalse(scramp_accepts(secret, PASSWORD + "x"))

    def test_scram_entry_matches_scramp_keys(self) -> None:
        """With a fixed salt, scram_entry's keys are exactly scramp's."""
        salt, stored, server, iterations = scramp.ScramMechanism().make_auth_info(
            "pw", iteration_count=5000, salt=SALT
        )
        b64 = base64.b64encode
        expected = (
            f"u:SCRAM-SHA-256$5000:{b64(salt).decode()}$"
            f"{b64(stored).decode()}:{b64(server).decode()}"
        )
        self.assertEqual(scram_entry("u", "pw", iterations=5000, salt=SALT), expected)

    def test_scram_salts_differ(self) -> None:
        """Each scram_entry call draws a fresh salt."""
        self.assertNotEqual(scram_entry("u", "pw"), scram_entry("u", "pw"))

    def test_text_entry(self) -> None:
        """text_entry is pgpool-II's TEXT form."""
        self.assertEqual(text_entry("u", "a:b"), "u:TEXTa:b")

    def test_entries_refuse_bad_names_and_passwords(self) -> None:
        """Names with ':' or newlines and empty or multi-line passwords are refused."""
        for builder in (md5_entry, scram_entry, text_entry):
            self.assertRaises(ValueError, builder, "a:b", "pw")
            self.assertRaises(ValueError, builder, "", "pw")
            self.assertRaises(ValueError, builder, "#u", "pw")
            self.assertRaises(ValueError, builder, "u", "")
            self.assertRaises(ValueError, builder, "u", "p\nw")


class ParseTests(SynchronousTestCase):
    def test_three_kinds_round_trip(self) -> None:
        """md5, SCRAM and TEXT entries parse back into their secrets."""
        scram = scram_entry("s", PASSWORD, salt=SALT)
        text = "\n".join([md5_entry("m", PASSWORD), scram, text_entry("t", PASSWORD)]) + "\n"
        entries, warnings = parse_passwd(text)
        self.assertEqual(warnings, [])
        self.assertEqual(entries["m"], Md5Secret(hashlib.md5(PASSWORD.encode() + b"m").hexdigest()))
        _, stored, server, _ = scramp.ScramMechanism().make_auth_info(PASSWORD, salt=SALT)
        self.assertEqual(entries["s"], ScramSecret(4096, SALT, stored, server))
        self.assertEqual(entries["t"], PlainSecret(PASSWORD))

    def test_unprefixed_text_and_colons(self) -> None:
        """A password with no prefix is text (as in pgpool-II); only the first ':' splits."""
        entries, _ = parse_passwd("u:plain:with:colons\nv:TEXT\\x y\n")
        self.assertEqual(
            entries, {"u": PlainSecret("plain:with:colons"), "v": PlainSecret("\\x y")}
        )

    def test_uppercase_md5_normalised(self) -> None:
        """Upper-case md5 hex is accepted and kept lower-case."""
        entries, _ = parse_passwd("u:md5" + "AB" * 16)
        self.assertEqual(entries["u"], Md5Secret("ab" * 16))

    def test_comments_blanks_crlf(self) -> None:
        """Comments and blank lines are skipped; CRLF line ends are not part of the secret."""
        entries, _ = parse_passwd("# users\n\n  \nu:TEXTpw\r\n")
        self.assertEqual(entries, {"u": PlainSecret("pw")})

    def test_aes_warns_and_is_ignored(self) -> None:
        """An AES line is a warning naming file, line and user, and the entry is ignored."""
        entries, warnings = parse_passwd("a:TEXTx\nb:AESabcdef==\n", "etc/pool_passwd")
        self.assertEqual(list(entries), ["a"])
        self.assertEqual(len(warnings), 1)
        self.assertTrue(warnings[0].startswith('etc/pool_passwd:2: user "b": AES'), warnings)
        self.assertNotIn("abcdef", warnings[0])

    def test_duplicate_first_wins(self) -> None:
        """A user listed twice keeps the first line, as pgpool-II reads it, with a warning."""
        entries, warnings = parse_passwd("u:TEXTone\nu:TEXTtwo\n")
        self.assertEqual(entries, {"u": PlainSecret("one")})
        self.assertIn("line 1", warnings[0])

    def test_malformed_lines(self) -> None:
        """Malformed lines raise PasswdError with file:line and never echo the secret."""
        cases = {
            "nocolon": "no ':'",
            ":TEXTpw": "user name",
            "u:": "empty",
            "u:TEXT": "empty",
            "u:md5abc123": "32 hex",
            "u:SCRAM-SHA-256$4096:c2FsdA==$zz": "SCRAM entry must read",
            "u:SCRAM-SHA-256$4096:c2FsdA==$!!!!:AAAA": "base64",
            "u:SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA": "iteration",
            "u:SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA": "32 bytes",
        }
        for line, words in cases.items():
            with self.assertRaises(PasswdError, msg=line) as caught:
                parse_passwd("# first\n" + line + "\n", "pp")
            text = str(caught.exception)
            self.assertTrue(text.startswith("pp:2: "), text)
            self.assertIn(words, text)
            secret = line.partition(":")[2]
            if len(secret) > 4:
                self.assertNotIn(secret, text)

    def test_parse_secret_reads_rolpassword(self) -> None:
        """parse_secret reads PostgreSQL's pg_authid forms as well."""
        secret = parse_secret("md5" + "0" * 32)
        self.assertEqual(secret, Md5Secret("0" * 32))
        self.assertRaises(ValueError, parse_secret, "AESxyz")

    def test_secrets_hidden_from_repr(self) -> None:
        """Secrets do not print their password or keys."""
        entries, _ = parse_passwd(
            text_entry("t", "hunter2") + "\n" + scram_entry("s", "pw", salt=SALT) + "\n"
        )
        self.assertNotIn("hunter2", repr(entries["t"]))
        scram = entries["s"]
        assert isinstance(scram, ScramSecret)
        self.assertNotIn(repr(scram.stored_key), repr(scram))


class FileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)
        self.path = os.path.join(self.directory, "pool_passwd")

    def write(self, text: str, mode: int = 0o600) -> None:
        """Put ``text`` in the test's pool_passwd with ``mode``."""
        with open(self.path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(self.path, mode)

    def read(self) -> str:
        """The test's pool_passwd as text."""
        with open(self.path, encoding="utf-8") as handle:
            return handle.read()

    def test_load_warns_when_others_can_read(self) -> None:
        """A file readable by group or others loads with a chmod warning first."""
        self.write("u:TEXTpw\n", 0o644)
        entries, warnings = load_passwd(self.path)
        self.assertEqual(entries, {"u": PlainSecret("pw")})
        self.assertEqual(len(warnings), 1)
        self.assertIn("0644", warnings[0])
        self.assertIn("chmod 0600", warnings[0])
        os.chmod(self.path, 0o640)  # group access alone is enough to warn
        self.assertIn("0640", load_passwd(self.path)[1][0])

    def test_load_private_file_no_warning(self) -> None:
        """A 0600 file loads without warnings."""
        self.write("u:TEXTpw\n", 0o600)
        self.assertEqual(load_passwd(self.path)[1], [])

    def test_load_errors(self) -> None:
        """A missing or non-UTF-8 file is a one-line PasswdError naming it."""
        with self.assertRaises(PasswdError) as caught:
            load_passwd(self.path)
        self.assertEqual(
            str(caught.exception), f"{self.path}: cannot read: No such file or directory"
        )
        with open(self.path, "wb") as handle:
            handle.write(b"u:TEXT\xff\n")
        self.assertRaises(PasswdError, load_passwd, self.path)

    def test_set_entry_creates_0600(self) -> None:
        """A new file is created with mode 0600 and the one entry."""
        set_entry(self.path, "u", text_entry("u", "pw"))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(self.read(), "u:TEXTpw\n")

    def test_set_entry_replaces_and_keeps_the_rest(self) -> None:
        """Replacing one user keeps other lines, comments, blanks and order; duplicates go."""
        self.write("# pool users\na:TEXTone\n\nb:md5" + "0" * 32 + "\na:TEXTold-dup\n# end")
        set_entry(self.path, "a", text_entry("a", "new"))
        self.assertEqual(self.read(), "# pool users\na:TEXTnew\n\nb:md5" + "0" * 32 + "\n# end\n")
        set_entry(self.path, "c", md5_entry("c", "pw"))
        self.assertTrue(self.read().endswith("# end\n" + md5_entry("c", "pw") + "\n"))
        self.assertEqual(os.listdir(self.directory), ["pool_passwd"])  # no temp file left

    def test_set_entry_keeps_existing_mode(self) -> None:
        """An existing file keeps its mode (0640 stays 0640)."""
        self.write("a:TEXTx\n", 0o640)
        set_entry(self.path, "a", text_entry("a", "y"))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)

    def test_set_entry_refuses_wrong_lines(self) -> None:
        """An entry for another user, or a malformed one, is refused and nothing is written."""
        self.assertRaises(ValueError, set_entry, self.path, "a", text_entry("b", "pw"))
        self.assertRaises(ValueError, set_entry, self.path, "a", "a:md5abc")
        self.assertFalse(os.path.exists(self.path))


class CliTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.path = os.path.join(directory, "pool_passwd")
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def run_cli(self, argv: list[str], stdin: str = "") -> int:
        """main() with ``stdin`` as standard input."""
        self.patch(sys, "stdin", io.StringIO(stdin))
        return main(argv)

    def secret(self, user: str) -> Secret:
        """The secret the test's pool_passwd holds for ``user``."""
        entries, _ = load_passwd(self.path)
        return entries[user]

    def assert_quiet_about(self, password: str) -> None:
        """Neither stdout nor stderr carries the password."""
        self.assertNotIn(password, self.stdout.getvalue() + self.stderr.getvalue())

    def test_stdin_scram_is_default(self) -> None:
        """--stdin without a form stores a SCRAM secret that verifies, and prints no password."""
        self.assertEqual(self.run_cli(["-f", self.path, "--stdin", "alice"], "Pa55word\n"), 0)
        secret = self.secret("alice")
        assert isinstance(secret, ScramSecret)
        self.assertTrue(scramp_accepts(secret, "Pa55word"))
        self.assert_quiet_about("Pa55word")
        self.assertIn('user "alice"', self.stdout.getvalue())

    def test_stdin_md5(self) -> None:
        """--md5 stores PostgreSQL's md5 secret."""
        self.assertEqual(
            self.run_cli(["-f", self.path, "--md5", "--stdin", "bob"], "Pa55word\n"), 0
        )
        self.assertEqual(self.secret("bob"), Md5Secret(hashlib.md5(b"Pa55wordbob").hexdigest()))
        self.assert_quiet_about("Pa55word")

    def test_stdin_text(self) -> None:
        """--text stores the password itself, without the newline (CRLF too)."""
        self.assertEqual(
            self.run_cli(["-f", self.path, "--text", "--stdin", "c"], "Pa55word\r\n"), 0
        )
        self.assertEqual(self.secret("c"), PlainSecret("Pa55word"))
        self.assert_quiet_about("Pa55word")

    def test_getpass_twice(self) -> None:
        """Without --stdin the password is asked twice; a mismatch fails with exit 1."""
        answers = iter(["Pa55word", "Pa55word", "one", "two"])
        self.patch(passwd.getpass, "getpass", lambda prompt: next(answers))
        self.assertEqual(self.run_cli(["-f", self.path, "--text", "d"]), 0)
        self.assertEqual(self.secret("d"), PlainSecret("Pa55word"))
        self.assertEqual(self.run_cli(["-f", self.path, "--text", "e"]), 1)
        self.assertEqual(self.stderr.getvalue(), "pgpool-tw-passwd: the passwords do not match\n")
        self.assert_quiet_about("Pa55word")

    def test_empty_password_fails(self) -> None:
        """An empty stdin is exit 1 with one line, and no file is written."""
        self.assertEqual(self.run_cli(["-f", self.path, "--stdin", "u"], ""), 1)
        self.assertEqual(len(self.stderr.getvalue().splitlines()), 1)
        self.assertFalse(os.path.exists(self.path))

    def test_usage_error_is_one_line_exit_1(self) -> None:
        """Two forms at once is a usage error: exit 1 with one line."""
        self.assertEqual(self.run_cli(["--md5", "--text", "u"], "pw\n"), 1)
        self.assertEqual(len(self.stderr.getvalue().splitlines()), 1)

    def test_bad_user_fails(self) -> None:
        """A user name with ':' is refused with exit 1."""
        self.assertEqual(self.run_cli(["-f", self.path, "--stdin", "a:b"], "Pa55word\n"), 1)
        self.assertIn("user name", self.stderr.getvalue())
        self.assert_quiet_about("Pa55word")

    def test_unwritable_directory_fails(self) -> None:
        """A path in a missing directory is exit 1 naming the file."""
        path = os.path.join(self.path, "nope", "pool_passwd")
        self.assertEqual(self.run_cli(["-f", path, "--stdin", "u"], "Pa55word\n"), 1)
        self.assertTrue(self.stderr.getvalue().startswith(f"pgpool-tw-passwd: {path}: "))
        self.assert_quiet_about("Pa55word")
