"""A bencode codec (BEP 3), strict by default, that also reports where values sit.

Why our own: an info hash is the SHA1 of the ``info`` value *exactly as received*, so the
decoder must hand back its raw byte span, and it must refuse every non-canonical form
(``i03e``, ``i-0e``, ``03:abc``, unsorted or repeated dict keys, trailing bytes): two peers
that accepted the same torrent must agree on its hash, and a lenient decoder lets a
crafted file mean one thing here and another there. The PyPI ``bencode.py`` is not in
Debian and accepts unsorted keys.

Strict is for bytes that are hashed (an info dictionary, a ``.torrent``). Where nothing
is hashed (peer extension messages, tracker and DHT replies) decoding takes
``strict=False``, as libtorrent's decoder does: dictionary keys in any order (a key
repeated is still an error: which value would count?) and integers or string lengths
with leading zeros (``i03e``, ``i-0e``, ``03:abc``). Everything else stays an error.

Decoding is iterative (an explicit stack, never Python recursion) and checks every
length against the input before slicing, so any input either decodes or raises
:class:`~debtorrent.errors.BencodeError`: never ``IndexError``, ``ValueError`` or
``RecursionError``. Byte strings decode to ``bytes`` (dict keys too); integers to ``int``.

Encoding accepts ``int``, ``bytes``/``bytearray``/``memoryview``, ``str`` (as UTF-8),
``list``/``tuple`` and ``dict`` with ``bytes`` or ``str`` keys, which are sorted as raw
bytes, as the spec demands.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from debtorrent.errors import BencodeError

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "decode",
    "decode_prefix",
    "decode_with_spans",
    "encode",
]

#: Deepest nesting of lists and dicts accepted when decoding. A .torrent needs 5 levels
#: (top dict, info, files list, file dict, path list); the limit only stops hostile input.
DEFAULT_MAX_DEPTH = 64

# A decoded integer may have at most this many digits; 2**64 needs 20. Refusing longer
# ones early keeps a hostile peer from making us convert a megabyte of digits.
_MAX_INT_DIGITS = 32
_INT_LIMIT = 10**_MAX_INT_DIGITS

_DIGITS = frozenset(b"0123456789")
_I, _L, _D, _E = ord("i"), ord("l"), ord("d"), ord("e")
_ZERO = ord("0")


# --- encoding -----------------------------------------------------------------------------


def encode(obj: Any) -> bytes:
    """Return the canonical bencoding of *obj*.

    Raises :class:`BencodeError` for a type bencoding cannot express (``bool``, ``float``,
    ``None``…), a dict whose keys collide once ``str`` keys are encoded, or nesting deeper
    than :data:`DEFAULT_MAX_DEPTH` (which also catches self-referencing containers).
    """
    out: list[bytes] = []
    _encode_into(obj, out, 0)
    return b"".join(out)


def _key_bytes(key: Any) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise BencodeError(f"dict key must be bytes or str, not {type(key).__name__}")


def _encode_into(obj: Any, out: list[bytes], depth: int) -> None:
    # bool is an int subclass; encoding True as i1e silently is almost always a bug.
    if isinstance(obj, bool):
        raise BencodeError("cannot bencode a bool")
    if isinstance(obj, int):
        if abs(obj) >= _INT_LIMIT:  # what decode() would refuse: never send it
            raise BencodeError(f"integer of more than {_MAX_INT_DIGITS} digits")
        out.append(b"i%de" % obj)
    elif isinstance(obj, bytes | bytearray | memoryview):
        data = bytes(obj)
        out.append(b"%d:" % len(data))
        out.append(data)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        out.append(b"%d:" % len(data))
        out.append(data)
    elif isinstance(obj, list | tuple):
        if depth >= DEFAULT_MAX_DEPTH:
            raise BencodeError("nesting too deep to bencode")
        out.append(b"l")
        for item in obj:
            _encode_into(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(obj, Mapping):
        if depth >= DEFAULT_MAX_DEPTH:
            raise BencodeError("nesting too deep to bencode")
        items = sorted((_key_bytes(k), v) for k, v in obj.items()) if obj else []
        out.append(b"d")
        previous: bytes | None = None
        for key, value in items:
            if key == previous:
                raise BencodeError(f"duplicate dict key {key!r}")
            previous = key
            out.append(b"%d:" % len(key))
            out.append(key)
            _encode_into(value, out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot bencode a {type(obj).__name__}")


# --- decoding -----------------------------------------------------------------------------


def decode(
    data: bytes,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    strict: bool = True,
    sorted_keys: bool = True,
) -> Any:
    """Decode exactly one bencoded value that fills all of *data*.

    ``strict=False`` is the lenient mode of the module docstring, for values nothing
    hashes (tracker replies: some trackers do not sort their keys). ``sorted_keys=False``
    is the older spelling of the same.
    """
    value, end = _decode(data, 0, max_depth, None, strict and sorted_keys)
    if end != len(data):
        raise BencodeError(f"trailing data at offset {end}")
    return value


def decode_prefix(
    data: bytes, start: int = 0, *, max_depth: int = DEFAULT_MAX_DEPTH, strict: bool = True
) -> tuple[Any, int]:
    """Decode one value beginning at *start*; return it and the offset just after it.

    For framings that append raw bytes after a bencoded dict (BEP 9/10 style extension
    messages): the caller takes ``data[end:]`` as the payload. Peer messages are not
    hashed: they are decoded with ``strict=False``.
    """
    if not 0 <= start <= len(data):
        raise BencodeError(f"start offset {start} outside the data")
    return _decode(data, start, max_depth, None, strict)


def decode_with_spans(
    data: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH
) -> tuple[dict[bytes, Any], dict[bytes, tuple[int, int]]]:
    """Decode a top-level dict; also return each top-level value's ``(start, end)`` span.

    ``data[start:end]`` are the value's bytes exactly as received, which is what an info
    hash must be computed over: ``sha1(data[slice(*spans[b"info"])])``.
    """
    spans: dict[bytes, tuple[int, int]] = {}
    value, end = _decode(data, 0, max_depth, spans)
    if end != len(data):
        raise BencodeError(f"trailing data at offset {end}")
    if not isinstance(value, dict):
        raise BencodeError("top-level value is not a dict")
    return value, spans


def _parse_int(data: bytes, pos: int, n: int, strict: bool = True) -> tuple[int, int]:
    """Parse ``i<digits>e`` at *pos* (which holds ``i``); leading zeros only if not strict."""
    end = data.find(b"e", pos + 1, min(n, pos + 3 + _MAX_INT_DIGITS))
    if end < 0:
        raise BencodeError(f"unterminated or oversized integer at offset {pos}")
    body = data[pos + 1 : end]
    digits = body[1:] if body[:1] == b"-" else body
    if not digits or not _DIGITS.issuperset(digits):
        raise BencodeError(f"malformed integer at offset {pos}")
    if strict and digits[0] == _ZERO and (len(digits) > 1 or len(body) > len(digits)):
        raise BencodeError(f"non-canonical integer {body!r} at offset {pos}")
    return int(body), end + 1


def _parse_bytes(data: bytes, pos: int, n: int, strict: bool = True) -> tuple[bytes, int]:
    """Parse ``<len>:<bytes>`` at *pos* (which holds a digit)."""
    # A length longer than the input needs at most len(str(n)) digits; look no further
    # (leading zeros, lenient only, may add a few).
    reach = len(str(n)) + 1 + (0 if strict else _MAX_INT_DIGITS)
    colon = data.find(b":", pos, min(n, pos + reach))
    if colon < 0:
        raise BencodeError(f"malformed or oversized string length at offset {pos}")
    digits = data[pos:colon]
    if not _DIGITS.issuperset(digits):
        raise BencodeError(f"malformed string length at offset {pos}")
    if strict and digits[0] == _ZERO and len(digits) > 1:
        raise BencodeError(f"non-canonical string length at offset {pos}")
    length = int(digits)
    start = colon + 1
    if length > n - start:
        raise BencodeError(f"string of {length} bytes at offset {pos} runs past the input")
    return data[start : start + length], start + length


def _decode(
    data: bytes,
    pos: int,
    max_depth: int,
    spans: dict[bytes, tuple[int, int]] | None,
    strict: bool = True,
) -> tuple[Any, int]:
    """Decode one value at *pos*; if *spans* is given, record top-level dict value spans.

    The stack holds the open containers; for a dict it also holds the key awaiting its
    value (``None`` while a key is expected) and the previous key, for the order check.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    n = len(data)
    # Each frame: [container, pending key or None, previous key or None]
    stack: list[list[Any]] = []
    value_start = -1
    while True:
        if pos >= n:
            raise BencodeError("unexpected end of data")
        if spans is not None and len(stack) == 1 and stack[0][1] is not None:
            value_start = pos
        c = data[pos]
        if c == _I:
            value, pos = _parse_int(data, pos, n, strict)
        elif c in _DIGITS:
            value, pos = _parse_bytes(data, pos, n, strict)
        elif c == _L or c == _D:
            if len(stack) >= max_depth:
                raise BencodeError(f"nesting deeper than {max_depth} at offset {pos}")
            stack.append([[] if c == _L else {}, None, None])
            pos += 1
            continue
        elif c == _E and stack:
            frame = stack.pop()
            if frame[1] is not None:
                raise BencodeError(f"dict key {frame[1]!r} has no value")
            value = frame[0]
            pos += 1
        else:
            raise BencodeError(f"unexpected byte {bytes([c])!r} at offset {pos}")

        # Deliver the finished value to the innermost open container (or return it).
        if not stack:
            return value, pos
        frame = stack[-1]
        container = frame[0]
        if isinstance(container, list):
            container.append(value)
        elif frame[1] is None:
            if not isinstance(value, bytes):
                raise BencodeError(f"dict key is not a string (before offset {pos})")
            if strict and frame[2] is not None and value <= frame[2]:
                raise BencodeError(f"dict key {value!r} unsorted or repeated")
            if not strict and value in container:
                raise BencodeError(f"dict key {value!r} repeated")
            frame[1] = value
        else:
            key = frame[1]
            container[key] = value
            if spans is not None and len(stack) == 1:
                spans[key] = (value_start, pos)
            frame[2] = key
            frame[1] = None
