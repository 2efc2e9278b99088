"""One swarm per suite (layout 2): peers share across index versions and architectures.

With the real apt-get, two daemons that know each other (``--peer``) and a fixture
archive that the test changes under them:

- index versions: daemon A on the suite's first index version, daemon B on the second
  (a few packages rebuilt with a bumped version): the unchanged files go from one to the
  other in both directions, and the mirror log shows one fetch of each; the info hash
  is the same before and after ``apt update``;
- architectures: an amd64 daemon and an arm64 daemon share every ``Architecture: all``
  file (one fetch each), and each fetches its own architecture's files;
- same-instant demand from two index versions is one mirror fetch;
- a peer that offers files whole and then refuses to send them is struck (three strikes
  ban), and one that offers a larger file but never its hash list holds it two seconds
  at most: apt gets the file from the mirror.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO_TOOLS, require_tools
from tests.fixtures.apt import AptClient
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import deb_target, wait_until
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.net import loopback_aliases_usable
from tests.fixtures.peer import FakeFileSeed
from tests.fixtures.repo import MiB, PackageSpec, Repo, build_repo

pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)

KiB = 1024
SET = "ss-all"


def specs() -> list[PackageSpec]:
    """Small and multi-piece files, arch-specific and ``all``; ``ss-all`` pulls them in."""
    files = [
        PackageSpec("ss-small-a", "1.0-1", data_size=20 * KiB),
        PackageSpec("ss-small-b", "1.0-1", data_size=90 * KiB),
        PackageSpec("ss-multi", "1.0-1", data_size=700 * KiB),
        PackageSpec("ss-doc", "1.0-1", arch="all", data_size=40 * KiB),
        PackageSpec("ss-data", "1.0-1", arch="all", data_size=MiB + 5),
    ]
    meta = PackageSpec(SET, "1.0-1", depends=", ".join(s.name for s in files), data_size=0)
    return [*files, meta]


@pytest.fixture
def archive(tmp_path: Path) -> Repo:
    require_tools(*REPO_TOOLS)
    return build_repo(tmp_path / "archive", "bookworm", arch="amd64", packages=specs())


def status(d: Daemon) -> dict:
    with urllib.request.urlopen(f"{d.url}/status.json", timeout=10) as r:
        return json.loads(r.read())


def pair(daemon_factory) -> tuple[Daemon, Daemon]:
    a = daemon_factory(start=False)
    b = daemon_factory("--peer", a.peer_address, start=False)
    a.extra_args += ["--peer", b.peer_address]
    a.start()
    b.start()
    return a, b


def deb_gets(mirror: MirrorServer) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in mirror.find(lambda r: r.path.endswith(".deb"), method="GET"):
        out[r.path] = out.get(r.path, 0) + 1
    return out


def swarm(d: Daemon) -> dict:
    (only,) = status(d)["swarms"]
    return only


def downloaded(apt: AptClient) -> dict[str, str]:
    return {n.replace("%3a", ":"): h for n, h in apt.downloaded_sha256().items()}


def test_two_index_versions_share_their_unchanged_files(
    archive: Repo, mirror_factory, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    mirror = mirror_factory(root=archive.root)
    a, b = pair(daemon_factory)
    apt_a = apt_factory.path_form(a, mirror, repo=archive, arch="amd64")
    apt_a.update()  # A stays on version 1 of the index
    v1_hash = swarm(a)["info_hash"]
    old = {p.name: p for p in archive.packages}
    archive.update_package("ss-small-b", "1.0-2")
    changed = archive.update_package("ss-multi", "1.0-2")
    apt_b = apt_factory.path_form(b, mirror, repo=archive, arch="amd64")
    apt_b.update()  # B on version 2
    assert swarm(b)["info_hash"] == v1_hash, "the info hash changed with the index"

    unchanged = ["ss-small-a", "ss-doc", "ss-data"]
    apt_a.install_download_only("ss-small-a", "ss-doc")  # v1 -> from the mirror
    apt_b.install_download_only(*unchanged, "ss-multi")  # two from A, the rest mirror
    apt_a.install_download_only("ss-data")  # from B, though A is still on v1
    gets = deb_gets(mirror)
    for name in unchanged:
        assert gets.get(f"/debian/{old[name].filename}") == 1, (name, gets)
    assert gets.get(f"/debian/{changed.filename}") == 1
    assert f"/debian/{old['ss-multi'].filename}" not in gets  # nobody asked for v1's
    want = {p.filename.rsplit("/", 1)[1]: p.sha256 for p in archive.packages}
    got_b = downloaded(apt_b)
    assert all(want[n] == h for n, h in got_b.items()) and len(got_b) == 4
    assert downloaded(apt_a)[old["ss-data"].filename.rsplit("/", 1)[1]] == old["ss-data"].sha256
    assert status(b)["totals"]["bytes_from_peers"] >= old["ss-small-a"].size
    assert status(a)["totals"]["bytes_from_peers"] == old["ss-data"].size
    # apt update again: same swarm, same info hash
    apt_a.update()
    assert swarm(a)["info_hash"] == v1_hash


def test_amd64_and_arm64_share_their_all_packages(
    archive: Repo, mirror_factory, daemon_factory, apt_factory
) -> None:
    arm = {p.name: p for p in archive.add_architecture("arm64")}
    amd = {p.name: p for p in archive.packages}
    mirror = mirror_factory(root=archive.root)
    a, b = pair(daemon_factory)
    apt_amd = apt_factory.path_form(a, mirror, repo=archive, arch="amd64")
    apt_arm = apt_factory.path_form(b, mirror, repo=archive, arch="arm64")
    apt_amd.update()
    apt_arm.update()
    assert swarm(a)["info_hash"] == swarm(b)["info_hash"]
    apt_amd.install_download_only(SET)
    apt_arm.install_download_only(SET)
    gets = deb_gets(mirror)
    for name in ("ss-doc", "ss-data"):  # Architecture: all: one fetch for both
        assert amd[name].filename == arm[name].filename
        assert gets.get(f"/debian/{amd[name].filename}") == 1, (name, gets)
    for name in ("ss-small-a", "ss-multi"):  # each architecture its own
        assert gets.get(f"/debian/{amd[name].filename}") == 1
        assert gets.get(f"/debian/{arm[name].filename}") == 1
    assert downloaded(apt_arm) == {p.filename.rsplit("/", 1)[1]: p.sha256 for p in arm.values()}
    shared = amd["ss-doc"].size + amd["ss-data"].size
    assert status(b)["totals"]["bytes_from_peers"] == shared


def test_same_instant_demand_from_two_index_versions_is_one_mirror_fetch(
    archive: Repo, mirror_factory, daemon_factory, apt_factory
) -> None:
    mirror = mirror_factory(root=archive.root)
    a, b = pair(daemon_factory)
    apt_factory.path_form(a, mirror, repo=archive, arch="amd64").update()
    archive.update_package("ss-small-b", "1.0-2")
    apt_factory.path_form(b, mirror, repo=archive, arch="amd64").update()
    wait_until(lambda: swarm(a)["peers"] >= 1 and swarm(b)["peers"] >= 1, 15, "A and B meet")
    mirror.clear()
    target = deb_target(mirror, archive.package("ss-data"))  # unchanged, 1 MiB
    answers: dict[str, str] = {}
    start = threading.Barrier(2)

    def fetch(d: Daemon) -> None:
        start.wait(5)
        with urllib.request.urlopen(f"{d.url}{target}", timeout=60) as r:
            answers[d.name] = hashlib.sha256(r.read()).hexdigest()

    threads = [threading.Thread(target=fetch, args=(d,)) for d in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == {a.name: archive.package("ss-data").sha256, b.name: answers[a.name]}
    mirror.wait_idle(5)
    assert mirror.count(archive.package("ss-data").filename, "GET") == 1, mirror.paths()


class Refuser(FakeFileSeed):
    """Offers every file of the archive whole, then rejects every request for one."""

    def _file_message(self, conn, m, theirs) -> None:
        from debtorrent.torrent import filewire as fw
        from debtorrent.torrent import wire

        if (
            isinstance(m, wire.Extended)
            and m.ext_id
            and m.ext_id == 40 + fw.NAMES.index(fw.DT_REQUEST)
        ):
            r = fw.decode(fw.DT_REQUEST, m.payload, m.trailing)
            name, payload, _ = fw.encode(fw.Reject(r.sha256, r.piece, r.offset, r.length))
            conn.sendall(wire.encode(wire.Extended(theirs[name], payload)))
            with self._lock:
                self.requests += 1
            return
        super()._file_message(conn, m, theirs)


def test_a_peer_that_offers_files_it_will_not_send_is_struck(
    archive: Repo, mirror_factory, daemon_factory, apt_factory
) -> None:
    mirror = mirror_factory(root=archive.root)
    liar_host = "127.0.0.163"
    fake = Refuser(
        archive.swarm_hash(),
        [bytes.fromhex(p.sha256) for p in archive.packages],
        lambda *_: b"",
        host=liar_host,
    ).start()
    try:
        d = daemon_factory("--peer", fake.address, "--http-seed-delay", "60")
        apt = apt_factory.path_form(d, mirror, repo=archive, arch="amd64")
        apt.update()
        # a larger file whose list the liar never gives: the mirror takes over in seconds
        apt.install_download_only("ss-multi")
        # a one-piece file it offers and refuses: a strike (three ban, as any protocol
        # error: tests/unit/test_session.py), and the mirror serves apt at once
        apt.install_download_only("ss-small-a")
        assert downloaded(apt) == {
            archive.package(n).filename.rsplit("/", 1)[1]: archive.package(n).sha256
            for n in ("ss-multi", "ss-small-a")
        }
        assert fake.requests >= 1, "the liar was never asked"
        assert "refused a block of a file it offered whole (strike 1 of 3)" in d.log_text()
        assert status(d)["totals"]["protocol_errors"] >= 1
    finally:
        fake.stop()
