"""Release signatures checked by the daemon (gpgv), in modes auto and enforce.

The fixture archives are signed with a throwaway key; apt always gets that key with
``signed-by``. What changes is what the daemon trusts: its ``--keyring``, a Release
changed after signing, a Release signed by another key, an expired ``Valid-Until``. In
``auto`` an unverified suite still reaches apt (which judges it), but none of its
indexes becomes a swarm and its packages are not kept; in ``enforce`` the Release is a
502 naming the reason and its indexes are 403s.
"""

from __future__ import annotations

import http.client
import json
import urllib.request
from pathlib import Path

from tests.fixtures.apt import AptClient
from tests.fixtures.daemon import Daemon
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.repo import Archive, PackageSpec, Signer, SuiteSpec, build_archive

PACKAGES = [PackageSpec("sig-one", "1.0-1"), PackageSpec("sig-two", "2.0-1")]


def status(daemon: Daemon) -> dict:
    with urllib.request.urlopen(f"{daemon.url}/status.json", timeout=10) as answer:
        return json.load(answer)


def get(daemon: Daemon, target: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(daemon.bind, daemon.port, timeout=30)
    try:
        conn.request("GET", target)
        answer = conn.getresponse()
        return answer.status, answer.reason, answer.read()
    finally:
        conn.close()


def archive(tmp_path: Path, **spec) -> Archive:
    return build_archive(
        tmp_path / "archive",
        [SuiteSpec("stable", "stable", "stable", {"main": PACKAGES}, **spec)],
    )


def setup(
    tmp_path: Path, mirror_factory, daemon_factory, arch: Archive, *args: str, conf: str = ""
) -> tuple[MirrorServer, Daemon, AptClient]:
    mirror = mirror_factory(root=arch.root)
    daemon = daemon_factory(*args)
    apt = AptClient(
        tmp_path / "apt",
        arch.sources_lines(f"http://{mirror.address}/debian"),
        proxy=daemon.url + "/",
        extra_conf=conf,
    )
    return mirror, daemon, apt


def suite_trust(daemon: Daemon) -> tuple[str, str]:
    (suite,) = status(daemon)["suites"]
    return suite["trust"], suite["reason"]


def packages_index(arch: Archive) -> str:
    return f"debian/dists/stable/main/binary-{arch.arch}/Packages.xz"


def test_verified_suite_is_shared(mirror_factory, daemon_factory, tmp_path: Path) -> None:
    arch = archive(tmp_path)
    mirror, daemon, apt = setup(
        tmp_path, mirror_factory, daemon_factory, arch, "--keyring", str(arch.keyring)
    )
    apt.update()
    apt.install_download_only("sig-one")
    assert suite_trust(daemon)[0] == "verified"
    assert len(status(daemon)["swarms"]) == 1
    deb = arch.package("sig-one")
    assert (daemon.cache_dir / mirror.address / "debian" / deb.filename).is_file()
    page = urllib.request.urlopen(daemon.url + "/", timeout=10).read().decode()
    assert 'id="suites"' in page and "verified" in page


def test_key_not_in_the_keyring_passes_to_apt_but_is_not_shared(
    mirror_factory, daemon_factory, tmp_path: Path
) -> None:
    """apt has the key (signed-by), the daemon does not: apt works, nothing is shared."""
    arch = archive(tmp_path)
    # --verify-signatures given: the fixture adds no --keyring; the system has no such key
    mirror, daemon, apt = setup(
        tmp_path, mirror_factory, daemon_factory, arch, "--verify-signatures", "auto"
    )
    apt.update()
    apt.install_download_only("sig-one", "sig-two")
    for name in ("sig-one", "sig-two"):
        assert arch.package(name).sha256 in apt.downloaded_sha256().values()
    trust, reason = suite_trust(daemon)
    assert trust == "no-key" and "no keyring" in reason, reason
    assert status(daemon)["swarms"] == []
    deb = arch.package("sig-one")
    assert not (daemon.cache_dir / mirror.address / "debian" / deb.filename).exists()
    assert "Release not verified; no swarm" in daemon.log_text()
    page = urllib.request.urlopen(daemon.url + "/", timeout=10).read().decode()
    assert "no-key" in page and "passed to apt, not shared" in page


def test_release_signed_by_another_key(mirror_factory, daemon_factory, tmp_path: Path) -> None:
    """The daemon trusts the archive's key; the Release is re-signed by a stranger."""
    arch = archive(tmp_path)
    stranger = Signer(tmp_path / "stranger")
    stranger.uid = "Stranger <stranger@example.org>"
    stranger.create()
    arch.resign("stable", stranger)
    mirror, daemon, _ = setup(
        tmp_path, mirror_factory, daemon_factory, arch, "--keyring", str(arch.keyring)
    )
    code, _, _ = get(daemon, f"/{mirror.address}/debian/dists/stable/InRelease")
    assert code == 200  # auto: apt gets it and judges it (its signed-by key fails too)
    code, _, _ = get(daemon, f"/{mirror.address}/{packages_index(arch)}")
    assert code == 200
    assert suite_trust(daemon)[0] == "no-key"
    assert status(daemon)["swarms"] == []

    strict = daemon_factory("--keyring", str(arch.keyring), "--verify-signatures", "enforce")
    code, reason, body = get(strict, f"/{mirror.address}/debian/dists/stable/InRelease")
    assert (code, reason) == (502, "Bad Gateway (Release signature not verified)"), body
    assert b"no-key" in body and b"enforce" in body
    code, reason, _ = get(strict, f"/{mirror.address}/{packages_index(arch)}")
    assert (code, reason) == (403, "Forbidden (Release not verified)")
    assert not (strict.cache_dir / mirror.address / "debian/dists/stable/InRelease").exists()


def test_tampered_release(mirror_factory, daemon_factory, tmp_path: Path) -> None:
    arch = archive(tmp_path)
    inrelease = arch.dist_dir("stable") / "InRelease"
    text = inrelease.read_bytes()
    assert b"Description: debtorrent test archive" in text
    inrelease.write_bytes(text.replace(b"test archive", b"evil archive"))
    mirror, daemon, apt = setup(
        tmp_path, mirror_factory, daemon_factory, arch, "--keyring", str(arch.keyring)
    )
    result = apt.update(check=False)  # apt refuses it as well
    assert not result.ok
    assert "not signed" in result.stdout + result.stderr or "invalid" in result.stdout.lower()
    trust, reason = suite_trust(daemon)
    assert trust == "bad" and "bad signature" in reason, reason
    assert get(daemon, f"/{mirror.address}/{packages_index(arch)}")[0] == 200
    assert status(daemon)["swarms"] == []

    strict = daemon_factory("--keyring", str(arch.keyring), "--verify-signatures", "enforce")
    enforce_apt = AptClient(
        tmp_path / "apt-enforce",
        arch.sources_lines(f"http://{mirror.address}/debian"),
        proxy=strict.url + "/",
    )
    result = enforce_apt.update(check=False)
    out = result.stdout + result.stderr
    assert "502  Bad Gateway (Release signature not verified)" in out, out


def test_tampered_release_without_inrelease(mirror_factory, daemon_factory, tmp_path: Path) -> None:
    """Release + Release.gpg: the Release changed after signing fails at Release.gpg."""
    arch = archive(tmp_path, inrelease=False)
    release = arch.dist_dir("stable") / "Release"
    release.write_bytes(release.read_bytes().replace(b"test archive", b"evil archive"))
    mirror, daemon, _ = setup(
        tmp_path,
        mirror_factory,
        daemon_factory,
        arch,
        "--keyring",
        str(arch.keyring),
        "--verify-signatures",
        "enforce",
    )
    base = f"/{mirror.address}/debian/dists/stable"
    assert get(daemon, f"{base}/InRelease")[0] == 404
    assert get(daemon, f"{base}/Release")[0] == 200  # judged when its signature comes
    code, reason, body = get(daemon, f"{base}/Release.gpg")
    assert (code, reason) == (502, "Bad Gateway (Release signature not verified)"), body
    assert b"bad signature" in body
    assert get(daemon, f"/{mirror.address}/{packages_index(arch)}")[0] == 403


def test_expired_valid_until(mirror_factory, daemon_factory, tmp_path: Path) -> None:
    arch = archive(tmp_path, valid_until=-3600)
    # apt would refuse it too; told not to check, it uses it, and the daemon still
    # does not share what an expired Release lists
    _mirror, daemon, apt = setup(
        tmp_path,
        mirror_factory,
        daemon_factory,
        arch,
        "--keyring",
        str(arch.keyring),
        conf='Acquire::Check-Valid-Until "false";',
    )
    apt.update()
    apt.install_download_only("sig-one")
    trust, reason = suite_trust(daemon)
    assert trust == "expired" and "Valid-Until" in reason, reason
    assert status(daemon)["swarms"] == []


def test_signatures_off_trusts_the_mirror(mirror_factory, daemon_factory, tmp_path: Path) -> None:
    arch = archive(tmp_path)
    _mirror, daemon, apt = setup(
        tmp_path, mirror_factory, daemon_factory, arch, "--verify-signatures", "off"
    )
    apt.update()
    assert suite_trust(daemon)[0] == "unchecked"
    assert len(status(daemon)["swarms"]) == 1


def test_trust_is_checked_again_at_start(mirror_factory, daemon_factory, tmp_path: Path) -> None:
    """A restart re-verifies the saved Releases: a key removed from the keyrings means
    the saved indexes load unshared."""
    arch = archive(tmp_path)
    _mirror, daemon, apt = setup(
        tmp_path, mirror_factory, daemon_factory, arch, "--keyring", str(arch.keyring)
    )
    apt.update()
    assert len(status(daemon)["swarms"]) == 1
    daemon.restart()
    assert suite_trust(daemon)[0] == "verified" and len(status(daemon)["swarms"]) == 1
    daemon.restart(["--verify-signatures", "auto", "--state-dir", str(tmp_path / "state")])
    assert suite_trust(daemon)[0] == "no-key"
    assert status(daemon)["swarms"] == []
