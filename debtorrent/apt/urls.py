"""What apt asked for: request targets to ``(mirror, path)`` and file classes.

Pure functions, no I/O. apt sends either the path form (``GET /<host>/<path>``, a
rewritten sources.list) or the proxy form (``GET http://<host>/<path>``,
``Acquire::http::Proxy``); both end up as the same :class:`Target`. The raw target is
percent-decoded exactly once (apt sends ``+`` as ``%2b``), then normalised; anything
that could escape the cache directory is refused here, before any other code sees it.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from debtorrent.errors import BadRequestError

__all__ = ["FileClass", "Target", "classify", "parse_target"]

_HOST_RE = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
)
_IPV6_RE = re.compile(r"^\[[0-9a-f:.]+\]$")
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
    VOLATILE = "volatile"  # everything else: fresh every time, offline copy kept


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


@functools.lru_cache(maxsize=256)  # a proxy sees few hosts, on every request
def _check_host(host: str) -> str:
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
    else:
        if host.count(":") == 1:
            name, port = host.split(":")
        if not _HOST_RE.match(name):
            raise BadRequestError(f"bad mirror host {host!r}")
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise BadRequestError(f"bad mirror port in {host!r}")
        if int(port) == 80:
            return name
        return f"{name}:{int(port)}"
    return name


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

    Raises :class:`BadRequestError` for anything malformed or escaping.
    """
    if len(raw) > _MAX_PATH:
        raise BadRequestError("request target too long")
    raw = raw.split("#", 1)[0].split("?", 1)[0]
    lower = raw[:8].lower()
    if lower.startswith("http://"):
        rest = raw[7:]
    elif lower.startswith("https://"):
        raise BadRequestError("https through the proxy is not supported (use http:// sources)")
    elif raw.startswith("/"):
        rest = raw[1:]
    else:
        raise BadRequestError("request target is neither /<mirror>/<path> nor http://...")
    text = _decode_once(rest)
    host, _, path = text.partition("/")
    if "@" in host:
        raise BadRequestError("credentials in request target")
    return Target(_check_host(host), _normalise(path))


_PACKAGES_RE = re.compile(r"(^|/)binary-[^/]+/Packages(\.(gz|xz|bz2|lz4|zst))?$")
_IMMUTABLE_SUFFIXES = (".dsc", ".diff.gz", ".changes", ".buildinfo")


def classify(path: str) -> FileClass:
    """The :class:`FileClass` of a normalised path (as :func:`parse_target` returns)."""
    name = path.rsplit("/", 1)[-1]
    if ".diff/" in path:
        return FileClass.PDIFF
    if "/dists/" in f"/{path}":
        if name in ("InRelease", "Release", "Release.gpg"):
            return FileClass.INDEX
        if "/by-hash/" in path:
            return FileClass.BY_HASH
        if _PACKAGES_RE.search(path):
            return FileClass.PACKAGES
        return FileClass.VOLATILE
    if name.endswith((".deb", ".udeb")):
        return FileClass.PACKAGE
    if "/pool/" in f"/{path}" or name.endswith(_IMMUTABLE_SUFFIXES) or ".tar." in name:
        return FileClass.IMMUTABLE  # pool files never change under one name
    return FileClass.VOLATILE
