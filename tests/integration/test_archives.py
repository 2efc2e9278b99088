"""Every Debian-format archive, through the daemon, with the real apt-get.

Each layout is a fixture archive (``tests.fixtures.repo.build_archive``/``build_flat``)
served by the fixture mirror; apt updates and downloads through the daemon with its
own ``signed-by`` key, which the daemon is given with ``--keyring``. For each one the
test proves what would break if the layout were not understood: apt's update and
downloads are clean (no ``W:``/``E:``/``Err:`` line), the packages are bit-identical,
the daemon verified the suite's Release (``suites`` in /status.json), made a swarm of
every ``Packages`` index, and kept the packages in its cache (a second client gets
them without the mirror seeing a request).
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.apt import AptClient
from tests.fixtures.daemon import Daemon
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.repo import Archive, PackageSpec, SuiteSpec, build_archive, build_flat


def status(daemon: Daemon) -> dict:
    with urllib.request.urlopen(f"{daemon.url}/status.json", timeout=10) as answer:
        return json.load(answer)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def serve(mirror_factory, root: Path, prefix: str) -> MirrorServer:
    mirror = mirror_factory(root=root)
    mirror.add_mount(prefix, root)
    return mirror


def apt_client(tmp_path: Path, n: int, sources: str, daemon: Daemon, **kw) -> AptClient:
    return AptClient(tmp_path / f"apt{n}", sources, proxy=daemon.url + "/", **kw)


def check_downloads(apt: AptClient, wanted: dict[str, str]) -> None:
    """``wanted``: package name -> SHA256; every one downloaded, bit-identical."""
    got = apt.downloaded_sha256()
    for name, digest in wanted.items():
        assert any(n.startswith(f"{name}_") and d == digest for n, d in got.items()), (name, got)


def check_second_client_from_cache(
    tmp_path: Path, sources: str, daemon: Daemon, mirror: MirrorServer, names: list[str]
) -> None:
    """A second apt gets the same packages; the mirror sees no package request."""
    second = apt_client(tmp_path, 99, sources, daemon)
    second.update()
    mirror.clear()
    second.install_download_only(*names)
    pool = [p for p in mirror.paths() if p.endswith((".deb", ".udeb"))]
    assert pool == [], f"packages fetched again from the mirror: {pool}"


def test_ubuntu_like_archive_three_suites_four_components(
    mirror_factory, daemon_factory, tmp_path: Path
) -> None:
    components = ("main", "restricted", "universe", "multiverse")
    suites = [
        SuiteSpec(
            dist,
            suite=dist,
            codename="noble",
            origin="Ubuntu",
            label="Ubuntu",
            components={c: [PackageSpec(f"u-{dist}-{c}", f"1.{i}-0ubuntu1")] for c in components},
        )
        for i, dist in enumerate(("noble", "noble-updates", "noble-security"))
    ]
    archive = build_archive(tmp_path / "ubuntu", suites)
    mirror = serve(mirror_factory, archive.root, "/ubuntu")
    daemon = daemon_factory("--keyring", str(archive.keyring))
    sources = archive.sources_lines(f"http://{mirror.address}/ubuntu")
    apt = apt_client(tmp_path, 1, sources, daemon)
    apt.update()
    names = [f"u-{s.dist}-{c}" for s in suites for c in components]
    apt.install_download_only(*names)
    check_downloads(apt, {n: archive.package(n).sha256 for n in names})

    snap = status(daemon)
    trust = {s["path"]: s["trust"] for s in snap["suites"]}
    assert trust == {f"ubuntu/dists/{s.dist}": "verified" for s in suites}, trust
    swarms = {s["name"] for s in snap["swarms"]}
    expected = {f"Ubuntu_noble_{c}_binary-{archive.arch}" for c in components}
    assert expected <= swarms, swarms
    # three suites share a codename: twelve indexes, twelve distinct swarms by content
    assert len(snap["swarms"]) == 12, sorted(swarms)
    check_second_client_from_cache(tmp_path, sources, daemon, mirror, names)


def test_flat_repository(mirror_factory, daemon_factory, tmp_path: Path) -> None:
    flat = build_flat(
        tmp_path / "flat",
        [PackageSpec("flat-one", "1.0-1"), PackageSpec("flat-two", "2.0+b1", arch="all")],
        directory="repo/flat",
    )
    mirror = serve(mirror_factory, flat.root, "/third")
    daemon = daemon_factory("--keyring", str(flat.keyring))
    sources = flat.sources_line(f"http://{mirror.address}/third")
    apt = apt_client(tmp_path, 1, sources, daemon)
    apt.update()
    apt.install_download_only("flat-one", "flat-two")
    check_downloads(apt, {n: flat.package(n).sha256 for n in ("flat-one", "flat-two")})

    snap = status(daemon)
    assert [(s["path"], s["trust"]) for s in snap["suites"]] == [("third/repo/flat", "verified")], (
        snap["suites"]
    )
    assert [s["name"] for s in snap["swarms"]] == ["DebtorrentTest-flat_flat_flat_binary-any"]
    assert snap["swarms"][0]["files"] == 2
    cached = daemon.cache_dir / mirror.address / "third" / "repo" / "flat"
    assert sha256(cached / flat.package("flat-one").path.name) == flat.package("flat-one").sha256
    check_second_client_from_cache(tmp_path, sources, daemon, mirror, ["flat-one", "flat-two"])


def _single_suite(tmp_path: Path, **spec) -> Archive:
    components = spec.pop("components", {"main": [PackageSpec("one-pkg", "1.0-1")]})
    dist = spec.pop("dist", "stable")
    return build_archive(
        tmp_path / "archive",
        [SuiteSpec(dist, suite=dist.split("/")[0], codename=dist, components=components, **spec)],
    )


@pytest.mark.parametrize(
    ("layout", "spec"),
    [
        ("Release + Release.gpg, no InRelease", {"inrelease": False}),
        ("no Acquire-By-Hash", {"by_hash": False}),
        ("a suite with a slash", {"dist": "stable/updates"}),
        (
            "binary-all",
            {
                "binary_all": True,
                "components": {
                    "main": [
                        PackageSpec("one-pkg", "1.0-1"),
                        PackageSpec("all-pkg", "1", arch="all"),
                    ]
                },
            },
        ),
    ],
)
def test_other_suite_layouts(
    layout: str, spec: dict, mirror_factory, daemon_factory, tmp_path: Path
) -> None:
    archive = _single_suite(tmp_path, **spec)
    (dist,) = archive.suites
    mirror = serve(mirror_factory, archive.root, "/debian")
    daemon = daemon_factory("--keyring", str(archive.keyring))
    sources = archive.sources_lines(f"http://{mirror.address}/debian")
    apt = apt_client(tmp_path, 1, sources, daemon)
    apt.update()
    names = sorted(archive.specs)
    apt.install_download_only(*names)
    check_downloads(apt, {n: archive.package(n).sha256 for n in names})

    snap = status(daemon)
    assert [(s["path"], s["trust"]) for s in snap["suites"]] == [
        (f"debian/dists/{dist}", "verified")
    ], (layout, snap["suites"])
    indexes = {rel for (d, rel) in archive.binaries if d == dist}
    assert len(snap["swarms"]) == len(indexes), (layout, snap["swarms"])
    requested = mirror.paths()
    if not spec.get("inrelease", True):
        assert any(p.endswith("/Release.gpg") for p in requested), requested
    if not spec.get("by_hash", True):
        assert not any("/by-hash/" in p for p in requested), requested
    if spec.get("binary_all"):
        assert any("/binary-all/" in p for p in requested), requested
        assert any(s["name"].endswith("_main_binary-all") for s in snap["swarms"])
    check_second_client_from_cache(tmp_path, sources, daemon, mirror, names)


def test_debian_installer_udebs(mirror_factory, daemon_factory, tmp_path: Path) -> None:
    archive = _single_suite(
        tmp_path,
        components={"main": [PackageSpec("one-pkg", "1.0-1")]},
        udebs={"main": [PackageSpec("di-thing-udeb", "1.2", section="debian-installer")]},
    )
    mirror = serve(mirror_factory, archive.root, "/debian")
    daemon = daemon_factory("--keyring", str(archive.keyring))
    sources = archive.sources_lines(f"http://{mirror.address}/debian")
    apt = apt_client(tmp_path, 1, sources, daemon)
    apt.update()
    udeb = archive.package("di-thing-udeb")
    apt.run("download", "di-thing-udeb")  # into the working directory: apt's cwd
    snap = status(daemon)
    names = {s["name"] for s in snap["swarms"]}
    assert f"DebtorrentTest_stable_main-debian-installer_binary-{archive.arch}" in names, names
    cached = daemon.cache_dir / mirror.address / "debian" / udeb.filename
    assert sha256(cached) == udeb.sha256
    mirror.clear()
    status_code, body = _get(daemon, f"/{mirror.address}/debian/{udeb.filename}")
    assert (status_code, hashlib.sha256(body).hexdigest()) == (200, udeb.sha256)
    assert mirror.paths() == []


def test_sources_and_apt_get_source(mirror_factory, daemon_factory, tmp_path: Path) -> None:
    archive = _single_suite(
        tmp_path, components={"main": [PackageSpec("src-pkg", "2.0-1")]}, sources=True
    )
    mirror = serve(mirror_factory, archive.root, "/debian")
    daemon = daemon_factory("--keyring", str(archive.keyring))
    sources = archive.sources_lines(f"http://{mirror.address}/debian", deb_src=True)
    apt = apt_client(tmp_path, 1, sources, daemon)
    apt.update()
    assert any("/source/" in p for p in mirror.paths()), mirror.paths()
    workdir = tmp_path / "src"
    workdir.mkdir()
    apt.run("source", "--download-only", "src-pkg", cwd=workdir)
    (src,) = archive.sources[("stable", "main")]
    for name, _size, digest, _md5 in src.files:
        assert sha256(workdir / name) == digest, name
        cached = daemon.cache_dir / mirror.address / "debian" / src.directory / name
        assert sha256(cached) == digest, name  # .dsc and .tar.xz kept
    mirror.clear()
    again = tmp_path / "src2"
    again.mkdir()
    apt.run("source", "--download-only", "src-pkg", cwd=again)
    assert not any(p.endswith((".dsc", ".tar.xz")) for p in mirror.paths()), mirror.paths()


def _get(daemon: Daemon, target: str) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection(daemon.bind, daemon.port, timeout=30)
    try:
        conn.request("GET", target)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()
