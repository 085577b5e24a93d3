"""pgpool_tw.config.escapes: pgpool-II's % escapes, each value reaching the program as
exactly its text, checked by running the expanded line with real shells."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from typing import Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config.escapes import (
    ESCAPES,
    CommandValues,
    EscapeError,
    check,
    expand,
    unknown_escapes,
)

#: Every shell the line should mean the same in: sh (dash on Debian) and bash when present.
SHELLS = [path for path in ("/bin/sh", shutil.which("bash"), shutil.which("dash")) if path]
#: printf's own %s, written %%s so pgpool-II's escapes leave it alone.
PRINT = "printf '%%s\\0'"

VALUES = CommandValues(
    node_id=2,
    host="db2.example",
    port=5433,
    data_directory="/var/lib/pg/2",
    new_main_id=0,
    new_main_host="db0.example",
    new_main_port=5432,
    new_main_data_directory="/var/lib/pg/0",
    old_main_id=1,
    old_primary_id=1,
    old_primary_host="db1.example",
    old_primary_port=5434,
)
EXPECTED = {
    "d": "2",
    "h": "db2.example",
    "p": "5433",
    "D": "/var/lib/pg/2",
    "m": "0",
    "H": "db0.example",
    "r": "5432",
    "R": "/var/lib/pg/0",
    "M": "1",
    "P": "1",
    "N": "db1.example",
    "S": "5434",
}
#: What a value may be: any text but NUL (argv cannot carry it).
TEXT = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)))


def run(line: str, shell: str = "/bin/sh") -> list[str]:
    """The NUL-separated words the line prints."""
    out = subprocess.run([shell, "-c", line], capture_output=True, check=False)
    if out.returncode != 0:
        raise AssertionError(f"{shell} failed ({out.returncode}): {out.stderr!r} for {line!r}")
    text = out.stdout.decode("utf-8", "surrogateescape")
    assert text.endswith("\0") or text == "", text
    return text.split("\0")[:-1]


def words(template: str, values: CommandValues = VALUES) -> list[str]:
    line = expand(template, values)
    results = [run(line, shell) for shell in SHELLS]
    for result in results[1:]:
        assert result == results[0], (line, results)
    return results[0]


class EachEscapeTests(SynchronousTestCase):
    def test_each_escape_gives_its_value(self) -> None:
        """Every escape of pgpool-II's table expands to its value, in every quoting."""
        for letter in ESCAPES:
            template = f"{PRINT} %{letter} '%{letter}' \"%{letter}\" x%{letter}y"
            value = EXPECTED[letter]
            self.assertEqual(words(template), [value, value, value, f"x{value}y"], letter)

    def test_the_usual_failover_line(self) -> None:
        """The documented argument order reaches a script as its positional arguments."""
        template = PRINT + " %d %h %p %D %m %H %M %P %r %R %N %S"
        self.assertEqual(words(template), [EXPECTED[letter] for letter in "dhpDmHMPrRNS"])

    def test_missing_nodes_follow_pgpool(self) -> None:
        """No new main node: %m is -1 and %H %r %R empty arguments; no old primary: %P is
        -1 and %N %S empty arguments (pgpool-II writes "" for them)."""
        values = replace(
            VALUES,
            new_main_id=-1,
            new_main_host="",
            new_main_port=None,
            new_main_data_directory="",
            old_primary_id=-1,
            old_primary_host="",
            old_primary_port=None,
        )
        self.assertEqual(
            words(PRINT + " %m %H %r %R %P %N %S", values), ["-1", "", "", "", "-1", "", ""]
        )

    def test_percent_percent(self) -> None:
        """%% is one %, in every quoting, and never starts an escape."""
        self.assertEqual(words(PRINT + " 100%% '%%d' \"%%h\""), ["100%", "%d", "%h"])

    def test_unknown_escapes_are_dropped(self) -> None:
        """%x and a lone % at the end vanish, both characters, as in pgpool-II."""
        self.assertEqual(expand("a%xb %", VALUES), "ab ")
        self.assertEqual(unknown_escapes("a%xb %% %d %Z %"), ["%x", "%Z", "%"])
        self.assertEqual(unknown_escapes(PRINT + " %d %h %%"), [])

    def test_a_number_is_never_a_file_descriptor(self) -> None:
        """%d before a redirection stays an argument (a bare 2>&1 would be a redirection)."""
        self.assertEqual(words(PRINT + " %d>&1"), ["2"])

    def test_a_value_is_never_a_reserved_word(self) -> None:
        """A host called "if" in command position is a command name, not syntax."""
        values = replace(VALUES, host="if")
        line = expand("%h; echo after", values)
        out = subprocess.run(["/bin/sh", "-c", line], capture_output=True, check=False)
        self.assertEqual(out.stdout, b"after\n")


class QuotingTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(host=TEXT, directory=TEXT)
    def test_any_value_arrives_exactly(self, host: str, directory: str) -> None:
        """Quotes, $, backquotes, backslashes, newlines, globs: each value is one exact
        piece, unquoted, in single quotes, in double quotes and after a backslash."""
        values = replace(VALUES, host=host, data_directory=directory)
        template = (
            f"{PRINT} %h '%h' \"%h\" %d a%D'b'%h\"c\" '%D'\"%h\" \\%h \"\\%D\" 'x\\'%h"
            ' "$(echo ")") %h" $((1+2))%d %h # %h\n'
            f"{PRINT} %D"
        )
        self.assertEqual(
            words(template, values),
            [
                host,
                host,
                host,
                "2",
                f"a{directory}b{host}c",
                directory + host,
                host,
                directory,
                "x\\" + host,
                f") {host}",
                "32",
                host,
                directory,
            ],
        )

    @settings(max_examples=100, deadline=None)
    @given(data=st.data(), host=TEXT)
    def test_random_words(self, data: st.DataObject, host: str) -> None:
        """Arguments built at random from bare text, escapes and quoted runs mean, for the
        shell, exactly the concatenation they stand for."""
        bare = st.text("abc=:/.,-_", min_size=1)
        single = st.text('ab "$`\\;|&*?~#\n', min_size=1)
        double = st.text("ab '\n;|&*?~#", min_size=1)

        def parts(text: st.SearchStrategy[str]) -> st.SearchStrategy[list[Optional[str]]]:
            """Runs of text and escapes (None: %h)."""
            return st.lists(st.one_of(text, st.none()), min_size=1, max_size=4)

        piece = st.one_of(
            st.tuples(st.just("bare"), parts(bare)),
            st.tuples(st.just("single"), parts(single)),
            st.tuples(st.just("double"), parts(double)),
        )
        arguments = data.draw(
            st.lists(st.lists(piece, min_size=1, max_size=4), min_size=1, max_size=4)
        )
        template_words = []
        expected = []
        for argument in arguments:
            written = ""
            meant = ""
            for kind, items in argument:
                body = "".join("%h" if item is None else item for item in items)
                meant += "".join(host if item is None else item for item in items)
                written += {"bare": body, "single": f"'{body}'", "double": f'"{body}"'}[kind]
            template_words.append(written)
            expected.append(meant)
        template = PRINT + " " + " ".join(template_words)
        self.assertEqual(words(template, replace(VALUES, host=host)), expected)

    def test_injection_stays_text(self) -> None:
        """A host name made to break out of every quoting never runs."""
        with tempfile.TemporaryDirectory() as directory:
            marker = os.path.join(directory, "pwned")
            hostile = f"x'\"; touch {marker}; `touch {marker}` $(touch {marker}) '\n touch {marker}"
            values = replace(VALUES, host=hostile)
            self.assertEqual(words(PRINT + " %h '%h' \"%h\" \\%h # %h", values), [hostile] * 4)
            self.assertFalse(os.path.exists(marker))

    def test_template_syntax_still_works(self) -> None:
        """The user's own redirections, pipes and quotes keep their meaning."""
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "out file")
            values = replace(VALUES, data_directory=directory)
            line = expand(
                "printf '%%s|%%s\\n' %h \"%p\" | tr a-z A-Z > '%D/out file';"
                " echo done >> \"%D\"/'out file'",
                values,
            )
            subprocess.run(["/bin/sh", "-c", line], check=True)
            with open(path) as handle:
                self.assertEqual(handle.read(), "DB2.EXAMPLE|5433\ndone\n")


class RefusalTests(SynchronousTestCase):
    def test_places_that_cannot_be_quoted_safely_are_refused(self) -> None:
        """An escape where sh's quoting is not certain raises, at check and at expand."""
        for template in (
            "echo $(echo %h)",
            'echo "$(echo %h)"',
            "echo ${X:-%h}",
            "echo `echo %h`",
            "echo $%h",
            "cat <<EOF\n%h\nEOF",
            "echo \"${X:-'}'}\" %h",
            "echo `echo 'a'` %h",
            "x=$(case a in a) echo ;; esac); echo %h",
        ):
            for attempt in (check, lambda text: expand(text, VALUES)):
                try:
                    attempt(template)
                except EscapeError:
                    continue
                self.fail(f"accepted: {template!r}")

    def test_places_after_a_closed_construct_are_fine(self) -> None:
        """Once $( ), ${ }, backquotes or a here-document's first line end, escapes work."""
        template = PRINT + ' $(echo a) "${PGPOOL_TW_UNSET-b}" `echo c` %h'
        self.assertEqual(words(template), ["a", "b", "c", EXPECTED["h"]])
        template = "cat <<EOF >/dev/null; " + PRINT + " %h\nx\nEOF"
        self.assertEqual(words(template), [EXPECTED["h"]])
        check("echo $%% %d")

    def test_a_nul_is_refused(self) -> None:
        """argv cannot carry NUL: a value holding one is an error, not a cut value."""
        self.assertRaises(EscapeError, expand, "echo %h", replace(VALUES, host="a\0b"))
