"""What apt asked for: request targets to ``(mirror, path)`` and file classes.

Pure functions, no I/O. apt sends either the path form (``GET /<host>/<path>``, a
rewritten sources.list) or the proxy form (``GET http://<host>/<path>``,
``Acquire::http::Proxy``); both end up as the same :class:`Target`. The raw target is
percent-decoded exactly once (apt sends ``+`` as ``%2b``), then normalised; anything
that could escape the cache directory is refused here, before any other code sees it.

Host names are canonical before any policy sees them: lower case, port 80 dropped,
IPv6 literals in their compressed form, and a numeric host only as a dotted quad
(``2130706433``, ``0x7f000001`` or ``127.1`` all reach 127.0.0.1 through the
resolver; they are refused here so no rule can be dodged by spelling).

:func:`classify` is the design's table of file classes, and the list of what the
daemon fetches at all: a path that is not a file of a Debian archive (the ``dists/``
tree, a flat repository's indexes, pool files by their suffixes) is
:attr:`FileClass.UNKNOWN`, which the apt side refuses with 403. That keeps the proxy
from being an open fetcher of whatever a mirror host serves.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from debtorrent.errors import BadRequestError, ForbiddenError

__all__ = ["FileClass", "Target", "classify", "parse_authority", "parse_target"]

_HOST_RE = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
)
_IPV6_RE = re.compile(r"^\[[0-9a-f:.]+\]$")
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_MAX_PATH = 4096
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\\\]")


class FileClass(enum.Enum):
    """How a file is fetched, verified and cached (the design's table)."""

    INDEX = "index"  # InRelease, Release, Release.gpg: fresh every time, offline copy kept
    PACKAGES = "packages"  # binary-*/Packages{,.gz,...}: verified, unpacked, parsed
    BY_HASH = "by-hash"  # by-hash/<algo>/<hex>: resolved through the Release hashes
    PDIFF = "pdiff"  # Packages.diff/*: 404 so apt takes the whole index
    PACKAGE = "package"  # .deb/.udeb: verified against the Packages SHA256
    IMMUTABLE = "immutable"  # pool sources and the like: fetched once
    VOLATILE = "volatile"  # other indexes (Sources, Translation, Contents, dep11): fresh
    UNKNOWN = "unknown"  # not a file of a Debian archive: refused (403)


@dataclass(frozen=True)
class Target:
    """A request reduced to the mirror it names and a safe relative path.

    ``mirror`` is ``host`` or ``host:port`` in lower case; ``path`` has no leading
    slash, no empty, ``.`` or ``..`` segments, and is the decoded text.
    """

    mirror: str
    path: str

    @property
    def url(self) -> str:
        """The upstream URL (plain HTTP, as apt's own ``http://`` sources)."""
        from urllib.parse import quote

        return f"http://{self.mirror}/{quote(self.path, safe='/~+:@!$&()*,;=')}"

    def __str__(self) -> str:
        return f"{self.mirror}/{self.path}"


def _decode_once(raw: str) -> str:
    """Percent-decode exactly once, refusing what no file name should contain."""
    text = raw
    if "%" in raw:
        try:
            text = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequestError("request target is not UTF-8") from None
    if _FORBIDDEN.search(raw) or _FORBIDDEN.search(text):
        raise BadRequestError("control character or backslash in request target")
    return text


def _split_host(host: str) -> tuple[str, int | None]:
    """``(canonical name, port or None)`` of ``host[:port]``; raises on anything else."""
    host = host.lower()
    name, port = host, None
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[: end + 1], host[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            raise BadRequestError(f"bad mirror host {host!r}")
        port = rest[1:] if rest else None
        if not _IPV6_RE.match(name):
            raise BadRequestError(f"bad mirror host {host!r}")
        try:
            name = f"[{ipaddress.IPv6Address(name[1:-1]).compressed}]"
        except ValueError:
            raise BadRequestError(f"bad IPv6 address in {host!r}") from None
    else:
        if host.count(":") == 1:
            name, port = host.split(":")
        if not _HOST_RE.match(name):
            raise BadRequestError(f"bad mirror host {host!r}")
        if _NUMERIC_LABEL.match(name.rsplit(".", 1)[-1]):
            try:  # Python takes only the canonical dotted quad, no octal or hex parts
                ipaddress.IPv4Address(name)
            except ValueError:
                raise ForbiddenError(
                    f"numeric host {host!r} is not a dotted-quad IPv4 address",
                    "Forbidden (numeric host not written as a dotted quad)",
                ) from None
    if port is None:
        return name, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequestError(f"bad mirror port in {host!r}")
    return name, int(port)


@functools.lru_cache(maxsize=256)  # a proxy sees few hosts, on every request
def _check_host(host: str) -> str:
    name, port = _split_host(host)
    if port is None or port == 80:
        return name
    return f"{name}:{port}"


def parse_authority(raw: str) -> tuple[str, int]:
    """The ``(host, port)`` of a CONNECT request target (``host:port``, port required).

    The host is canonical as in :func:`parse_target`; raises :class:`BadRequestError`.
    """
    if len(raw) > 300 or "/" in raw or "@" in raw:
        raise BadRequestError("CONNECT target is not host:port")
    name, port = _split_host(raw)
    if port is None:
        raise BadRequestError("CONNECT target names no port")
    return name, port


def _normalise(path: str) -> str:
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise BadRequestError("'..' in request path")
        parts.append(part)
    if not parts:
        raise BadRequestError("request names no file")
    return "/".join(parts)


def parse_target(raw: str) -> Target:
    """Turn a raw request target (as on the request line) into a :class:`Target`.

    Raises :class:`BadRequestError` for anything malformed or escaping, and
    :class:`ForbiddenError` for a numeric host in another spelling than a dotted quad.
    """
    if len(raw) > _MAX_PATH:
        raise BadRequestError("request target too long")
    raw = raw.split("#", 1)[0].split("?", 1)[0]
    lower = raw[:8].lower()
    if lower.startswith("http://"):
        rest = raw[7:]
    elif lower.startswith("https://"):
        raise BadRequestError("https:// in a GET: apt tunnels https sources with CONNECT")
    elif raw.startswith("/"):
        rest = raw[1:]
    else:
        raise BadRequestError("request target is neither /<mirror>/<path> nor http://...")
    text = _decode_once(rest)
    host, _, path = text.partition("/")
    if "@" in host:
        raise BadRequestError("credentials in request target")
    return Target(_check_host(host), _normalise(path))


_COMPRESSED = r"(?:\.(?:gz|xz|bz2|lz4|zst|lzma))?"
_PACKAGES_RE = re.compile(rf"(?:^|/)binary-[^/]+/Packages{_COMPRESSED}$")
_FLAT_PACKAGES_RE = re.compile(rf"^Packages{_COMPRESSED}$")
_BY_HASH_RE = re.compile(r"(?:^|/)by-hash/(?:MD5Sum|SHA1|SHA256|SHA512)/[0-9a-fA-F]{32,128}$")
_SOURCES_RE = re.compile(rf"^Sources{_COMPRESSED}$")
_RELEASE_NAMES = ("InRelease", "Release", "Release.gpg")
# Index files of a suite besides Packages (Translation, Contents, dep11, cnf, i18n).
_INDEX_PREFIXES = (
    "Contents-",
    "Translation-",
    "Commands-",
    "Components-",
    "icons-",
    "CID-Index-",
)
_INDEX_NAMES = ("Index", "ChangeLog")
# Files of the pool (and of a flat repository): binary and source packages.
_PACKAGE_SUFFIXES = (".deb", ".udeb", ".ddeb")
_SOURCE_SUFFIXES = (".dsc", ".diff.gz", ".changes", ".buildinfo", ".asc")
_TARBALL_RE = re.compile(r"\.tar(?:\.(?:gz|xz|bz2|lzma|zst|lz))?(?:\.asc)?$")


def classify(path: str) -> FileClass:
    """The :class:`FileClass` of a normalised path (as :func:`parse_target` returns).

    Recognised: the ``dists/`` tree of a suite (Release files, ``Packages`` of every
    ``binary-*`` directory, ``debian-installer`` included, by-hash copies, pdiffs,
    ``Sources``, ``Translation-*``, ``Contents-*``, dep11, cnf, ``installer-*``
    images); a flat repository's indexes anywhere (``Packages``, ``Sources``,
    ``Release``...); and package and source files by suffix. Anything else is
    :attr:`FileClass.UNKNOWN`.
    """
    name = path.rsplit("/", 1)[-1]
    under_dists = "/dists/" in f"/{path}"
    if ".diff/" in path:
        return FileClass.PDIFF
    if name in _RELEASE_NAMES:
        return FileClass.INDEX
    if _BY_HASH_RE.search(path):
        return FileClass.BY_HASH
    if _PACKAGES_RE.search(path) or _FLAT_PACKAGES_RE.match(name):
        return FileClass.PACKAGES
    if name.endswith(_PACKAGE_SUFFIXES):
        return FileClass.PACKAGE
    if name.endswith(_SOURCE_SUFFIXES) or _TARBALL_RE.search(name):
        if not under_dists:
            return FileClass.IMMUTABLE  # pool files never change under one name
    if _SOURCES_RE.match(name) or name.startswith(_INDEX_PREFIXES) or name in _INDEX_NAMES:
        return FileClass.VOLATILE
    if under_dists and any(
        part.startswith("installer-") or part == "dep11" for part in path.split("/")
    ):
        return FileClass.VOLATILE  # d-i images and AppStream data of a suite
    return FileClass.UNKNOWN
