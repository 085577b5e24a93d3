"""config/pcpconf.py: pcp.conf's users, its bad lines, and where the file is looked for."""

from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config.pcpconf import load_pcp_conf, parse_pcp_conf, pcp_path

GOOD = "5ebe2294ecd0e0f08eab7690d2a6ee69"


class PcpConfTests(SynchronousTestCase):
    def test_users_comments_and_blank_lines(self) -> None:
        """user:md5 lines are read (hash lower-cased); comments and blank lines skipped."""
        users = parse_pcp_conf(f"# pcp.conf\n\nadmin:{GOOD.upper()}\n  ops:{GOOD}  \n", "p")
        self.assertEqual(dict(users.users), {"admin": GOOD, "ops": GOOD})
        self.assertEqual(users.warnings, ())

    def test_bad_lines_warn_with_file_and_line_and_are_skipped(self) -> None:
        """Each bad line is one warning naming file and line; the good lines still work."""
        text = f"nocolon\n:{GOOD}\nplain:secret\nadmin:{GOOD}\nadmin:{'0' * 32}\n"
        users = parse_pcp_conf(text, "/etc/pcp.conf")
        self.assertEqual(dict(users.users), {"admin": GOOD})
        self.assertEqual(len(users.warnings), 4)
        for number, warning in zip((1, 2, 3, 5), users.warnings):
            self.assertTrue(warning.startswith(f"/etc/pcp.conf:{number}: "), warning)
        self.assertIn("not the password itself", users.warnings[2])
        self.assertIn("listed again", users.warnings[3])

    def test_missing_file_is_none(self) -> None:
        self.assertIsNone(load_pcp_conf("/nonexistent/pcp.conf"))

    def test_path_beside_pgpool_conf_or_given(self) -> None:
        """pcp.conf is looked for beside pgpool.conf; -F wins; no file, no path."""
        with tempfile.TemporaryDirectory() as tmp:
            conf = os.path.join(tmp, "pgpool.conf")
            self.assertEqual(pcp_path(conf), os.path.join(tmp, "pcp.conf"))
            self.assertEqual(pcp_path(conf, "/x/my.conf"), "/x/my.conf")
            path = os.path.join(tmp, "pcp.conf")
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(f"admin:{GOOD}\n")
            loaded = load_pcp_conf(path)
            assert loaded is not None
            self.assertEqual(dict(loaded.users), {"admin": GOOD})
        self.assertIsNone(pcp_path(None))
