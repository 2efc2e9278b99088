"""Never slower than the mirror (issue 9), asserted on counts and order, never on time.

- A fleet of two daemons over a three-suite archive: the second client gets every file
  from the first daemon with no periodic choke round at all (``--choke-interval 3600``):
  a peer that becomes interested is unchoked at once, in every swarm, and the mirror
  serves each ``.deb`` once.
- Pipelined requests are read ahead: while the mirror holds the first file's answer,
  the second and third files are already requested from it; answers still go out in
  the order asked.
- An unchanged ``InRelease`` asked again with If-Modified-Since gets 304 (apt prints
  ``Hit:``), a changed one 200 (``Get:``).
- The hub answers during a 50 MB index load: a cached file is served while the daemon
  still reports the index loading; apt gets the whole index before the load ends.
- A new swarm with a tracker configured holds a large file for ``--connect-grace`` but
  serves a small file at once.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO_TOOLS, require_tools
from tests.fixtures.apt import AptClient
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import deb_target, wait_until
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.net import loopback_aliases_usable
from tests.fixtures.repo import COMPONENT, MiB, PackageSpec, Repo, Signer, build_repo

KiB = 1024

pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)

SUITES = ("bookworm", "bookworm-updates", "bookworm-security")
META = "sp-all"


def status(d: Daemon) -> dict:
    with urllib.request.urlopen(f"{d.url}/status.json", timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def suites(tmp_path_factory: pytest.TempPathFactory) -> list[Repo]:
    """Three suites in one archive: small files in each, a multi-piece one in two."""
    require_tools(*REPO_TOOLS)
    specs = {
        suite: [
            PackageSpec(f"sp-{tag}-{i}", "1.0-1", data_size=2 * KiB + i * 23 * KiB)
            for i in range(5)
        ]
        + ([PackageSpec(f"sp-{tag}-multi", "1.0-1", data_size=700 * KiB)] if tag != "u" else [])
        for suite, tag in zip(SUITES, ("m", "u", "s"), strict=True)
    }
    names = [spec.name for group in specs.values() for spec in group]
    meta = PackageSpec(META, "1.0-1", depends=", ".join(names), data_size=0)
    main = build_repo(
        tmp_path_factory.mktemp("suites"), SUITES[0], packages=[*specs[SUITES[0]], meta]
    )
    return [main] + [main.add_suite(s, specs[s]) for s in SUITES[1:]]


def client(root: Path, repos: list[Repo], base: str) -> AptClient:
    """An apt client with all three suites (``base`` ends at the archive root)."""
    apt = AptClient(root, repos[0].sources_line(base))
    lines = "\n".join(r.sources_line(base) for r in repos)
    (apt.root / "etc" / "sources.list").write_text(lines + "\n")
    return apt


def all_debs(repos: list[Repo]) -> dict[str, str]:
    return {p.filename.rsplit("/", 1)[-1]: p.sha256 for r in repos for p in r.packages}


def test_a_peer_serves_every_swarm_without_a_choke_round(
    suites: list[Repo], mirror_factory, daemon_factory, tmp_path: Path
) -> None:
    mirror = mirror_factory(root=suites[0].root)
    a = daemon_factory("--choke-interval", "3600", start=False)
    b = daemon_factory("--choke-interval", "3600", "--peer", a.peer_address, start=False)
    a.extra_args += ["--peer", b.peer_address]
    a.start()
    b.start()
    ca = client(tmp_path / "apt-a", suites, f"{a.url}/{mirror.address}/debian")
    cb = client(tmp_path / "apt-b", suites, f"{b.url}/{mirror.address}/debian")
    ca.update()
    cb.update()
    ca.install_download_only(META)
    fetched = [r.path for r in mirror.find(".deb", method="GET")]
    mirror.clear()
    cb.install_download_only(META)

    want = all_debs(suites)
    for apt in (ca, cb):
        got = apt.downloaded_sha256()
        assert {n.replace("%3a", ":"): h for n, h in got.items()} == want
    assert mirror.count(".deb", method="GET") == 0, "client B's files came from the mirror"
    assert len(fetched) == len(set(fetched)) == len(want), "a file fetched twice, or never"
    sb = status(b)
    assert sb["totals"]["bytes_from_peers"] == sum(p.size for r in suites for p in r.packages)
    assert sb["totals"]["bytes_from_mirror"] == 0
    swarms = {s["name"].split("_")[1] for s in sb["swarms"] if s["files_complete"]}
    assert swarms == set(SUITES), "files in every suite's swarm"
    # every file moved between rounds: interest was answered at once, in every swarm
    assert status(a)["totals"]["choke_rounds"] == 0
    assert sb["totals"]["choke_rounds"] == 0


def _pipelined(host: str, port: int, targets: list[str]) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=30)
    sock.sendall(b"".join(f"GET {t} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() for t in targets))
    return sock


def _read_answers(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """``count`` HTTP answers in the order they came: (status, body)."""
    reader = sock.makefile("rb")
    answers = []
    for _ in range(count):
        status_line = reader.readline()
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        answers.append((int(status_line.split()[1]), reader.read(length)))
    return answers


def test_pipelined_requests_start_before_the_first_answer(
    repo: Repo, mirror: MirrorServer, daemon: Daemon, apt_factory
) -> None:
    apt_factory.path_form(daemon, mirror).update()  # the index is loaded: swarm files
    first, second, third, *_rest = [p for p in repo.packages if p.size < MiB]
    mirror.clear()
    mirror.fault(first.filename, "hang")
    held = _pipelined(
        daemon.bind, daemon.port, [deb_target(mirror, p) for p in (first, second, third)]
    )
    try:
        wait_until(
            lambda: mirror.count(second.filename, "GET") and mirror.count(third.filename, "GET"),
            timeout=20,
            what="the 2nd and 3rd pipelined files requested from the mirror",
        )
        (hung,) = mirror.find(first.filename, method="GET")
        assert not hung.done, "the first answer is still held by the mirror"
    finally:
        held.close()
        mirror.clear_faults()

    # without faults, three new files pipelined come back whole and in the order asked
    others = [p for p in repo.packages if p not in (first, second, third) and p.size < MiB][:3]
    sock = _pipelined(daemon.bind, daemon.port, [deb_target(mirror, p) for p in others])
    with sock:
        answers = _read_answers(sock, len(others))
    assert [code for code, _ in answers] == [200] * len(others)
    assert [hashlib.sha256(body).hexdigest() for _, body in answers] == [p.sha256 for p in others]


def test_an_unchanged_inrelease_is_not_sent_again(
    fresh_repo: Repo, mirror_factory, daemon: Daemon, apt_factory
) -> None:
    mirror = mirror_factory(root=fresh_repo.root)
    apt = apt_factory.path_form(daemon, mirror, repo=fresh_repo)
    apt.update()
    mirror.clear()
    again = apt.update()
    assert any(
        line.startswith("Hit:") and "InRelease" in line for line in again.stdout.splitlines()
    )
    assert mirror.count("InRelease", "GET") == 1, "the daemon still asked the mirror"
    answered = {(r["class"], r["status"]): r["count"] for r in status(daemon)["requests"]}
    assert answered.get(("index", 304), 0) >= 1

    fresh_repo.update_package("dt-tiny", "0.2-1")
    changed = apt.update()
    assert any(
        line.startswith("Get:") and "InRelease" in line for line in changed.stdout.splitlines()
    )


def _big_suite(repo: Repo, stanzas: int) -> tuple[str, int]:
    """A signed suite ``big`` with a ~50 MB Packages of made-up files; returns the
    by-hash path of its Packages.gz below the archive root, and the index size."""
    text = "".join(
        f"Package: big{i}\nVersion: 1.0-{i}\nArchitecture: {repo.arch}\n"
        f"Maintainer: Test <test@example.org>\nInstalled-Size: {10 + i % 90}\n"
        f"Depends: libc6 (>= 2.36), big{(i * 7) % stanzas}\nSection: misc\n"
        f"Description: synthetic package {i} of a large index\n {'lorem ipsum ' * 30}\n"
        f"Filename: pool/main/b/big{i}/big{i}_1.0-{i}_{repo.arch}.deb\nSize: {1000 + i}\n"
        f"MD5sum: {'0' * 32}\nSHA256: {hashlib.sha256(str(i).encode()).hexdigest()}\n\n"
        for i in range(stanzas)
    ).encode()
    packed = gzip.compress(text, compresslevel=1)
    dist = repo.root / "dists" / "big"
    binary = dist / COMPONENT / f"binary-{repo.arch}"
    by_hash = binary / "by-hash" / "SHA256"
    by_hash.mkdir(parents=True)
    rows = []
    for name, blob in (("Packages", text), ("Packages.gz", packed)):
        (binary / name).write_bytes(blob)
        (by_hash / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
        rows.append(
            f" {hashlib.sha256(blob).hexdigest()} {len(blob)} {COMPONENT}/binary-{repo.arch}/{name}"
        )
    release = dist / "Release"
    release.write_text(
        "Origin: DebtorrentTest\nSuite: big\nCodename: big\nAcquire-By-Hash: yes\n"
        f"Architectures: {repo.arch}\nComponents: {COMPONENT}\nSHA256:\n" + "\n".join(rows) + "\n"
    )
    Signer(repo.gnupghome).sign(release)
    gz = by_hash / hashlib.sha256(packed).hexdigest()
    return gz.relative_to(repo.root).as_posix(), len(text)


def test_cached_files_are_served_while_a_large_index_loads(
    fresh_repo: Repo, mirror_factory, daemon: Daemon, apt_factory
) -> None:
    mirror = mirror_factory(root=fresh_repo.root)
    apt = apt_factory.path_form(daemon, mirror, repo=fresh_repo)
    apt.update()
    cached = fresh_repo.package("dt-docs")
    base = f"{daemon.url}/{mirror.address}/debian"
    first = urllib.request.urlopen(f"{base}/{cached.url_path}", timeout=30).read()
    assert hashlib.sha256(first).hexdigest() == cached.sha256  # now it is in the cache
    by_hash, size = _big_suite(fresh_repo, 70_000)
    big_deb = f"pool/main/b/big5/big5_1.0-5_{fresh_repo.arch}.deb"  # listed, not on the mirror
    assert size > 45_000_000
    urllib.request.urlopen(f"{base}/dists/big/InRelease", timeout=30).read()

    loaded: list[int] = []
    swarms_then: list[set[str]] = []

    def load() -> None:
        loaded.append(len(urllib.request.urlopen(f"{base}/{by_hash}", timeout=120).read()))
        swarms_then.append({s["name"] for s in status(daemon)["swarms"]})
        # what apt asks next, straight after its update: a package of that index
        try:
            urllib.request.urlopen(f"{base}/{big_deb}", timeout=60).read()
        except urllib.error.HTTPError as exc:  # the mirror has no such file: 404
            swarms_then.append({f"HTTP {exc.code}"})

    loader = threading.Thread(target=load)
    loader.start()
    try:
        wait_until(
            lambda: status(daemon)["indexes_loading"] > 0,
            timeout=60,
            every=0.01,
            what="the big index loading",
        )
        body = urllib.request.urlopen(f"{base}/{cached.url_path}", timeout=30).read()
        still = status(daemon)["indexes_loading"]
    finally:
        loader.join(120)
    assert hashlib.sha256(body).hexdigest() == cached.sha256
    assert still > 0, "the cached file was answered only after the index had loaded"
    assert loaded and loaded[0] > 0
    # apt had the whole verified index before the daemon had loaded it (apt has its own
    # decompression to do: in series, an update took twice as long as direct) ...
    assert swarms_then and not any("_big_" in n for n in swarms_then[0]), swarms_then
    # ... and a package asked for meanwhile waited for the load: it was matched to its
    # index entry, not passed through as a file no index lists
    assert swarms_then[1:] == [{"HTTP 404"}], swarms_then
    assert f"{big_deb}: in no loaded index" not in daemon.log_text()
    # ... and the load still ends in a swarm
    wait_until(
        lambda: any("_big_" in s["name"] for s in status(daemon)["swarms"]),
        timeout=60,
        what="the big index's swarm",
    )


def test_a_small_file_does_not_wait_for_peers_to_connect(
    repo: Repo, mirror: MirrorServer, daemon_factory, tracker, apt_factory
) -> None:
    d = daemon_factory("--tracker", tracker.http_url, "--connect-grace", "600")
    apt_factory.path_form(d, mirror).update()
    big, small = repo.package("dt-big"), repo.package("dt-docs")
    assert big.size > 256 * KiB >= small.size
    mirror.clear()

    def ask_big() -> None:
        try:
            urllib.request.urlopen(f"{d.url}{deb_target(mirror, big)}", timeout=5).read()
        except OSError:
            pass  # held for the grace: the client gives up, as it should here

    holder = threading.Thread(target=ask_big)
    holder.start()  # asked first; held for the grace (600 s) since peers may come
    body = urllib.request.urlopen(f"{d.url}{deb_target(mirror, small)}", timeout=60).read()
    assert hashlib.sha256(body).hexdigest() == small.sha256
    assert mirror.count(small.filename, "GET") == 1
    assert mirror.count(big.filename, "GET") == 0, "the large file did not wait for peers"
    holder.join(10)
