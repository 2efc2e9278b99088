"""Release signatures, checked by the daemon with Debian's own tools (gpgv, or sqv).

apt checks every Release it uses, but the daemon also *shares*: the hashes it verifies
and seeds to peers come from the Release, so it must not rest on the mirror's word. A
Release is therefore verified here, against the keyrings apt itself would use:

- the ``Signed-By`` of this machine's sources (``/etc/apt/sources.list``,
  ``sources.list.d/*.list`` and ``*.sources``, inline key blocks included),
- ``/etc/apt/trusted.gpg`` and ``/etc/apt/trusted.gpg.d/*.{gpg,asc}``,
- ``/etc/apt/keyrings/*`` (where apt's documentation puts ``Signed-By`` keys: on a
  daemon that proxies for other machines, a key dropped there counts too),
- ``/usr/share/keyrings/*.{gpg,pgp,asc}`` (the vendors' keyrings),
- plus every ``--keyring``.

A daemon serves many machines, so one trust set covers every suite (apt's own
``Signed-By`` pins a key to a source; the daemon only decides what it shares). The
keyrings are merged into one binary keyring (armored ones de-armored) in a private
directory, rebuilt when any of them changes.

``gpgv`` is preferred (Debian's apt 2.6 uses it); ``sqv`` (apt 3's verifier) is used
where gpgv is missing. A clear-signed InRelease must be exactly one signed message
(nothing before or after it), and what the daemon then parses is the text the tool
says is signed, never the raw download. A signature with a weak digest (MD5, SHA1,
RIPEMD160) does not count, and a Release whose ``Valid-Until`` has passed is
"expired", as apt has it.

The verdict's ``state`` is one of :data:`STATES`. ``verified`` (and ``unchecked``,
in mode ``off``) is trusted: its indexes become swarms. Everything else is not.
"""

from __future__ import annotations

import base64
import binascii
import glob
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

from debtorrent.errors import ConfigError

__all__ = [
    "STATES",
    "TRUSTED_STATES",
    "Keyrings",
    "Verdict",
    "Verifier",
    "dearmor",
    "split_clearsigned",
]

log = logging.getLogger(__name__)

VERIFIED = "verified"  # a good signature by a key in the keyrings, not expired
UNCHECKED = "unchecked"  # --verify-signatures off: the mirror's word is taken
UNSIGNED = "unsigned"  # no signature at all (a Release without Release.gpg)
NO_KEY = "no-key"  # signed, but by no key in the keyrings
BAD = "bad"  # a signature that does not verify, or a malformed signed file
WEAK = "weak"  # only signatures with a weak digest (MD5, SHA1, RIPEMD160)
EXPIRED = "expired"  # Valid-Until has passed, or the signing key expired or was revoked
ERROR = "error"  # the verifier could not run
STATES = (VERIFIED, UNCHECKED, UNSIGNED, NO_KEY, BAD, WEAK, EXPIRED, ERROR)
TRUSTED_STATES = (VERIFIED, UNCHECKED)

TIMEOUT = 30.0  # seconds a verifier may take
_WEAK_DIGESTS = {"1": "MD5", "2": "SHA1", "3": "RIPEMD160"}
_SIGNED = "-----BEGIN PGP SIGNED MESSAGE-----"
_SIGNATURE = "-----BEGIN PGP SIGNATURE-----"
_SIGNATURE_END = "-----END PGP SIGNATURE-----"
_KEY_BLOCK = re.compile(
    rb"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----", re.S
)


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check. ``content`` is the signed text (inline signatures)."""

    state: str
    reason: str
    signer: str = ""  # fingerprint of the key that made the good signature
    content: bytes | None = None

    @property
    def trusted(self) -> bool:
        return self.state in TRUSTED_STATES


# --- pure helpers -----------------------------------------------------------------------


def split_clearsigned(data: bytes) -> tuple[bytes, bytes] | None:
    """``(header and text part, armored signature)`` of exactly one clear-signed
    message, or None when ``data`` is anything else (text before the message, a second
    message or other text after the signature, no signature block)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.rstrip("\r") for line in lines]
    if not lines or lines[0].rstrip() != _SIGNED:
        return None
    starts = [i for i, line in enumerate(lines) if line.rstrip() == _SIGNATURE]
    ends = [i for i, line in enumerate(lines) if line.rstrip() == _SIGNATURE_END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        return None
    if any(line.strip() for line in lines[ends[0] + 1 :]):
        return None
    if sum(1 for line in lines if line.rstrip() == _SIGNED) != 1:
        return None
    head = "\n".join(lines[: starts[0]]) + "\n"
    signature = "\n".join(lines[starts[0] : ends[0] + 1]) + "\n"
    return head.encode(), signature.encode()


def cleartext(head: bytes) -> bytes:
    """The signed text of a clear-signed message's first part (dash-escaping undone)."""
    lines = head.decode("utf-8").split("\n")
    blank = lines.index("") if "" in lines else len(lines)
    body = lines[blank + 1 :]
    if body and body[-1] == "":
        body.pop()
    return ("\n".join(line[2:] if line.startswith("- ") else line for line in body) + "\n").encode()


def dearmor(data: bytes) -> bytes:
    """The binary packets of every ASCII-armored public key block in ``data``."""
    out = bytearray()
    for block in _KEY_BLOCK.findall(data):
        lines = block.replace(b"\r", b"").split(b"\n")
        if b"" in lines:  # armor headers end at the first blank line
            first_blank = lines.index(b"")
            if all(b": " in line for line in lines[:first_blank]):
                lines = lines[first_blank + 1 :]
        payload = b"".join(line.strip() for line in lines if not line.startswith(b"="))
        try:
            out += base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            continue
    return bytes(out)


def _binary_keyring(data: bytes) -> bool:
    """An OpenPGP packet stream (a ``.gpg`` keyring), not a keybox or anything else."""
    return bool(data) and data[0] & 0x80 != 0 and data[8:12] != b"KBXf"


def parse_status(lines: Iterable[str]) -> tuple[str, str, str]:
    """``(state, reason, signer)`` from gpgv's ``--status-fd`` lines (apt's rules).

    Each signature's lines start at ``NEWSIG``. A signature counts when it has
    ``GOODSIG`` (not ``EXPKEYSIG``/``REVKEYSIG``) and a ``VALIDSIG`` with a strong
    digest. Any bad signature fails the file; otherwise one good signature suffices,
    and extra signatures by unknown keys do not matter (Debian signs with two keys;
    a machine may know one).
    """
    groups: list[list[list[str]]] = [[]]
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0] != "[GNUPG:]":
            continue
        if fields[1] == "NEWSIG" and groups[-1]:
            groups.append([])
        groups[-1].append(fields[1:])
    good, weak, bad, missing, expired = [], [], [], [], []
    for group in groups:
        kinds = {fields[0]: fields[1:] for fields in group}
        valid = kinds.get("VALIDSIG", [])
        if "BADSIG" in kinds:
            bad.append((kinds["BADSIG"] or ["?"])[0])
        elif "ERRSIG" in kinds and _errsig_code(kinds["ERRSIG"]) != "9":
            bad.append(f"error {_errsig_code(kinds['ERRSIG'])}")
        elif any(k in kinds for k in ("EXPKEYSIG", "REVKEYSIG", "EXPSIG")):
            expired.append(next(k for k in ("EXPKEYSIG", "REVKEYSIG", "EXPSIG") if k in kinds))
        elif "GOODSIG" in kinds and len(valid) >= 8:
            signer = valid[9] if len(valid) > 9 else valid[0]
            (weak if valid[7] in _WEAK_DIGESTS else good).append(signer)
        elif "NO_PUBKEY" in kinds or "ERRSIG" in kinds:
            missing.append((kinds.get("NO_PUBKEY") or kinds.get("ERRSIG") or ["?"])[0])
    if bad:
        return BAD, f"bad signature ({', '.join(bad)})", ""
    if good:
        return VERIFIED, f"good signature by {good[0]}", good[0]
    if expired:
        return EXPIRED, f"signing key expired or revoked ({', '.join(expired)})", ""
    if weak:
        return WEAK, "signed only with a weak digest (MD5, SHA1 or RIPEMD160)", ""
    if missing:
        return NO_KEY, f"signed by a key in no keyring ({', '.join(sorted(set(missing)))})", ""
    return BAD, "no usable signature", ""


def _errsig_code(args: list[str]) -> str:
    """The return code of ``ERRSIG <keyid> <algo> <hash> <class> <time> <rc> [<fpr>]``."""
    return args[5] if len(args) > 5 else "?"


def valid_until_passed(release_text: bytes, now: float | None = None) -> str | None:
    """The ``Valid-Until`` of a Release if it has passed, else None."""
    match = re.search(rb"^Valid-Until:[ \t]*(.+?)[ \t]*$", release_text, re.M)
    if match is None:
        return None
    value = match.group(1).decode("utf-8", "replace")
    try:
        until = parsedate_to_datetime(value.replace("UTC", "GMT")).timestamp()
    except (TypeError, ValueError, IndexError):
        return f"unreadable Valid-Until {value!r}"
    return value if until < (time.time() if now is None else now) else None


# --- keyrings -----------------------------------------------------------------------


def _sources_signed_by(apt_etc: Path) -> tuple[list[Path], list[bytes]]:
    """Keyring files and inline key blocks named by ``Signed-By`` in apt's sources."""
    files: list[Path] = []
    inline: list[bytes] = []
    one_line = [apt_etc / "sources.list", *sorted((apt_etc / "sources.list.d").glob("*.list"))]
    for path in one_line:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for match in re.finditer(r"signed-by=([^\s\]]+)", text, re.I):
            files += [Path(p) for p in match.group(1).split(",") if p.startswith("/")]
    for path in sorted((apt_etc / "sources.list.d").glob("*.sources")):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for value in _deb822_values(data, b"signed-by"):
            if b"-----BEGIN PGP PUBLIC KEY BLOCK-----" in value:
                inline.append(value)
            else:
                files += [Path(p.decode()) for p in re.split(rb"[\s,]+", value) if p[:1] == b"/"]
    return files, inline


def _deb822_values(data: bytes, name: bytes) -> list[bytes]:
    """Every value of field ``name`` in a deb822 file, unfolded (`` .`` is a blank line)."""
    values: list[bytes] = []
    current: list[bytes] | None = None
    for line in data.replace(b"\r\n", b"\n").split(b"\n"):
        if current is not None and line[:1] in (b" ", b"\t"):
            rest = line[1:]
            current.append(b"" if rest.strip() == b"." else rest)
            continue
        if current is not None:
            values.append(b"\n".join(current).strip() + b"\n")
            current = None
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            current = [value.strip()] if value.strip() else []
    if current is not None:
        values.append(b"\n".join(current).strip() + b"\n")
    return values


class Keyrings:
    """The keyring files apt uses on this machine, plus ``extra``, as one binary keyring."""

    def __init__(
        self,
        extra: Sequence[str] = (),
        *,
        apt_etc: str = "/etc/apt",
        shared: str = "/usr/share/keyrings",
    ) -> None:
        self.extra = [Path(p) for p in extra]
        for path in self.extra:
            if not path.is_file():
                raise ConfigError("keyring", f"{path}: no such file")
        self.apt_etc = Path(apt_etc)
        self.shared = Path(shared)
        self._dir: str | None = None
        self._stamp: tuple | None = None
        self._merged: Path | None = None
        self.count = 0  # keyring files merged in the current build
        self.rebuilt = False  # set on every rebuild; the verifier's memo is then stale

    def sources(self) -> tuple[list[Path], list[bytes]]:
        """``(files, inline blocks)``: where trusted keys come from, in apt's order."""
        signed_by, inline = _sources_signed_by(self.apt_etc)
        files = [self.apt_etc / "trusted.gpg"]
        files += sorted(Path(p) for p in glob.glob(str(self.apt_etc / "trusted.gpg.d" / "*.gpg")))
        files += sorted(Path(p) for p in glob.glob(str(self.apt_etc / "trusted.gpg.d" / "*.asc")))
        for pattern in ("*.gpg", "*.pgp", "*.asc"):  # apt's place for Signed-By keys
            files += sorted(Path(p) for p in glob.glob(str(self.apt_etc / "keyrings" / pattern)))
        for pattern in ("*.gpg", "*.pgp", "*.asc"):
            files += sorted(Path(p) for p in glob.glob(str(self.shared / pattern)))
        files += signed_by + self.extra
        seen: set[Path] = set()
        unique = [f for f in files if not (f in seen or seen.add(f))]
        return [f for f in unique if f.is_file()], inline

    def merged(self) -> Path | None:
        """The merged binary keyring (rebuilt when a source changed); None if no key."""
        files, inline = self.sources()
        stamp = tuple((str(f), *_stat(f)) for f in files) + tuple(hash(b) for b in inline)
        if stamp == self._stamp and self._merged is not None:
            return self._merged
        data = bytearray()
        count = 0
        for path in files:
            try:
                raw = path.read_bytes()
            except OSError as exc:
                log.warning("keyring %s unreadable: %s", path, exc)
                continue
            packets = raw if _binary_keyring(raw) else dearmor(raw)
            if not packets:
                log.warning("keyring %s holds no OpenPGP keys this daemon can read", path)
                continue
            data += packets
            count += 1
        for block in inline:
            data += dearmor(block)
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="debtorrent-keys-")
        target = Path(self._dir) / "trusted.gpg"
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, target)
        self._stamp, self._merged, self.count = stamp, (target if data else None), count
        self.rebuilt = True
        log.info("trusted keys: %d keyring files, %d inline blocks", count, len(inline))
        return self._merged

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_mtime_ns, st.st_size
    except OSError:
        return 0, -1


# --- the verifier -------------------------------------------------------------------


class Verifier:
    """Checks Release signatures in the configured ``mode`` (auto, enforce or off)."""

    def __init__(self, mode: str, keyrings: Keyrings, tool: str | None = None) -> None:
        self.mode = mode
        self.keyrings = keyrings
        self.tool = tool or _find_tool()
        self._memo: dict[tuple[bytes, bytes], Verdict] = {}
        self._memo_ring: Path | None = None
        if mode != "off" and self.tool is None:
            log.warning("neither gpgv nor sqv is installed: no Release can be verified")

    @property
    def enforcing(self) -> bool:
        return self.mode == "enforce"

    def inline(self, data: bytes) -> Verdict:
        """Check a clear-signed InRelease; ``content`` is its signed text if verified."""
        if self.mode == "off":
            return Verdict(UNCHECKED, "signatures not checked (verify-signatures off)")
        parts = split_clearsigned(data)
        if parts is None:
            if _SIGNED.encode() not in data:
                return Verdict(UNSIGNED, "InRelease is not signed")
            return Verdict(BAD, "not exactly one clear-signed message")
        verdict = self._check(data, b"", parts)
        return self._expiry(verdict, verdict.content or b"")

    def detached(self, data: bytes, signature: bytes) -> Verdict:
        """Check a Release against its Release.gpg."""
        if self.mode == "off":
            return Verdict(UNCHECKED, "signatures not checked (verify-signatures off)")
        if not signature.strip():
            return Verdict(UNSIGNED, "empty Release.gpg")
        verdict = self._check(data, signature, None)
        return self._expiry(verdict, data)

    @staticmethod
    def unsigned(reason: str = "no signature") -> Verdict:
        return Verdict(UNSIGNED, reason)

    def _expiry(self, verdict: Verdict, text: bytes) -> Verdict:
        if verdict.state != VERIFIED:
            return verdict
        passed = valid_until_passed(text)
        if passed is None:
            return verdict
        return Verdict(EXPIRED, f"Valid-Until {passed} has passed", verdict.signer, verdict.content)

    def _check(self, data: bytes, signature: bytes, parts: tuple[bytes, bytes] | None) -> Verdict:
        keyring = self.keyrings.merged()
        key = (data, signature)
        memo = self._memo.get(key)
        if memo is not None and keyring == self._memo_ring and not self.keyrings.rebuilt:
            return memo
        if self.tool is None:
            return Verdict(ERROR, "neither gpgv nor sqv is installed")
        if keyring is None:
            verdict = Verdict(NO_KEY, "no keyring holds any key")
        elif os.path.basename(self.tool) == "sqv":
            verdict = self._sqv(keyring, data, signature, parts)
        else:
            verdict = self._gpgv(keyring, data, signature)
        if self.keyrings.rebuilt or len(self._memo) > 64:
            self._memo.clear()
            self.keyrings.rebuilt = False
        if verdict.state != ERROR:
            self._memo[key] = verdict
        self._memo_ring = keyring
        return verdict

    def _gpgv(self, keyring: Path, data: bytes, signature: bytes) -> Verdict:
        with tempfile.TemporaryDirectory(prefix="debtorrent-gpgv-") as tmp:
            home = Path(tmp) / "home"
            home.mkdir(mode=0o700)
            signed = Path(tmp) / "signed"
            signed.write_bytes(data)
            out = Path(tmp) / "out"
            cmd = [self.tool, "--homedir", str(home), "--status-fd", "1", "--keyring", str(keyring)]
            if signature:
                sig = Path(tmp) / "Release.gpg"
                sig.write_bytes(signature)
                cmd += [str(sig), str(signed)]
            else:
                cmd += ["--output", str(out), str(signed)]
            result = _run(cmd)
            if isinstance(result, Verdict):
                return result
            state, reason, signer = parse_status(
                result.stdout.decode("utf-8", "replace").splitlines()
            )
            if state == VERIFIED and result.returncode != 0:
                state, reason = BAD, f"gpgv exited {result.returncode}"
            content = None
            if state == VERIFIED and not signature:
                try:
                    content = out.read_bytes()
                except OSError:
                    return Verdict(ERROR, "gpgv wrote no signed text")
            return Verdict(state, reason, signer, content)

    def _sqv(
        self, keyring: Path, data: bytes, signature: bytes, parts: tuple[bytes, bytes] | None
    ) -> Verdict:
        """sqv takes detached signatures only: a clear-signed file is split first, as
        apt 3 does, and the text sqv then checks is the one parsed."""
        content = None
        if parts is not None:
            content = cleartext(parts[0])
            data, signature = content, parts[1]
        with tempfile.TemporaryDirectory(prefix="debtorrent-sqv-") as tmp:
            signed, sig = Path(tmp) / "signed", Path(tmp) / "sig"
            signed.write_bytes(data)
            sig.write_bytes(signature)
            result = _run([self.tool, "--keyring", str(keyring), str(sig), str(signed)])
            if isinstance(result, Verdict):
                return result
            if result.returncode == 0 and result.stdout.strip():
                signer = result.stdout.decode("ascii", "replace").split()[0]
                return Verdict(VERIFIED, f"good signature by {signer}", signer, content)
            error = result.stderr.decode("utf-8", "replace").strip().splitlines()
            text = error[-1] if error else f"sqv exited {result.returncode}"
            if "missing key" in text.lower() or "no key" in text.lower():
                return Verdict(NO_KEY, f"signed by a key in no keyring ({text})")
            return Verdict(BAD, text[:200])


def _find_tool() -> str | None:
    return shutil.which("gpgv") or shutil.which("sqv")


def _run(cmd: list[str]) -> subprocess.CompletedProcess | Verdict:
    try:
        return subprocess.run(
            cmd, capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired:
        return Verdict(ERROR, f"{os.path.basename(cmd[0])} took over {TIMEOUT:.0f} s")
    except OSError as exc:
        return Verdict(ERROR, f"cannot run {cmd[0]}: {exc.strerror or exc}")
