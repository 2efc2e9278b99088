"""The fixtures themselves: if these fail, no integration test result means anything."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.client
import lzma
import socket
import subprocess
import threading
import time

import lz4.frame
import pytest
import zstandard

from debian import deb822
from tests.fixtures.daemon import DaemonError
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.net import free_port, loopback_aliases_usable, port_open, wait_for_port
from tests.fixtures.repo import MiB, Repo
from tests.fixtures.tracker import Tracker

DECOMPRESS = {
    "": lambda b: b,
    ".gz": gzip.decompress,
    ".xz": lzma.decompress,
    ".bz2": bz2.decompress,
    ".lz4": lz4.frame.decompress,
    ".zst": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def get(
    mirror: MirrorServer, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(mirror.host, mirror.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


# ---- repository -----------------------------------------------------------------------------
def test_release_lists_every_index_with_correct_size_and_hashes(repo: Repo) -> None:
    rel = deb822.Release(repo.release_path.read_bytes())
    assert rel["Origin"] == "DebtorrentTest"
    assert rel["Suite"] == rel["Codename"] == "bookworm"
    assert rel["Acquire-By-Hash"] == "yes"
    assert rel["Architectures"] == repo.arch and rel["Components"] == "main"
    listed = {e["name"]: e for e in rel["SHA256"]}
    binary = f"main/binary-{repo.arch}"
    for ext in DECOMPRESS:
        assert f"{binary}/Packages{ext}" in listed
    md5 = {e["name"]: e["md5sum"] for e in rel["MD5Sum"]}
    assert set(md5) == set(listed)
    for name, entry in listed.items():
        data = (repo.dist_dir / name).read_bytes()
        assert int(entry["size"]) == len(data), name
        assert entry["sha256"] == sha256(data), name
        assert md5[name] == hashlib.md5(data).hexdigest(), name
        by_hash = (repo.dist_dir / name).parent / "by-hash" / "SHA256" / entry["sha256"]
        assert by_hash.read_bytes() == data, name


def test_packages_index_matches_pool_in_every_compression(repo: Repo) -> None:
    plain = repo.packages_index().read_bytes()
    for ext, decompress in DECOMPRESS.items():
        assert decompress(repo.packages_index(ext).read_bytes()) == plain, ext
    stanzas = list(deb822.Packages.iter_paragraphs(plain.decode(), use_apt_pkg=False))
    assert len(stanzas) == len(repo.packages) >= 8
    by_name = {p.name: p for p in repo.packages}
    for st in stanzas:
        p = by_name[st["Package"]]
        assert "SHA1" not in st  # like Debian's own index
        for field in ("Version", "Architecture", "Maintainer", "Installed-Size", "Description"):
            assert st[field], field
        assert st["Filename"] == p.filename and int(st["Size"]) == p.size
        data = (repo.root / st["Filename"]).read_bytes()
        assert sha256(data) == st["SHA256"] == p.sha256
        assert hashlib.md5(data).hexdigest() == st["MD5sum"]
    assert repo.package("dt-big").size >= 20 * MiB
    assert any("+" in p.filename for p in repo.packages)
    assert any("~" in p.filename for p in repo.packages)
    assert any(p.arch == "all" for p in repo.packages)
    assert "dt-base" in repo.package("libdt1").depends
    assert repo.package("libdt1").url_path.endswith("libdt1_2.3%2bdfsg-1_amd64.deb")


def test_debs_are_real_packages(repo: Repo) -> None:
    p = repo.package("dt-tool")
    out = subprocess.run(
        ["dpkg-deb", "--field", str(p.path), "Package", "Version", "Depends"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert "Package: dt-tool" in out and f"Version: {p.version}" in out and "libdt1" in out


def test_inrelease_and_release_gpg_verify_with_the_exported_keyring(repo: Repo) -> None:
    keyring = str(repo.keyring)
    for args in (
        [str(repo.inrelease_path)],
        [str(repo.dist_dir / "Release.gpg"), str(repo.release_path)],
    ):
        res = subprocess.run(
            ["gpgv", "--keyring", keyring, *args], capture_output=True, text=True, timeout=10
        )
        assert res.returncode == 0, res.stderr
    text = repo.inrelease_path.read_text()
    body = text.split("\n\n", 1)[1].split("-----BEGIN PGP SIGNATURE-----")[0]
    assert body == repo.release_path.read_text()


def test_fresh_repo_update_resigns_and_leaves_session_repo_alone(
    repo: Repo, fresh_repo: Repo
) -> None:
    before = repo.packages_index().read_bytes()
    old = fresh_repo.package("dt-tiny")
    new = fresh_repo.update_package("dt-tiny", "0.2+b1-1")
    assert new.path.exists() and old.path.exists() and new.filename != old.filename
    assert new.sha256 != old.sha256
    plain = fresh_repo.packages_index().read_text()
    assert new.filename in plain and old.filename not in plain
    assert repo.packages_index().read_bytes() == before
    rel = deb822.Release(fresh_repo.release_path.read_bytes())
    entry = {e["name"]: e for e in rel["SHA256"]}[f"main/binary-{repo.arch}/Packages"]
    assert entry["sha256"] == fresh_repo.packages_sha256() != repo.packages_sha256()
    res = subprocess.run(
        ["gpgv", "--keyring", str(fresh_repo.keyring), str(fresh_repo.inrelease_path)],
        capture_output=True,
        timeout=10,
    )
    assert res.returncode == 0


# ---- mirror ---------------------------------------------------------------------------------
def test_mirror_serves_get_head_and_ranges(repo: Repo, mirror: MirrorServer) -> None:
    p = repo.package("dt-medium")
    data = p.path.read_bytes()
    path = f"/debian/{p.filename}"
    status, h, body = get(mirror, path)
    assert status == 200 and body == data and h["content-length"] == str(len(data))
    assert "last-modified" in h and h["accept-ranges"] == "bytes"
    status, h, body = get(mirror, path, method="HEAD")
    assert status == 200 and body == b"" and h["content-length"] == str(len(data))
    status, h, body = get(mirror, path, {"Range": "bytes=100-299"})
    assert status == 206 and body == data[100:300]
    assert h["content-range"] == f"bytes 100-299/{len(data)}"
    status, _, body = get(mirror, path, {"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    status, _, body = get(mirror, path, {"Range": f"bytes={len(data) - 5}-"})
    assert status == 206 and body == data[-5:]
    status, h, _ = get(mirror, path, {"Range": f"bytes={len(data)}-"})
    assert status == 416 and h["content-range"] == f"bytes */{len(data)}"
    status, h, _ = get(mirror, path)
    status, _, _ = get(mirror, path, {"If-Modified-Since": h["last-modified"]})
    assert status == 304
    assert get(mirror, "/debian/pool/nope.deb")[0] == 404
    assert get(mirror, "/debian/../debian/dists/bookworm/Release")[0] == 200  # stays inside
    assert get(mirror, "/debian/../../etc/passwd")[0] == 404
    assert get(mirror, "/debian/%2e%2e/%2e%2e/etc/passwd")[0] == 404
    assert get(mirror, "/other/dists/bookworm/Release")[0] == 404
    # the log: percent-decoded path, the Range header, what was sent
    recs = mirror.find(p.filename)
    assert [r.status for r in recs[:6]] == [200, 200, 206, 206, 206, 416]
    assert [r.status for r in mirror.find("/etc/passwd")] == [404, 404]
    assert recs[2].range == "bytes=100-299" and recs[2].bytes_sent == 200
    assert recs[1].method == "HEAD" and recs[1].bytes_sent == 0
    assert mirror.count(p.filename, method="HEAD") == 1
    assert mirror.count(lambda r: r.status == 404) == 4
    mirror.clear()
    assert mirror.paths() == []


def test_mirror_keep_alive_and_absolute_uri(repo: Repo, mirror: MirrorServer) -> None:
    conn = http.client.HTTPConnection(mirror.host, mirror.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/debian/dists/bookworm/Release")
            r = conn.getresponse()
            assert r.status == 200 and r.read() == repo.release_path.read_bytes()
        sock = conn.sock
        conn.request("GET", f"http://{mirror.address}/debian/dists/bookworm/InRelease")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == repo.inrelease_path.read_bytes()
        assert conn.sock is sock  # one connection all along
    finally:
        conn.close()
    assert mirror.count("/debian/dists/bookworm/InRelease") == 1


def test_mirror_can_ignore_range_like_the_real_one(repo: Repo, mirror_factory) -> None:
    m = mirror_factory(honor_range=False, last_modified=False)
    p = repo.package("dt-medium")
    status, h, body = get(m, f"/debian/{p.filename}", {"Range": "bytes=100-299"})
    assert status == 200 and body == p.path.read_bytes()
    assert "content-range" not in h and "last-modified" not in h and "accept-ranges" not in h
    assert m.find(p.filename)[0].range == "bytes=100-299"


def test_mirror_faults(repo: Repo, mirror: MirrorServer) -> None:
    p = repo.package("dt-medium")
    data = p.path.read_bytes()
    path = f"/debian/{p.filename}"

    mirror.fault(p.filename, "404", times=1)
    assert get(mirror, path)[0] == 404
    assert get(mirror, path)[0] == 200  # times=1 used up

    mirror.fault("*/dt-medium_*.deb", "500")
    assert get(mirror, path)[0] == 500
    assert get(mirror, path)[0] == 500
    mirror.clear_faults()
    mirror.fault(path, "status", status=503, times=1)
    assert get(mirror, path)[0] == 503

    mirror.fault(path, "redirect", location="http://127.0.0.1:1/elsewhere", times=1)
    status, h, _ = get(mirror, path)
    assert status == 302 and h["location"] == "http://127.0.0.1:1/elsewhere"

    mirror.fault(path, "wrong", times=1)
    status, h, body = get(mirror, path)
    assert status == 200 and len(body) == len(data) and body != data
    mirror.fault(path, "wrong", times=1, offset=300_000)
    body = get(mirror, path)[2]
    assert [i for i in range(len(data)) if body[i] != data[i]] == [300_000]

    mirror.fault(path, "truncate", times=1)
    with pytest.raises(http.client.IncompleteRead) as exc:
        get(mirror, path)
    assert len(exc.value.partial) == len(data) // 2
    assert mirror.find(path)[-1].bytes_sent == len(data) // 2

    mirror.fault(path, "drop", times=1)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        get(mirror, path)

    mirror.fault(path, "slow", times=1, rate=1_000_000)
    t0 = time.monotonic()
    assert get(mirror, path)[2] == data
    assert time.monotonic() - t0 >= 0.5  # 700 KB at 1 MB/s

    mirror.fault(path, "delay", times=1, seconds=0.3)
    t0 = time.monotonic()
    assert get(mirror, path)[0] == 200 and time.monotonic() - t0 >= 0.3
    assert mirror.count(lambda r: r.fault is not None) == 11


def test_hang_and_stall_do_not_block_shutdown(repo: Repo, mirror: MirrorServer) -> None:
    mirror.fault("InRelease", "hang")
    mirror.fault("dt-medium_3.1-1_amd64.deb", "stall")
    errors: list[BaseException] = []

    def client(path: str) -> None:
        try:
            get(mirror, path)
        except BaseException as e:  # the server cuts the connection at stop
            errors.append(e)

    threads = [
        threading.Thread(target=client, args=(f"/debian/{p}",), daemon=True)
        for p in ("dists/bookworm/InRelease", repo.package("dt-medium").filename)
    ]
    for t in threads:
        t.start()
    with socket.create_connection((mirror.host, mirror.port), timeout=5) as s:
        s.sendall(b"GET /debian/dists/bookworm/InRelease HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(1)  # hang: accepted, never answered
        t0 = time.monotonic()
        mirror.stop()
        assert time.monotonic() - t0 < 3
        s.settimeout(2)
        assert s.recv(1) == b""  # and the stop cut it
    for t in threads:
        t.join(timeout=5)
        assert not t.is_alive()
    assert len(errors) == 2
    assert not port_open(mirror.host, mirror.port)
    mirror.start()  # refuse, then come back on the same port
    mirror.clear_faults()
    assert get(mirror, "/debian/dists/bookworm/Release")[0] == 200


def test_mirror_on_another_loopback_host(repo: Repo, mirror_factory) -> None:
    if not loopback_aliases_usable():
        pytest.skip("127.0.0.2-9 not usable here")
    m = mirror_factory(host="127.0.0.5")
    assert m.url.startswith("http://127.0.0.5:") and m.url.endswith("/debian")
    assert get(m, "/debian/dists/bookworm/Release")[0] == 200


# ---- apt ------------------------------------------------------------------------------------
def test_real_apt_updates_and_downloads_directly_from_the_mirror(
    repo: Repo, mirror: MirrorServer, apt_factory
) -> None:
    apt = apt_factory.direct(mirror)
    apt.update()
    assert any(p.name.endswith("_InRelease") for p in apt.lists())
    assert mirror.count("/dists/bookworm/InRelease") == 1
    by_hash = mirror.find(lambda r: "/by-hash/SHA256/" in r.path)
    assert len(by_hash) == 1 and by_hash[0].status == 200  # Acquire-By-Hash honoured
    apt.install_download_only("dt-meta", "libdt-dev")
    got = apt.downloaded_sha256()
    expected = {p.sha256 for p in repo.packages if p.name != "dt-tiny"}
    assert sorted(got.values()) == sorted(expected)
    assert "libdt1_2.3+dfsg-1_amd64.deb" in got
    raw = [r.raw_path for r in mirror.records()]
    assert any(r.endswith("libdt1_2.3%2bdfsg-1_amd64.deb") for r in raw)
    for p in repo.packages:
        if p.name != "dt-tiny":
            assert mirror.count(p.filename) == 1, p.filename
    assert list((apt.root / "etc" / "apt.conf.d").iterdir()) == []


def test_apt_result_check_catches_failures_that_exit_zero(
    repo: Repo, mirror: MirrorServer, apt_factory
) -> None:
    apt = apt_factory.direct(mirror)
    mirror.fault("/InRelease", "404")
    mirror.fault("/Release", "404")
    res = apt.update(check=False)
    assert res.problems, res.output
    with pytest.raises(AssertionError, match="problems"):
        res.check()
    mirror.clear_faults()
    apt.update()
    mirror.fault(repo.package("dt-base").filename, "wrong")
    res = apt.install_download_only("dt-base", check=False)
    assert res.returncode != 0 and any(line.startswith("E:") for line in res.problems)
    assert apt.downloaded_debs() == {}


# ---- tracker --------------------------------------------------------------------------------
def test_opentracker_answers_announce_for_whitelisted_hash(tracker: Tracker) -> None:
    ih = hashlib.sha1(b"fixture test swarm").digest()
    other = hashlib.sha1(b"not whitelisted").digest()
    assert b"not authorized" in tracker.announce_raw(ih, 5000)
    tracker.allow(ih)
    reply = tracker.announce(ih, 5000, left=0)
    assert b"failure reason" not in reply and reply[b"interval"] > 0
    assert ("127.0.0.1", 5000) in tracker.peers(ih)
    assert tracker.scrape(ih)[b"complete"] == 1
    assert b"failure reason" in tracker.announce(other, 5000)
    tracker.announce(ih, 5000, event="stopped")
    assert tracker.peers(ih) == []
    assert tracker.http_url.endswith("/announce") and tracker.udp_url.startswith("udp://")


# ---- daemon ---------------------------------------------------------------------------------
def test_daemon_fixture_reports_a_daemon_that_cannot_start(daemon_factory) -> None:
    t0 = time.monotonic()
    with pytest.raises(DaemonError, match="no-such-option"):
        daemon_factory("--no-such-option")
    assert time.monotonic() - t0 < 15


def test_daemon_fixture_starts_stops_and_restarts(daemon_factory) -> None:
    d = daemon_factory()
    assert port_open(d.bind, d.port)
    assert port_open(d.bind, d.peer_port) and d.peer_address == f"{d.bind}:{d.peer_port}"
    assert d.url == f"http://{d.bind}:{d.port}"
    d.restart()
    assert port_open(d.bind, d.port)
    assert d.stop() == 0
    assert not port_open(d.bind, d.port)
    assert d.log_text()
    d.start()
    assert d.kill() != 0


def test_net_helpers() -> None:
    port = free_port("127.0.0.1")
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", port, timeout=0.3)
    with socket.create_server(("127.0.0.1", port)):
        wait_for_port("127.0.0.1", port, timeout=2)
