"""The command line: a docopt usage text generated from the option table.

The usage carries no ``[default: ...]`` markers on purpose: docopt would then report
every option as given, and the config file could never override a default. Defaults
are shown in the help text instead and applied by :func:`debtorrent.config.load_config`.

Without a command, ``debtorrent`` runs the daemon. The commands (:data:`COMMANDS`:
``status``, ``cache verify``, ``cache clear``, ``import``) take the same options, so
they find the daemon (``--bind``, ``--port``) and its cache (``--cache-dir``) as it
does; without ``-c`` they read :data:`SYSTEM_CONFIG` when it exists, which is what an
administrator of the packaged service means by a bare ``debtorrent status``.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from docopt import DocoptExit, docopt

from debtorrent import __version__
from debtorrent.config import OPTIONS, Config, Option, load_config
from debtorrent.errors import ConfigError

__all__ = ["COMMANDS", "Command", "main", "parse_args", "parse_command", "usage"]

PROG = "debtorrent"
EXIT_USAGE = 2
WIDTH = 26  # column where option descriptions start in the usage text
SYSTEM_CONFIG = "/etc/debtorrent.conf"


@dataclass(frozen=True)
class Command:
    """One command: its words, what follows them in the usage, and its help."""

    words: str
    arguments: str
    help: str
    flags: tuple[str, ...] = ()  # its own flags (no value), like --json


COMMANDS: tuple[Command, ...] = (
    Command(
        "status",
        "[--json]",
        "What the running daemon is doing: its health, the share of package bytes "
        "from peers, swarms, peers, cache, rates, recent errors; --json prints its "
        "/status.json instead. Without a daemon: what the cache and the checkpoint "
        "hold, and exit status 3.",
        ("--json",),
    ),
    Command(
        "cache verify",
        "",
        "Check every cached package and by-hash file against the SHA256 of the indexes "
        "saved in the cache; bad ones are removed and listed (exit status 1).",
    ),
    Command(
        "cache clear",
        "[--all]",
        "Remove the cached packages and other files, keeping the indexes (the daemon "
        "needs them to know what it may serve); --all removes the indexes too.",
        ("--all",),
    ),
    Command(
        "import",
        "PATH...",
        "Seed the .deb files found under each PATH (/var/cache/apt/archives, an "
        "apt-cacher-ng cache, a local mirror): each one listed in a saved index is "
        "checked against its SHA256, then linked or copied into the cache.",
    ),
)


def _flag(opt: Option) -> str:
    long = f"--{opt.name}={opt.metavar}"
    return f"-{opt.short} {opt.metavar}, {long}" if opt.short else long


def usage() -> str:
    """The full docopt text, built from :data:`debtorrent.config.OPTIONS`."""
    repeat = " ".join(f"[--{o.name}={o.metavar}]..." for o in OPTIONS if o.repeatable)
    # One pattern for the daemon and every command: docopt 0.6 repeats the last value
    # of a repeatable option (--keyring a --keyring b -> a, b, b) when it appears in
    # several usage lines. The second line continues the first.
    commands = " | ".join(f"{c.words} {c.arguments}".strip() for c in COMMANDS)
    lines = [
        f"{PROG}: a BitTorrent-based apt proxy for Debian.",
        "",
        "Usage:",
        f"  {PROG} [options]{' ' + repeat if repeat else ''}",
        f"  {' ' * len(PROG)} [{commands}]",
    ]
    lines += [
        f"  {PROG} -h | --help",
        f"  {PROG} --version",
        "",
        "Commands (without one, the daemon runs):",
    ]
    for command in COMMANDS:
        name = f"{command.words} {command.arguments.replace('...', '')}".strip()
        # docopt 0.6 reads any line starting with "-" as an option's description: a
        # flag named in the help must never begin a wrapped line
        glued = command.help.replace(" --", "\0--")
        text = [line.replace("\0", " ") for line in textwrap.wrap(glued, 76 - 22)]
        lines.append(f"  {name:<20}  {text[0]}")
        lines.extend(" " * 24 + more for more in text[1:])
    lines += [
        f"  Without -c, the commands read {SYSTEM_CONFIG} if it exists.",
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


def parse_command(argv: Sequence[str]) -> tuple[Command | None, dict[str, Any], Config]:
    """``(command or None for the daemon, docopt's arguments, configuration)``.

    Raises :class:`ConfigError` for a bad value or an option given twice; docopt's own
    errors (unknown option) surface as :class:`DocoptExit`.
    """
    twice = _repeated_option(argv)
    if twice is not None:
        raise ConfigError(twice, "given more than once; it takes one value")
    args = docopt(usage(), argv=list(argv), help=False, version=None)
    if args.get("--help"):
        print(usage(), end="")
        raise SystemExit(0)
    if args.get("--version"):
        print(f"{PROG} {__version__}")
        raise SystemExit(0)
    command = next((c for c in COMMANDS if all(args.get(word) for word in c.words.split())), None)
    given = {opt.name: args.get(f"--{opt.name}") for opt in OPTIONS}
    if command is not None and not given["config"] and os.path.exists(SYSTEM_CONFIG):
        given["config"] = SYSTEM_CONFIG
    return command, args, load_config(given)


def parse_args(argv: Sequence[str]) -> Config:
    """The effective configuration of ``argv`` (without the program name)."""
    return parse_command(argv)[2]


def _takes_value() -> dict[str, bool]:
    """Every option spelling -> whether it is followed by a value."""
    known = {"--help": False, "-h": False, "--version": False}
    for command in COMMANDS:
        known.update(dict.fromkeys(command.flags, False))
    for opt in OPTIONS:
        known[f"--{opt.name}"] = True
        if opt.short:
            known[f"-{opt.short}"] = True
    return known


def _repeated_option(argv: Sequence[str]) -> str | None:
    """The first single-value option given twice (docopt would only say "usage")."""
    takes_value = _takes_value()
    single = {f"--{o.name}": f"--{o.name}" for o in OPTIONS if not o.repeatable}
    single.update({f"-{o.short}": f"--{o.name}" for o in OPTIONS if o.short})
    seen: set[str] = set()
    args = iter(argv)
    for arg in args:
        if arg == "--":
            break
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]
        if not arg.startswith("-") or name not in takes_value:
            continue
        if takes_value[name] and "=" not in arg and len(arg) == len(name):
            next(args, None)  # the value, whatever it looks like
        canonical = single.get(name)
        if canonical is not None:
            if canonical in seen:
                return canonical
            seen.add(canonical)
    return None


def _usage_problem(argv: Sequence[str]) -> str:
    """Name what docopt rejected: docopt itself only prints the whole usage."""
    takes_value = _takes_value()
    words = {word for command in COMMANDS for word in command.words.split()}
    positional = "import" in argv
    args = iter(argv)
    for arg in args:
        if arg == "--":
            break
        if arg.startswith("-") and arg != "-":
            name = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]
            if name not in takes_value:
                return f"unknown option {name}"
            if takes_value[name] and "=" not in arg and len(arg) == len(name):
                if next(args, None) is None:
                    return f"option {name} needs a value"
            continue
        if arg not in words and not positional:
            return f"unexpected argument {arg!r}"
    return "a command word or a path is missing, or a flag belongs to another command"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: patch the standard library for gevent, parse, hand over to the daemon
    or the command.

    Patching comes first so every module imported afterwards (urllib3, logging
    handlers) gets cooperative sockets and locks; only the daemon's process is patched,
    never a test runner that imports this module.
    """
    from gevent import monkey

    monkey.patch_all()
    argv = sys.argv[1:] if argv is None else argv
    try:
        command, args, config = parse_command(argv)
    except DocoptExit:
        print(f"{PROG}: error: {_usage_problem(argv)} (see {PROG} --help)", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if command is not None:
        from debtorrent import commands  # late: imported only once the patching is done

        return commands.run(command.words, args, config)
    from debtorrent import daemon  # late: imported only once the patching is done

    return daemon.run(config)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
