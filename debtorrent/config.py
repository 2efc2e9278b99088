"""The option table: the single source for the CLI, the config file and the man pages.

Each :class:`Option` has a name, a type, a default and a help line. The docopt usage
text is generated from :data:`OPTIONS` (see :mod:`debtorrent.cli`), the INI config file
accepts exactly these names as keys in its ``[debtorrent]`` section, and the man pages
are checked against the table by the test suite. Precedence is
defaults < config file < command line.
"""

from __future__ import annotations

import configparser
import fnmatch
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from debtorrent.errors import ConfigError
from debtorrent.reach import Reach

__all__ = [
    "DISCOVERY_MECHANISMS",
    "OPTIONS",
    "Config",
    "Option",
    "default",
    "load_config",
    "option",
]

SECTION = "debtorrent"
LOG_LEVELS = ("debug", "info", "warning", "error")
SIGNATURE_MODES = ("auto", "enforce", "off")


# --- value parsers: each takes the raw string and returns the typed value -------------


def _int(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"{text!r} must not be negative")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 0 < value < 65536:
        raise ValueError(f"{text!r} is not a port number (1-65535)")
    return value


def _float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} must be a finite number >= 0")
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if value == 0:
        raise ValueError(f"{text!r} must be greater than 0")
    return value


def _address(text: str) -> str:
    text = text.strip()
    if text in ("", "*"):
        return ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        if text == "localhost":
            return "127.0.0.1"
        raise ValueError(f"{text!r} is not an IP address") from None


def _path(text: str) -> str:
    text = text.strip()
    return os.path.expanduser(text) if text else ""


def _split(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


def _networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for part in _split(text):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an address or CIDR network") from None
    return nets


def _host_patterns(text: str) -> list[str]:
    patterns = [part.lower() for part in _split(text)]
    for pattern in patterns:
        if "/" in pattern:
            try:
                ipaddress.ip_network(pattern, strict=False)
            except ValueError:
                raise ValueError(f"{pattern!r} is not a CIDR network") from None
        elif not all(c.isalnum() or c in "-.*?[]:_" for c in pattern):
            raise ValueError(f"{pattern!r} is not a host pattern")
    return patterns


def _signature_mode(text: str) -> str:
    value = text.strip().lower()
    if value not in SIGNATURE_MODES:
        raise ValueError(f"{text!r} is not one of {', '.join(SIGNATURE_MODES)}")
    return value


def _log_level(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return value


def _tracker_url(text: str) -> str:
    url = text.strip()
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https", "udp") or not rest:
        raise ValueError(f"{text!r} is not an http://, https:// or udp:// tracker URL")
    if any(ord(c) < 0x21 for c in url):
        raise ValueError(f"{text!r} holds spaces or control characters")
    return url


def _host_port(text: str) -> tuple[str, int]:
    text = text.strip()
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if not all(c.isalnum() or c in "-." for c in host):
            raise ValueError(f"{text!r} is not HOST:PORT") from None
    return host, _port(port)


def _port_or_zero(text: str) -> int:
    value = _int(text)
    if value > 65535:
        raise ValueError(f"{text!r} is not a port number (0-65535)")
    return value


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "true", "on", "1"):
        return True
    if value in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"{text!r} is not yes or no")


#: Discovery mechanisms (``--discovery``): local service discovery, the DHT, peer exchange.
DISCOVERY_MECHANISMS = ("lsd", "dht", "pex")


def _mechanisms(text: str) -> tuple[str, ...]:
    names = [part.lower() for part in _split(text)]
    if names == ["none"]:
        return ()
    for name in names:
        if name not in DISCOVERY_MECHANISMS:
            raise ValueError(
                f"{name!r} is not one of {', '.join(DISCOVERY_MECHANISMS)} (or none alone)"
            )
    return tuple(dict.fromkeys(names))


def _bootstrap_node(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` of a DHT node, or None for ``none`` (no bootstrap node at all)."""
    if text.strip().lower() == "none":
        return None
    return _host_port(text)


def _rate(text: str) -> float:
    """Bytes per second, with an optional k/M suffix (powers of 1000, as rates are)."""
    raw = text.strip()
    factor = {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}.get(raw[-1:], 1.0)
    number = raw[:-1] if factor != 1.0 else raw
    return _float(number) * factor


def _size(text: str) -> int:
    """Bytes, with an optional K/M/G/T suffix (powers of 1024, as disk sizes are)."""
    raw = text.strip()
    factor = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}.get(raw[-1:].lower(), 1)
    number = raw[:-1] if factor != 1 else raw
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (like 20G)") from None
    if not 0 <= value < float(1 << 60):
        raise ValueError(f"{text!r} is not a size (like 20G)")
    return int(value * factor)


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "debtorrent")


@dataclass(frozen=True)
class Option:
    """One option: ``--name`` on the command line, ``name =`` in the config file.

    ``kind`` is the word the usage text and man pages show for the value; ``default``
    is the raw string (parsed like any other value, so it is validated too);
    ``metavar`` names the value in the usage line. A ``repeatable`` option is given
    once per value on the command line and as a space/comma separated list in the file;
    its value is a list of parsed items.
    """

    name: str
    kind: str
    default: str
    help: str
    parse: Callable[[str], Any]
    metavar: str = "VALUE"
    short: str | None = None
    cli_only: bool = False
    repeatable: bool = False

    @property
    def attr(self) -> str:
        """The attribute name on :class:`Config` (dashes become underscores)."""
        return self.name.replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option(
        "config",
        "path",
        "",
        "Read options from this INI file (section [debtorrent]) before the command line.",
        _path,
        metavar="FILE",
        short="c",
        cli_only=True,
    ),
    Option("port", "port", "9988", "TCP port apt connects to.", _port, metavar="PORT"),
    Option(
        "bind",
        "address",
        "127.0.0.1",
        "Address the apt side listens on; * or empty for all interfaces.",
        _address,
        metavar="ADDR",
    ),
    Option(
        "cache-dir",
        "path",
        "~/.cache/debtorrent",
        "Directory holding the cache, laid out like the mirrors it copies.",
        _path,
        metavar="DIR",
    ),
    Option(
        "cache-limit",
        "size",
        "0",
        "Largest size of the cache (K, M, G, T suffixes); least used packages go first. "
        "0 for no limit.",
        _size,
        metavar="SIZE",
    ),
    Option(
        "expire-interval",
        "seconds",
        "3600",
        "Seconds between expiry runs (packages no loaded index lists; the size limit).",
        _positive_float,
        metavar="SECS",
    ),
    Option(
        "state-dir",
        "path",
        "~/.local/state/debtorrent",
        "Directory for the checkpoint (all-time counters), written every minute and at exit.",
        _path,
        metavar="DIR",
    ),
    Option(
        "allowed-clients",
        "networks",
        "127.0.0.0/8 ::1",
        "Addresses or CIDR networks allowed to use the proxy (comma or space separated).",
        _networks,
        metavar="NETS",
    ),
    Option(
        "allowed-mirrors",
        "patterns",
        "*",
        "Mirror host names (shell patterns, optionally with :port) and CIDR networks the "
        "proxy may fetch from. Loopback, link-local and this machine's own addresses are "
        "reached only when an entry names them literally or by a network, never by a "
        "wildcard.",
        _host_patterns,
        metavar="HOSTS",
    ),
    Option(
        "tls-mirrors",
        "patterns",
        "",
        "Mirror host names (shell patterns) fetched over https (port 443) although apt's "
        "sources say http://, so https-only repositories are cached and shared. A mirror "
        "written as host:443 is always fetched over https.",
        _host_patterns,
        metavar="HOSTS",
    ),
    Option(
        "ca-file",
        "path",
        "",
        "PEM file of certificate authorities trusted for https mirrors besides the system "
        "store (a private CA).",
        _path,
        metavar="FILE",
    ),
    Option(
        "verify-signatures",
        "mode",
        "auto",
        "Release signatures checked by the daemon with gpgv (or sqv): auto shares only "
        "indexes whose Release verifies and passes the others to apt unshared; enforce "
        "also refuses unverified Releases and their indexes; off trusts the mirror.",
        _signature_mode,
        metavar="MODE",
    ),
    Option(
        "keyring",
        "path",
        "",
        "OpenPGP keyring (binary or armored) trusted for Release signatures besides the "
        "ones apt uses (Signed-By of this machine's sources, /etc/apt/trusted.gpg.d, "
        "/usr/share/keyrings); repeat for several.",
        _path,
        metavar="FILE",
        repeatable=True,
    ),
    Option(
        "max-tunnels",
        "count",
        "32",
        "CONNECT tunnels (https sources apt sends through the proxy, passed on uncached) "
        "open at once; 0 refuses CONNECT.",
        _int,
        metavar="N",
    ),
    Option(
        "tunnel-idle-timeout",
        "seconds",
        "120",
        "Seconds a CONNECT tunnel may pass no byte either way before it is closed.",
        _positive_float,
        metavar="SECS",
    ),
    Option(
        "log-level",
        "level",
        "info",
        f"Least severe messages logged: {', '.join(LOG_LEVELS)}.",
        _log_level,
        metavar="LEVEL",
    ),
    Option(
        "log-file",
        "path",
        "",
        "Append the log to this file (reopened on SIGHUP); empty logs to standard error.",
        _path,
        metavar="FILE",
    ),
    Option(
        "peer-port",
        "port",
        "9989",
        "TCP port peers connect to; one port serves every swarm.",
        _port,
        metavar="PORT",
    ),
    Option(
        "peer-bind",
        "address",
        "",
        "Address the peer side listens on and outgoing peer, tracker and mirror "
        "connections leave from; empty for all interfaces.",
        _address,
        metavar="ADDR",
    ),
    Option(
        "tracker",
        "url",
        "",
        "Tracker announce URL (http://, https:// or udp://); repeat for several. "
        "Optional: discovery finds peers without one.",
        _tracker_url,
        metavar="URL",
        repeatable=True,
    ),
    Option(
        "peer",
        "host:port",
        "",
        "A peer to connect to for every swarm (small LANs, tests); repeat for several.",
        _host_port,
        metavar="HOST:PORT",
        repeatable=True,
    ),
    Option(
        "discovery",
        "mechanisms",
        "lsd dht pex",
        "How peers are found besides --tracker and --peer: any of lsd (local service "
        "discovery, BEP 14: multicast on the LAN), dht (the mainline DHT, BEP 5) and pex "
        "(peer exchange, BEP 11), comma or space separated, or none. With none and no "
        "tracker or peer, the peer port does not listen.",
        _mechanisms,
        metavar="LIST",
    ),
    Option(
        "lan-only",
        "boolean",
        "no",
        "yes keeps to the LAN: local service discovery only (no DHT), and peers only in "
        "private, link-local, unique-local and loopback ranges, dialled or accepted.",
        _boolean,
        metavar="BOOL",
    ),
    Option(
        "swarm-key",
        "path",
        "",
        "File holding a shared secret (16 bytes or more): only daemons with the same key "
        "meet. It changes every info hash and peers prove it when they connect. Empty for "
        "no key.",
        _path,
        metavar="FILE",
    ),
    Option(
        "dht-bootstrap",
        "host:port",
        "router.bittorrent.com:6881 dht.transmissionbt.com:6881 router.utorrent.com:6881",
        "A DHT node asked when the routing table saved in the state directory is empty "
        "or too small; repeat for several; none for no bootstrap node.",
        _bootstrap_node,
        metavar="HOST:PORT",
        repeatable=True,
    ),
    Option(
        "dht-port",
        "port",
        "0",
        "UDP port of the DHT node; 0 for the number of the peer port.",
        _port_or_zero,
        metavar="PORT",
    ),
    Option(
        "http-seed-delay",
        "seconds",
        "10",
        "Seconds a requested file may make no progress from peers before the mirror joins.",
        _float,
        metavar="SECS",
    ),
    Option(
        "connect-grace",
        "seconds",
        "3",
        "Seconds a new swarm holds a file larger than one piece for its first peers "
        "when peers may come (LSD or the DHT running, a tracker or static peers), so a "
        "fleet starting together fetches it from the mirror once; smaller files never "
        "wait.",
        _float,
        metavar="SECS",
    ),
    Option(
        "http-seed-min-rate",
        "rate",
        "0",
        "Bytes/s (k and M suffixes allowed) under which the mirror joins a slow swarm "
        "download; 0 disables the check.",
        _rate,
        metavar="RATE",
    ),
    Option(
        "max-peers",
        "count",
        "200",
        "Peer connections in all swarms together.",
        _int,
        metavar="N",
    ),
    Option(
        "max-peers-per-swarm",
        "count",
        "50",
        "Peer connections in one swarm.",
        _int,
        metavar="N",
    ),
    Option(
        "upload-slots",
        "count",
        "8",
        "Peers unchoked at once across all swarms, the optimistic unchoke included.",
        _int,
        metavar="N",
    ),
    Option(
        "choke-interval",
        "seconds",
        "10",
        "Seconds between choke rounds (tit-for-tat ranking, optimistic unchoke); a peer "
        "that becomes interested gets a free upload slot at once, between rounds.",
        _positive_float,
        metavar="SECS",
    ),
    Option(
        "old-swarm-keep",
        "seconds",
        "3600",
        "Seconds the swarm of a replaced index keeps seeding its complete files.",
        _float,
        metavar="SECS",
    ),
    Option(
        "http-timeout",
        "seconds",
        "30",
        "Seconds to wait for the mirror to connect or send data before giving up (504).",
        _positive_float,
        metavar="SECS",
    ),
    Option(
        "access-log",
        "path",
        "",
        "Append one line per apt request to this file (client, request, status, bytes, "
        "source, milliseconds; reopened on SIGHUP); empty for none.",
        _path,
        metavar="FILE",
    ),
    Option(
        "upload-rate",
        "rate",
        "0",
        "Bytes/s (k and M suffixes allowed) sent to peers, all swarms together; 0 for no limit.",
        _rate,
        metavar="RATE",
    ),
    Option(
        "download-rate",
        "rate",
        "0",
        "Bytes/s (k and M suffixes allowed) received from peers, all swarms together; 0 "
        "for no limit.",
        _rate,
        metavar="RATE",
    ),
    Option(
        "mirror-rate",
        "rate",
        "0",
        "Bytes/s (k and M suffixes allowed) fetched from mirrors, all downloads together; "
        "0 for no limit.",
        _rate,
        metavar="RATE",
    ),
)

_BY_NAME: dict[str, Option] = {opt.name: opt for opt in OPTIONS}


def option(name: str) -> Option:
    """The table entry for ``name``."""
    return _BY_NAME[name]


def default(name: str) -> Any:
    """The parsed default of option ``name``: code that needs a default asks the table,
    so no default is written twice (settings objects, the choker)."""
    opt = _BY_NAME[name]
    return _parse(opt, opt.default, f"default {name}")


@dataclass
class Config:
    """The effective configuration: one typed attribute per option."""

    values: dict[str, Any] = field(default_factory=dict)
    _clients: dict[str, bool] = field(default_factory=dict, repr=False)
    _mirrors: dict[str, bool] = field(default_factory=dict, repr=False)
    _reach: Reach | None = field(default=None, repr=False)

    def __getattr__(self, attr: str) -> Any:
        try:
            return self.values[attr]
        except KeyError:
            raise AttributeError(attr) from None

    def mirror_allowed(self, host: str) -> bool:
        """Whether ``host`` (``name`` or ``name:port``, lower case) may be fetched from."""
        known = self._mirrors.get(host)
        if known is None:
            if len(self._mirrors) > 1024:
                self._mirrors.clear()
            known = self._mirrors[host] = self._mirror_allowed(host)
        return known

    def _mirror_allowed(self, host: str) -> bool:
        return self.reach.allows(host)

    @property
    def reach(self) -> Reach:
        """``--allowed-mirrors`` as a policy over names and addresses (made once)."""
        if self._reach is None:
            self._reach = Reach(self.values["allowed_mirrors"])
        return self._reach

    def tls_mirror(self, host: str) -> bool:
        """Whether mirror ``host`` (``name`` or ``name:port``) is fetched over https."""
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if host.endswith(":443"):
            return True
        return any(
            fnmatch.fnmatchcase(host, pat) or fnmatch.fnmatchcase(name, pat)
            for pat in self.values["tls_mirrors"]
        )

    def client_allowed(self, address: str) -> bool:
        """Whether a client at ``address`` may use the proxy (asked on every request)."""
        known = self._clients.get(address)
        if known is None:
            if len(self._clients) > 4096:
                self._clients.clear()
            known = self._clients[address] = self._client_allowed(address)
        return known

    def _client_allowed(self, address: str) -> bool:
        try:
            addr = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.values["allowed_clients"])


def _parse(opt: Option, raw: str | list[str], where: str) -> Any:
    try:
        if opt.repeatable:
            items = raw if isinstance(raw, list) else _split(raw)
            return [value for value in map(opt.parse, items) if value is not None]
        return opt.parse(str(raw))
    except ValueError as exc:
        raise ConfigError(where, str(exc)) from None


def read_config_file(path: str) -> dict[str, str]:
    """The raw ``key = value`` pairs of a config file, every key checked against the table.

    ``#`` and ``;`` start a comment at the beginning of a line, or after a space or tab
    on a value's line (``cache-dir = /srv/dt ; big disk``): no value of the table
    contains one after a blank, so an inline comment never ends up in a path.
    """
    parser = configparser.ConfigParser(
        interpolation=None, strict=True, inline_comment_prefixes=("#", ";")
    )
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise ConfigError(path, exc.strerror or str(exc)) from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(path, f"not a valid config file: {first}") from None
    unknown = [s for s in parser.sections() if s != SECTION]
    if unknown:
        raise ConfigError(path, f"unknown section [{unknown[0]}] (only [{SECTION}])")
    raw: dict[str, str] = {}
    if parser.has_section(SECTION):
        for key, value in parser.items(SECTION):
            name = key.replace("_", "-")
            opt = _BY_NAME.get(name)
            if opt is None or opt.cli_only:
                raise ConfigError(f"{path}: {key}", "unknown key")
            raw[name] = value
    return raw


def load_config(
    cli: Mapping[str, str | list[str] | None] | None = None, *, path: str | None = None
) -> Config:
    """Merge defaults, the config file and command-line values into a :class:`Config`.

    ``cli`` maps option names to the raw strings given on the command line (absent or
    ``None`` when not given). ``path`` (or ``cli["config"]``) names the config file.
    """
    cli = dict(cli or {})
    path = path or str(cli.get("config") or "")
    file_values = read_config_file(_path(path)) if path else {}
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        given = cli.get(opt.name)
        if given is not None and given != []:
            values[opt.attr] = _parse(opt, given, f"--{opt.name}")
        elif opt.name in file_values:
            values[opt.attr] = _parse(opt, file_values[opt.name], f"{path}: {opt.name}")
        else:
            values[opt.attr] = _parse(opt, opt.default, f"default {opt.name}")
    if not values["cache_dir"] or values["cache_dir"] == _path("~/.cache/debtorrent"):
        values["cache_dir"] = _default_cache_dir()
    if not values["state_dir"] or values["state_dir"] == _path("~/.local/state/debtorrent"):
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        values["state_dir"] = os.path.join(base, "debtorrent")
    return Config(values)
