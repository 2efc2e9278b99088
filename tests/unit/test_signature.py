"""Release signatures: gpgv's status lines read as apt reads them, strict clear-signed
files, keyrings found where apt finds them, and the real gpgv against a throwaway key."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from debtorrent.archive.signature import (
    Keyrings,
    Verifier,
    dearmor,
    parse_status,
    split_clearsigned,
    valid_until_passed,
)
from debtorrent.errors import ConfigError
from tests.fixtures.repo import Signer

FPR = "6C41D926CE796D3496B538665E9B8D9FD527ADF3"


def _good(digest: str = "8", fpr: str = FPR) -> list[str]:
    return [
        "[GNUPG:] NEWSIG",
        f"[GNUPG:] GOODSIG {fpr[-16:]} Test <t@example.org>",
        f"[GNUPG:] VALIDSIG {fpr} 2026-11-30 1764489600 0 4 0 22 {digest} 01 {fpr}",
    ]


@pytest.mark.parametrize(
    ("lines", "state"),
    [
        (_good(), "verified"),
        (_good("2"), "weak"),  # SHA1
        (_good("1"), "weak"),  # MD5
        (["[GNUPG:] NEWSIG", "[GNUPG:] BADSIG ABCD Test"], "bad"),
        (
            [
                "[GNUPG:] NEWSIG",
                "[GNUPG:] ERRSIG ABCD 22 8 01 1764489600 9 -",
                "[GNUPG:] NO_PUBKEY ABCD",
            ],
            "no-key",
        ),
        (["[GNUPG:] NEWSIG", "[GNUPG:] ERRSIG ABCD 22 8 01 1764489600 4 -"], "bad"),
        (
            [
                "[GNUPG:] NEWSIG",
                "[GNUPG:] EXPKEYSIG ABCD Test",
                f"[GNUPG:] VALIDSIG {FPR} x 0 0 4 0 22 8 01",
            ],
            "expired",
        ),
        (["[GNUPG:] NEWSIG", "[GNUPG:] REVKEYSIG ABCD Test"], "expired"),
        (["[GNUPG:] NODATA 1"], "bad"),
        ([], "bad"),
        # Debian signs with two keys: one unknown is fine, one bad is not
        (
            [
                "[GNUPG:] NEWSIG",
                "[GNUPG:] ERRSIG EEEE 1 8 01 0 9 -",
                "[GNUPG:] NO_PUBKEY EEEE",
                *_good(),
            ],
            "verified",
        ),
        ([*_good(), "[GNUPG:] NEWSIG", "[GNUPG:] BADSIG EEEE x"], "bad"),
    ],
)
def test_status_lines_as_apt_reads_them(lines: list[str], state: str) -> None:
    assert parse_status(lines)[0] == state


SIGNED = (
    b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: x\n- -dashed\n"
    b"-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n"
)


@pytest.mark.parametrize(
    "data",
    [
        b"junk before\n" + SIGNED,
        SIGNED + b"Origin: evil\n",
        SIGNED + SIGNED,
        SIGNED.replace(b"-----END PGP SIGNATURE-----\n", b""),
        b"Origin: x\n",
        b"\xff\xfe",
    ],
)
def test_only_exactly_one_clear_signed_message_is_accepted(data: bytes) -> None:
    assert split_clearsigned(data) is None


def test_one_clear_signed_message_splits() -> None:
    head, signature = split_clearsigned(SIGNED + b"\n\n")
    assert head.endswith(b"- -dashed\n") and signature.startswith(b"-----BEGIN PGP SIGNATURE")


def test_valid_until() -> None:
    text = b"Origin: x\nValid-Until: Sat, 01 Nov 2025 10:00:00 UTC\n"
    assert valid_until_passed(text, now=1.8e9) == "Sat, 01 Nov 2025 10:00:00 UTC"
    assert valid_until_passed(text, now=1.0e9) is None
    assert valid_until_passed(b"Origin: x\n") is None
    assert valid_until_passed(b"Valid-Until: someday\n") is not None  # unreadable: not valid


# ---- with the real gpg/gpgv -----------------------------------------------------------------


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, Path, bytes]:
    """``(signer, binary keyring, armored key)`` of a throwaway key."""
    if not (shutil.which("gpg") and shutil.which("gpgv")):
        pytest.skip("needs gpg and gpgv (Debian packages gnupg, gpgv)")
    base = tmp_path_factory.mktemp("key")
    signer = Signer(base / "gnupg")
    signer.create()
    keyring = base / "key.gpg"
    signer.export(keyring)
    armored = subprocess.run(
        ["gpg", "--homedir", str(base / "gnupg"), "--batch", "--armor", "--export"],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    return signer, keyring, armored


def _signed(signer: Signer, directory: Path, text: bytes) -> tuple[bytes, bytes, bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Release").write_bytes(text)
    signer.sign(directory / "Release")
    return text, (directory / "InRelease").read_bytes(), (directory / "Release.gpg").read_bytes()


def _keyrings(tmp_path: Path, *extra: Path) -> Keyrings:
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    return Keyrings([str(p) for p in extra], apt_etc=str(empty), shared=str(empty))


def test_dearmor_gives_the_binary_key(key) -> None:
    _signer, keyring, armored = key
    assert dearmor(armored) == keyring.read_bytes()
    assert dearmor(b"no key here") == b""


def test_gpgv_verifies_inline_and_detached_and_refuses_changes(key, tmp_path: Path) -> None:
    signer, keyring, _ = key
    release, inrelease, detached = _signed(signer, tmp_path / "r", b"Origin: x\nSuite: s\n")
    verifier = Verifier("auto", _keyrings(tmp_path, keyring))
    verdict = verifier.inline(inrelease)
    assert verdict.state == "verified" and verdict.content == release
    assert verifier.detached(release, detached).state == "verified"
    assert verifier.inline(inrelease.replace(b"Suite: s", b"Suite: t")).state == "bad"
    assert verifier.detached(release + b"Label: evil\n", detached).state == "bad"
    assert verifier.detached(release, b"").state == "unsigned"
    assert verifier.inline(release).state == "unsigned"
    nobody = Verifier("auto", _keyrings(tmp_path))
    assert nobody.inline(inrelease).state == "no-key"
    assert Verifier("off", _keyrings(tmp_path)).inline(b"anything").state == "unchecked"


def test_expired_valid_until_is_not_trusted(key, tmp_path: Path) -> None:
    signer, keyring, _ = key
    text = b"Origin: x\nValid-Until: Sat, 01 Nov 2025 10:00:00 UTC\n"
    _release, inrelease, _ = _signed(signer, tmp_path / "r", text)
    verdict = Verifier("auto", _keyrings(tmp_path, keyring)).inline(inrelease)
    assert verdict.state == "expired" and "Valid-Until" in verdict.reason


def test_keyrings_are_found_where_apt_finds_them(key, tmp_path: Path) -> None:
    """An armored key in trusted.gpg.d, a Signed-By file, and an inline Signed-By key
    each make the same Release verify; a keybox file is skipped, not merged."""
    signer, keyring, armored = key
    _release, inrelease, _ = _signed(signer, tmp_path / "r", b"Origin: x\n")
    for place in ("trusted", "signed-by", "inline", "keyrings-dir", "shared"):
        etc, shared = tmp_path / place / "etc", tmp_path / place / "share"
        (etc / "sources.list.d").mkdir(parents=True)
        (etc / "trusted.gpg.d").mkdir()
        shared.mkdir()
        if place == "trusted":
            (etc / "trusted.gpg.d" / "vendor.asc").write_bytes(armored)
        elif place == "signed-by":
            (etc / "sources.list.d" / "v.list").write_text(
                f"deb [arch=amd64 signed-by={keyring}] http://deb.example.org/v stable main\n"
            )
        elif place == "inline":
            block = armored.decode().strip().replace("\n\n", "\n .\n").replace("\n", "\n ")
            (etc / "sources.list.d" / "v.sources").write_text(
                "Types: deb\nURIs: http://deb.example.org/v\nSuites: stable\n"
                f"Components: main\nSigned-By:\n {block}\n"
            )
        elif place == "keyrings-dir":
            (etc / "keyrings").mkdir()
            shutil.copy(keyring, etc / "keyrings" / "v.gpg")
        else:
            shutil.copy(keyring, shared / "v-archive-keyring.gpg")
        (etc / "trusted.gpg.d" / "box.gpg").write_bytes(b"\x00\x00\x00\x20\x01\x01\x00\x00KBXf")
        rings = Keyrings([], apt_etc=str(etc), shared=str(shared))
        assert Verifier("auto", rings).inline(inrelease).state == "verified", place
        assert rings.count == (1 if place != "inline" else 0), place


def test_a_missing_keyring_option_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keyring"):
        Keyrings([str(tmp_path / "missing.gpg")])
