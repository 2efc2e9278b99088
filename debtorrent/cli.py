"""The command line: a docopt usage text generated from the option table.

The usage carries no ``[default: ...]`` markers on purpose: docopt would then report
every option as given, and the config file could never override a default. Defaults
are shown in the help text instead and applied by :func:`debtorrent.config.load_config`.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence

from docopt import DocoptExit, docopt

from debtorrent import __version__
from debtorrent.config import OPTIONS, Config, Option, load_config
from debtorrent.errors import ConfigError

__all__ = ["main", "parse_args", "usage"]

PROG = "debtorrent"
EXIT_USAGE = 2
WIDTH = 26  # column where option descriptions start in the usage text


def _flag(opt: Option) -> str:
    long = f"--{opt.name}={opt.metavar}"
    return f"-{opt.short} {opt.metavar}, {long}" if opt.short else long


def usage() -> str:
    """The full docopt text, built from :data:`debtorrent.config.OPTIONS`."""
    repeat = " ".join(f"[--{o.name}={o.metavar}]..." for o in OPTIONS if o.repeatable)
    lines = [
        f"{PROG}: a BitTorrent-based apt proxy for Debian.",
        "",
        "Usage:",
        f"  {PROG} [options]{' ' + repeat if repeat else ''}",
        f"  {PROG} -h | --help",
        f"  {PROG} --version",
        "",
        "Options:",
        f"  {'-h, --help':<{WIDTH}}  Show this help and exit.",
        f"  {'--version':<{WIDTH}}  Show the version and exit.",
    ]
    for opt in OPTIONS:
        default = f" (default: {opt.default})" if opt.default else ""
        text = textwrap.wrap(opt.help + default, 76 - WIDTH)
        lines.append(f"  {_flag(opt):<{WIDTH}}  {text[0]}")
        lines.extend(" " * (WIDTH + 4) + more for more in text[1:])
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> Config:
    """Parse ``argv`` (without the program name) into the effective configuration.

    Raises :class:`ConfigError` for a bad value; docopt's own errors (unknown option)
    surface as :class:`DocoptExit`.
    """
    args = docopt(usage(), argv=list(argv), help=False, version=None)
    if args.get("--help"):
        print(usage(), end="")
        raise SystemExit(0)
    if args.get("--version"):
        print(f"{PROG} {__version__}")
        raise SystemExit(0)
    given = {opt.name: args.get(f"--{opt.name}") for opt in OPTIONS}
    return load_config(given)


def _usage_problem(argv: Sequence[str]) -> str:
    """Name what docopt rejected: docopt itself only prints the whole usage."""
    known = {f"--{o.name}" for o in OPTIONS} | {"--help", "--version", "-h"}
    known |= {f"-{o.short}" for o in OPTIONS if o.short}
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("--") and arg.split("=", 1)[0] not in known:
            return f"unknown option {arg.split('=', 1)[0]}"
        if arg.startswith("-") and not arg.startswith("--") and arg[:2] not in known:
            return f"unknown option {arg[:2]}"
        if not arg.startswith("-"):
            return f"unexpected argument {arg!r}"
    return "an option is missing its value or given twice"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: patch the standard library for gevent, parse, hand over to the daemon.

    Patching comes first so every module imported afterwards (urllib3, logging
    handlers) gets cooperative sockets and locks; only the daemon's process is patched,
    never a test runner that imports this module.
    """
    from gevent import monkey

    monkey.patch_all()
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = parse_args(argv)
    except DocoptExit:
        print(f"{PROG}: error: {_usage_problem(argv)} (see {PROG} --help)", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from debtorrent import daemon  # late: imported only once the patching is done

    return daemon.run(config)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
