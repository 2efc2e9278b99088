#!/usr/bin/env python3
"""Regenerate the option and key lists of the man pages and of /etc/debtorrent.conf.

The option table (:data:`debtorrent.config.OPTIONS`) is the single source. This script
rewrites only the parts of these files that sit between ``begin``/``end`` marker lines;
everything else (the prose, the examples, the header of the config file) is written by
hand and kept as it is:

- ``man/debtorrent.1``: the SYNOPSIS and OPTIONS lists, and the ``.TH`` line;
- ``man/debtorrent.conf.5``: the KEYS list, and the ``.TH`` line;
- ``debian/debtorrent.conf`` (installed as ``/etc/debtorrent.conf``): every key with its
  help and its built-in default, commented out. A key that the existing file sets
  (an uncommented ``key = value`` line inside the generated part: the Debian system
  values such as ``cache-dir = /var/cache/debtorrent``) keeps that line, right below
  its commented default.

The ``.TH`` line carries the version (``debtorrent.__version__``) and the date of the
newest ``debian/changelog`` entry, so a page never shows a stale date or version.

Usage::

    tools/genman.py            # rewrite the files that are out of date (make man)
    tools/genman.py --check    # exit 1, naming them, if any is out of date
"""

from __future__ import annotations

import email.utils
import re
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from debtorrent import __version__  # noqa: E402
from debtorrent.config import OPTIONS, Option  # noqa: E402

__all__ = [
    "CONFFILE",
    "MAN_CONF",
    "MAN_PROGRAM",
    "changelog_entry",
    "conf_keys_block",
    "man_keys_block",
    "man_options_block",
    "man_synopsis_block",
    "outdated",
    "regenerate",
    "roff_escape",
]

MAN_PROGRAM = ROOT / "man" / "debtorrent.1"
MAN_CONF = ROOT / "man" / "debtorrent.conf.5"
CONFFILE = ROOT / "debian" / "debtorrent.conf"
CHANGELOG = ROOT / "debian" / "changelog"

#: The words that mark an empty default in the generated text.
EMPTY = "empty"
ROFF_BEGIN = '.\\" BEGIN GENERATED {} (tools/genman.py, from debtorrent/config.py; make man)'
ROFF_END = '.\\" END GENERATED {}'
CONF_BEGIN = "# --- BEGIN GENERATED KEYS (tools/genman.py from debtorrent/config.py) ---"
CONF_END = "# --- END GENERATED KEYS ---"
CONF_WIDTH = 79
_ASSIGNMENT = re.compile(r"^([A-Za-z0-9_-]+)\s*[=:]\s*(.*?)\s*$")


def roff_escape(text: str) -> str:
    """``text`` as roff body text: backslashes and minus signs escaped, no control lines.

    Every ``-`` becomes ``\\-`` (as help2man does) so option names and values render as
    ASCII hyphen-minus and can be copied into a shell.
    """
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = text.split("\n")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in lines)


def _bold(text: str) -> str:
    return f"\\fB{roff_escape(text)}\\fR"


def _italic(text: str) -> str:
    return f"\\fI{roff_escape(text)}\\fR"


def _default_roff(opt: Option) -> str:
    return f"Default: {_bold(opt.default) if opt.default else EMPTY}."


def man_synopsis_block(options: Iterable[Option] = OPTIONS) -> list[str]:
    """The SYNOPSIS lines of debtorrent(1): the same three forms as ``--help`` shows."""
    lines = [".SY debtorrent"]
    for opt in options:
        value = _italic(opt.metavar)
        if opt.short:
            lines.append(f"[\\fB\\-{opt.short}\\fR {value}]")
        else:
            lines.append(f"[\\fB\\-\\-{roff_escape(opt.name)}\\fR={value}]")
        if opt.repeatable:
            lines[-1] += " ..."
    lines += [".YS", ".SY debtorrent", ".B \\-h", ".YS"]
    lines += [".SY debtorrent", ".B \\-\\-version", ".YS"]
    return lines


def man_options_block(options: Iterable[Option] = OPTIONS) -> list[str]:
    """The OPTIONS entries of debtorrent(1): every option with its value and default."""
    lines = [
        ".TP",
        "\\fB\\-h\\fR, \\fB\\-\\-help\\fR",
        "Show the usage with every option and its default, and exit.",
        ".TP",
        "\\fB\\-\\-version\\fR",
        "Show the version and exit.",
    ]
    for opt in options:
        value = _italic(opt.metavar)
        term = f"\\fB\\-\\-{roff_escape(opt.name)}\\fR={value}"
        if opt.short:
            term = f"\\fB\\-{opt.short}\\fR {value}, {term}"
        lines += [".TP", term, roff_escape(opt.help)]
        if opt.repeatable:
            lines.append("May be given more than once.")
        if opt.cli_only:
            lines.append("Command line only: not a key of the config file.")
        else:
            lines.append(f"Config file key: {_bold(opt.name)}.")
        lines.append(_default_roff(opt))
    return lines


def man_keys_block(options: Iterable[Option] = OPTIONS) -> list[str]:
    """The KEYS entries of debtorrent.conf(5): every key, its type and its default."""
    lines: list[str] = []
    for opt in options:
        if opt.cli_only:
            continue
        term = f"{_bold(opt.name)} = {_italic(opt.metavar)}"
        lines += [".TP", term, roff_escape(opt.help)]
        if opt.repeatable:
            lines.append("A list: values separated by spaces or commas.")
        lines.append(f"Type: {_italic(opt.kind)}.")
        lines.append(_default_roff(opt))
    return lines


def conf_keys_block(active: dict[str, str], options: Iterable[Option] = OPTIONS) -> list[str]:
    """The generated part of the config file; ``active`` holds the keys set for real."""
    lines: list[str] = []
    for opt in options:
        if opt.cli_only:
            continue
        text = f"{opt.help} Type: {opt.kind}."
        if opt.repeatable:
            text += " A list, separated by spaces or commas."
        lines += textwrap.wrap(text, CONF_WIDTH, initial_indent="# ", subsequent_indent="# ")
        lines.append(f"#{opt.name} = {opt.default}".rstrip())
        if opt.name in active:
            lines.append(f"{opt.name} = {active[opt.name]}".rstrip())
        lines.append("")
    return lines[:-1]


def changelog_entry(path: Path = CHANGELOG) -> tuple[str, str]:
    """(version, ``YYYY-MM-DD`` date) of the newest entry of a Debian changelog."""
    text = path.read_text(encoding="utf-8")
    head = re.match(r"^\S+ \(([^)]+)\)", text)
    trailer = re.search(r"^ -- .+?>  (.+)$", text, re.MULTILINE)
    if not head or not trailer:
        raise ValueError(f"{path}: no changelog entry found")
    date = email.utils.parsedate_to_datetime(trailer.group(1).strip())
    return head.group(1), date.strftime("%Y-%m-%d")


def _th_line(name: str, section: str, date: str) -> str:
    return f'.TH {name} {section} {date} "debtorrent {__version__}" "debtorrent manual"'


def _replace_block(text: str, begin: str, end: str, body: list[str], where: str) -> str:
    lines = text.split("\n")
    try:
        start = lines.index(begin)
        stop = lines.index(end, start)
    except ValueError:
        raise ValueError(f"{where}: marker lines {begin!r} ... {end!r} not found") from None
    return "\n".join([*lines[: start + 1], *body, *lines[stop:]])


def _replace_th(text: str, th: str, where: str) -> str:
    new, count = re.subn(r"^\.TH .*$", lambda _: th, text, count=1, flags=re.MULTILINE)
    if not count:
        raise ValueError(f"{where}: no .TH line")
    return new


def _active_keys(text: str) -> dict[str, str]:
    """Uncommented ``key = value`` lines inside the generated part of the config file."""
    lines = text.split("\n")
    try:
        block = lines[lines.index(CONF_BEGIN) + 1 : lines.index(CONF_END)]
    except ValueError:
        return {}
    active = {}
    for line in block:
        match = _ASSIGNMENT.match(line)
        if match:
            active[match.group(1).replace("_", "-")] = match.group(2)
    return active


def _render_program_page(text: str, date: str) -> str:
    text = _replace_th(text, _th_line("DEBTORRENT", "1", date), "debtorrent.1")
    text = _replace_block(
        text,
        ROFF_BEGIN.format("SYNOPSIS"),
        ROFF_END.format("SYNOPSIS"),
        man_synopsis_block(),
        "debtorrent.1",
    )
    return _replace_block(
        text,
        ROFF_BEGIN.format("OPTIONS"),
        ROFF_END.format("OPTIONS"),
        man_options_block(),
        "debtorrent.1",
    )


def _render_conf_page(text: str, date: str) -> str:
    text = _replace_th(text, _th_line("DEBTORRENT.CONF", "5", date), "debtorrent.conf.5")
    return _replace_block(
        text, ROFF_BEGIN.format("KEYS"), ROFF_END.format("KEYS"), man_keys_block(), "conf.5"
    )


def _render_conffile(text: str, date: str) -> str:
    del date
    body = conf_keys_block(_active_keys(text))
    return _replace_block(text, CONF_BEGIN, CONF_END, body, "debian/debtorrent.conf")


RENDERERS: dict[Path, Callable[[str, str], str]] = {
    MAN_PROGRAM: _render_program_page,
    MAN_CONF: _render_conf_page,
    CONFFILE: _render_conffile,
}


def regenerate(path: Path, text: str | None = None) -> str:
    """The content ``path`` should have: ``text`` (default: the file) with fresh lists."""
    if text is None:
        text = path.read_text(encoding="utf-8")
    _version, date = changelog_entry()
    return RENDERERS[path](text, date)


def outdated() -> list[Path]:
    """The generated files whose committed content differs from a fresh generation."""
    return [p for p in RENDERERS if regenerate(p) != p.read_text(encoding="utf-8")]


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print(__doc__.split("Usage::")[1].rstrip(), file=sys.stderr)
        return 2
    stale = outdated()
    for path in stale:
        name = path.relative_to(ROOT)
        if check:
            print(f"{name} is out of date: run make man", file=sys.stderr)
        else:
            path.write_text(regenerate(path), encoding="utf-8")
            print(f"rewrote {name}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
