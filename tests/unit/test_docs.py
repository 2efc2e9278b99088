"""The man pages, the docopt usage and /etc/debtorrent.conf checked against the option table.

:data:`debtorrent.config.OPTIONS` is the single source. Each document is parsed here on
its own, not through ``tools/genman.py``, so a hand edit, a stale generation or a bug in
the generator all show up the same way: an option or key that is missing, extra, or has
another default, named in the failure. When the table changes, ``make man`` regenerates
the lists.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docopt import parse_defaults

from debtorrent import __version__
from debtorrent.cli import COMMANDS, usage
from debtorrent.config import OPTIONS, load_config, read_config_file

ROOT = Path(__file__).resolve().parents[2]
MAN1 = ROOT / "man" / "debtorrent.1"
MAN5 = ROOT / "man" / "debtorrent.conf.5"
CONFFILE = ROOT / "debian" / "debtorrent.conf"
CHANGELOG = ROOT / "debian" / "changelog"
GENMAN = ROOT / "tools" / "genman.py"

#: Options that docopt handles itself: in the usage and the man page, not in the table.
BUILTIN = {"help": None, "version": None}
#: The Debian system service's own values in /etc/debtorrent.conf.
SYSTEM_VALUES = {
    "cache-dir": "/var/cache/debtorrent",
    "state-dir": "/var/lib/debtorrent",
    "bind": "127.0.0.1",
    "discovery": "lsd dht pex",  # the packaged daemon finds peers with no configuration
}

CLI_TABLE = {**BUILTIN, **{opt.name: opt.default for opt in OPTIONS}}
KEY_TABLE = {opt.name: opt.default for opt in OPTIONS if not opt.cli_only}


# --- reading roff ------------------------------------------------------------------


def _plain(roff: str) -> str:
    """Roff escapes and font macros removed: the text a reader sees, for matching."""
    text = re.sub(r"^\.(?:[BI]|[BIR][BIR]) ", "", roff, flags=re.MULTILINE)
    text = re.sub(r"\\f[BIRP]|\\f\[[A-Z]*\]|\\&|\\[,/]|\\c$", "", text)
    return text.replace("\\-", "-").replace("\\e", "\\").replace("\\(aq", "'")


def _section(page: Path, name: str) -> list[str]:
    lines = page.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == f".SH {name}"]
    assert len(starts) == 1, f"{page.name}: expected one .SH {name} section"
    rest = lines[starts[0] + 1 :]
    end = next((i for i, line in enumerate(rest) if line.startswith(".SH ")), len(rest))
    return [line for line in rest[:end] if not line.startswith('.\\"')]


def _entries(lines: list[str]) -> list[tuple[str, str]]:
    """(term, body) of every ``.TP`` entry, in plain text."""
    entries: list[tuple[str, str]] = []
    for i, line in enumerate(lines):
        if line == ".TP":
            body = []
            for more in lines[i + 2 :]:
                if more in (".TP", ".PP", ".SS") or more.startswith(".SH"):
                    break
                body.append(more)
            entries.append((_plain(lines[i + 1]), _plain(" ".join(body))))
    return entries


def _default_in(body: str, where: str) -> str:
    match = re.search(r"Default: (.*)\.$", body.strip())
    assert match, f"{where}: no 'Default: ...' sentence in {body!r}"
    return "" if match.group(1) == "empty" else match.group(1)


def man1_options() -> dict[str, str | None]:
    """{long option name: default} from the OPTIONS section of debtorrent(1)."""
    found: dict[str, str | None] = {}
    for term, body in _entries(_section(MAN1, "OPTIONS")):
        names = re.findall(r"--([a-z0-9][a-z0-9-]*)", term)
        assert names, f"debtorrent.1: OPTIONS entry without a long option: {term!r}"
        name = names[-1]
        assert name not in found, f"debtorrent.1: --{name} documented twice"
        found[name] = None if name in BUILTIN else _default_in(body, f"debtorrent.1 --{name}")
    return found


def man5_keys() -> dict[str, str]:
    """{key: default} from the KEYS section of debtorrent.conf(5)."""
    found: dict[str, str] = {}
    for term, body in _entries(_section(MAN5, "KEYS")):
        key = term.split(" = ")[0].strip()
        assert key not in found, f"debtorrent.conf.5: key {key} documented twice"
        found[key] = _default_in(body, f"debtorrent.conf.5 {key}")
    return found


def usage_defaults() -> dict[str, str | None]:
    """{long option name: default} from the ``Options:`` part of ``debtorrent --help``."""
    text = usage().split("Options:", 1)[1]
    entries: list[str] = []
    for line in text.splitlines():
        if re.match(r"^  -", line):
            entries.append(line.strip())
        elif line.strip() and entries:
            entries[-1] += " " + line.strip()
    found: dict[str, str | None] = {}
    for entry in entries:
        name = re.findall(r"--([a-z0-9][a-z0-9-]*)", entry.split("  ")[0])[-1]
        match = re.search(r"\(default: (.*)\)$", entry)
        found[name] = None if name in BUILTIN else (match.group(1) if match else "")
    return found


def _diff(found: dict, table: dict, what: str) -> list[str]:
    problems = [f"{what}: {name} missing" for name in table if name not in found]
    problems += [f"{what}: {name} is not in the option table" for name in found - table.keys()]
    problems += [
        f"{what}: {name} has default {found[name]!r}, the table says {table[name]!r}"
        for name in table.keys() & found.keys()
        if found[name] != table[name]
    ]
    return problems


# --- the documents against the table --------------------------------------------------


def test_man_page_options_match_the_table():
    problems = _diff(man1_options(), CLI_TABLE, "debtorrent.1 OPTIONS")
    assert not problems, "\n".join(problems)


def test_man_page_options_follow_the_table_order():
    assert [n for n in man1_options() if n not in BUILTIN] == [o.name for o in OPTIONS]


def test_conf_man_page_keys_match_the_table():
    problems = _diff(man5_keys(), KEY_TABLE, "debtorrent.conf.5 KEYS")
    assert not problems, "\n".join(problems)


def test_usage_defaults_match_the_table():
    problems = _diff(usage_defaults(), CLI_TABLE, "debtorrent --help")
    assert not problems, "\n".join(problems)


def test_docopt_knows_exactly_the_table_options():
    parsed = {o.long[2:]: o for o in parse_defaults(usage())}
    assert sorted(parsed) == sorted(CLI_TABLE)
    for opt in OPTIONS:
        assert parsed[opt.name].argcount == 1, opt.name
        assert parsed[opt.name].short == (f"-{opt.short}" if opt.short else None), opt.name


def test_synopsis_names_every_option():
    synopsis = _plain("\n".join(_section(MAN1, "SYNOPSIS")))
    named = set(re.findall(r"--([a-z0-9][a-z0-9-]*)", synopsis))
    named -= {flag[2:] for command in COMMANDS for flag in command.flags}  # status --json
    named |= {o.name for o in OPTIONS if o.short and f"-{o.short} " in synopsis}
    named |= {"help"} if re.search(r"^-h$", synopsis, re.MULTILINE) else set()
    assert named == set(CLI_TABLE)


def test_every_type_is_described():
    described = {term for term, _ in _entries(_section(MAN5, "TYPES"))}
    missing = {opt.kind for opt in OPTIONS if not opt.cli_only} - described
    assert not missing, f"debtorrent.conf.5 TYPES does not describe {sorted(missing)}"


def test_conffile_lists_every_key_with_its_default():
    text = CONFFILE.read_text(encoding="utf-8")
    commented = dict(re.findall(r"^#([a-z0-9][a-z0-9-]*) =[ ]?(.*)$", text, re.MULTILINE))
    problems = _diff(commented, KEY_TABLE, "debian/debtorrent.conf")
    assert not problems, "\n".join(problems)


def test_conffile_sets_the_system_values_and_loads():
    assert read_config_file(str(CONFFILE)) == SYSTEM_VALUES
    config = load_config(path=str(CONFFILE))
    assert config.cache_dir == "/var/cache/debtorrent"
    assert config.bind == "127.0.0.1"


def test_examples_use_the_default_port():
    port = next(opt.default for opt in OPTIONS if opt.name == "port")
    docs = [MAN1, MAN5, ROOT / "debian" / "README.Debian"]
    docs += sorted((ROOT / "debian" / "examples").iterdir())
    for doc in docs:
        for used in re.findall(r"(?:localhost|127\.0\.0\.1|192\.0\.2\.10):(\d+)", doc.read_text()):
            assert used == port, f"{doc.name} shows port {used}, the default is {port}"


# --- generation, version, rendering ----------------------------------------------------


def _genman():
    spec = importlib.util.spec_from_file_location("genman", GENMAN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_parts_are_up_to_date():
    stale = [str(path.relative_to(ROOT)) for path in _genman().outdated()]
    assert stale == [], f"out of date (run make man): {stale}"


def test_pages_carry_the_version_and_changelog_date():
    version, date = _genman().changelog_entry(CHANGELOG)
    assert version == __version__, "debian/changelog needs an entry for this version"
    for page in (MAN1, MAN5):
        th = next(line for line in page.read_text().splitlines() if line.startswith(".TH "))
        assert f" {date} " in th and f'"debtorrent {__version__}"' in th, th


@pytest.mark.parametrize("page", [MAN1, MAN5], ids=lambda p: p.name)
@pytest.mark.parametrize("device", [[], ["-Tutf8"]], ids=["default", "utf8"])
def test_page_renders_without_warnings(page, device):
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (Debian package groff-base)")
    result = subprocess.run(
        ["groff", "-man", "-ww", "-z", *device, str(page)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_genman_check_mode_passes():
    result = subprocess.run(
        [sys.executable, str(GENMAN), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
