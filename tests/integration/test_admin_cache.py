"""The cache as an admin handles it (issue 14), with the real apt-get.

- files removed or truncated behind a running daemon's back are fetched again, never a
  hang (the trial: every .deb 504 after 60 s, downloads "waiting" with done = size);
- ``debtorrent status``, ``cache verify``, ``cache clear`` and ``import``, with and without
  a running daemon.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from tests.fixtures.daemon import BIN, Daemon
from tests.fixtures.helpers import deb_target, sha256_file, wait_until
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.repo import Repo, fixture_keyrings

SET = ("dt-base", "libdt1", "dt-medium", "dt-docs", "dt-data")


def cached(daemon: Daemon, mirror: MirrorServer, repo: Repo, name: str) -> Path:
    return daemon.cache_dir / mirror.address / "debian" / repo.package(name).filename


def cli(daemon: Daemon, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``debtorrent ARGS`` aimed at ``daemon``'s address, port and cache (no config file)."""
    where = ["-c", "/dev/null", "--bind", daemon.bind, "--port", str(daemon.port)]
    where += ["--cache-dir", str(daemon.cache_dir), "--state-dir", str(daemon.workdir / "state")]
    for keyring in fixture_keyrings():  # the commands check Release signatures as it does
        where += ["--keyring", str(keyring)]
    return subprocess.run(
        [sys.executable, str(BIN), *args, *where],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def status_json(daemon: Daemon) -> dict:
    result = cli(daemon, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def mirror_hits(mirror: MirrorServer, repo: Repo, name: str) -> int:
    return len(mirror.find(repo.package(name).filename))


# ---- a cache that changes underneath -------------------------------------------------------


def test_files_removed_or_truncated_under_a_running_daemon_are_fetched_again(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    daemon = daemon_factory("--http-timeout", "5")
    apt = apt_factory.path_form(daemon, mirror, http_timeout=15)
    apt.update()
    apt.install_download_only(*SET)
    cached(daemon, mirror, repo, "dt-docs").unlink()
    cached(daemon, mirror, repo, "libdt1").unlink()
    with open(cached(daemon, mirror, repo, "dt-medium"), "r+b") as f:
        f.truncate(1000)
    apt.clean()
    apt.install_download_only(*SET)  # before the fix: 504 after 60 s for each of them
    for name in SET:
        p = repo.package(name)
        assert apt.downloaded_sha256()[Path(p.filename).name] == p.sha256, name
        assert sha256_file(cached(daemon, mirror, repo, name)) == p.sha256, name
    assert [mirror_hits(mirror, repo, n) for n in ("dt-docs", "libdt1", "dt-medium")] == [2, 2, 2]
    assert mirror_hits(mirror, repo, "dt-data") == 1
    assert "is gone or has the wrong size; fetched again" in daemon.log_text()
    swarm = status_json(daemon)["swarms"][0]
    assert (swarm["files_complete"], swarm["files_enabled"]) == (len(SET), 0)


def test_the_cache_cleared_while_apt_runs(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    """``cache clear`` runs while apt downloads through the daemon (the mirror slowed so
    the run lasts): apt ends with every file right, and the daemon seeds what is there."""
    daemon = daemon_factory("--http-timeout", "5", "--mirror-rate", "1M")
    apt = apt_factory.path_form(daemon, mirror, http_timeout=15)
    apt.update()
    apt.install_download_only(*SET)
    apt.clean()
    cached(daemon, mirror, repo, "dt-medium").unlink()  # fetched slowly in the next run
    results: list = []
    runner = threading.Thread(
        target=lambda: results.append(apt.install_download_only(*SET, "dt-big", check=False))
    )
    runner.start()
    try:
        cleared = cli(daemon, "cache", "clear")
    finally:
        runner.join(timeout=180)
    assert not runner.is_alive()
    assert cleared.returncode == 0, cleared.stderr
    assert "removed" in cleared.stdout and "the running daemon now seeds" in cleared.stdout
    results[0].check()
    for name in (*SET, "dt-big"):
        p = repo.package(name)
        assert apt.downloaded_sha256()[Path(p.filename).name] == p.sha256, name
    # the indexes were kept; whatever the daemon seeds is in the cache now
    assert cli(daemon, "cache", "verify").returncode == 0
    swarm = status_json(daemon)["swarms"][0]
    present = [n for n in (*SET, "dt-big") if cached(daemon, mirror, repo, n).exists()]
    assert swarm["files_complete"] == len(present)


# ---- the commands ---------------------------------------------------------------------------


def test_status_command_with_and_without_the_daemon(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    daemon = daemon_factory()
    apt = apt_factory.path_form(daemon, mirror)
    apt.update()
    apt.install_download_only("dt-docs")
    shown = cli(daemon, "status")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"at {daemon.url}/: up " in out and ", serving" in out
    assert "From peers: 0.0 % of package bytes" in out
    assert "Swarms:     1 (1 files complete here" in out
    assert "discovery: pex" in out and "Hint: No peer seen yet" in out  # the fixture's
    assert f"Mirror:     {mirror.address} (debian bookworm)" in out
    snap = status_json(daemon)
    assert snap["totals"]["bytes_from_mirror"] == repo.package("dt-docs").size
    # fetched, not in the cache: the Packages index by hash, then dt-docs
    assert snap["cache_misses"] == 2 and snap["cache_hits"] == 0
    daemon.stop()
    offline = cli(daemon, "status")
    assert offline.returncode == 3, offline.stdout + offline.stderr
    assert f"debtorrent is not running at {daemon.url}/ (connection refused)" in offline.stdout
    assert "All time:" in offline.stdout and "from mirrors" in offline.stdout
    as_json = json.loads(cli(daemon, "status", "--json").stdout)
    assert as_json["running"] is False and as_json["cache_files"] > 0
    assert as_json["all_time"]["bytes_from_mirror"] == repo.package("dt-docs").size


def test_cache_verify_removes_bad_files_and_the_daemon_fetches_them_again(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    daemon = daemon_factory()
    apt = apt_factory.path_form(daemon, mirror)
    apt.update()
    apt.install_download_only(*SET)
    good = cli(daemon, "cache", "verify")
    assert good.returncode == 0, good.stdout + good.stderr
    assert f"{len(SET) + 1} good, 0 bad" in good.stdout  # and the Packages index by hash
    bad = cached(daemon, mirror, repo, "dt-data")
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF  # same size: only the SHA256 can tell
    bad.write_bytes(bytes(data))
    found = cli(daemon, "cache", "verify")
    assert found.returncode == 1
    assert (
        f"bad: {mirror.address}/debian/{repo.package('dt-data').filename}: SHA256" in found.stdout
    )
    assert "the running daemon now seeds 0 more files and 1 fewer" in found.stdout
    assert not bad.exists()
    apt.clean()
    apt.install_download_only("dt-data")
    p = repo.package("dt-data")
    assert apt.downloaded_sha256()[Path(p.filename).name] == p.sha256
    assert mirror_hits(mirror, repo, "dt-data") == 2


def test_cache_clear_keeps_the_indexes_unless_all(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    daemon = daemon_factory()
    apt = apt_factory.path_form(daemon, mirror)
    apt.update()
    apt.install_download_only(*SET)
    daemon.stop()
    cleared = cli(daemon, "cache", "clear")
    assert cleared.returncode == 0, cleared.stderr
    left = sorted(p.name for p in daemon.cache_dir.rglob("*") if p.is_file())
    assert left == ["InRelease", "Packages"], left
    daemon.start()
    assert "loaded 1 saved Packages indexes" in daemon.log_text()
    daemon.stop()
    assert cli(daemon, "cache", "clear", "--all").returncode == 0
    assert [p for p in daemon.cache_dir.rglob("*")] == []
    # a directory that is not a debtorrent cache is refused, whatever it holds
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    (elsewhere / ".bashrc").write_text("# keep me\n")
    refused = subprocess.run(
        [
            sys.executable,
            str(BIN),
            "cache",
            "clear",
            "-c",
            "/dev/null",
            "--cache-dir",
            str(elsewhere),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1 and "does not look like a debtorrent cache" in refused.stderr
    assert (elsewhere / ".bashrc").exists()


def test_import_seeds_apts_own_archives(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    """apt downloaded the packages directly; ``import`` puts them in the running daemon's
    cache, which serves them to apt and to a peer without asking the mirror."""
    direct = apt_factory.direct(mirror)
    direct.update()
    direct.install_download_only(*SET)
    archives = direct.archives_dir
    impostor = archives / "dt-tiny_0.1-1_fake.deb"  # named like a package, other bytes
    p_tiny = repo.package("dt-tiny")
    impostor.write_bytes(b"\0" * p_tiny.size)
    seeder = daemon_factory()
    apt_factory.path_form(seeder, mirror).update()
    before = len(mirror.records())

    imported = cli(seeder, "import", str(archives))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert f"imported {len(SET)} files" in imported.stdout
    assert f"the running daemon now seeds {len(SET)} more files" in imported.stdout
    assert "1 not in any saved index" in imported.stdout  # the impostor
    for name in SET:
        assert sha256_file(cached(seeder, mirror, repo, name)) == repo.package(name).sha256
    again = cli(seeder, "import", str(archives))
    assert f"{len(SET)} already cached" in again.stdout

    apt = apt_factory.path_form(seeder, mirror)
    apt.update()
    apt.install_download_only(*SET)
    assert [r for r in mirror.records()[before:] if "/pool/" in r.path] == []
    assert status_json(seeder)["cache_hits"] == len(SET) + 1  # and the index by hash

    leecher = daemon_factory("--peer", seeder.peer_address)
    apt_factory.path_form(leecher, mirror).update()
    p = repo.package("dt-medium")
    status = leecher_get(leecher, deb_target(mirror, p))
    assert status == 200
    snap = status_json(leecher)
    assert snap["totals"]["bytes_from_peers"] == p.size and snap["totals"]["bytes_from_mirror"] == 0


def leecher_get(daemon: Daemon, target: str) -> int:
    conn = http.client.HTTPConnection(daemon.bind, daemon.port, timeout=60)
    try:
        conn.request("GET", target)
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()


def test_import_without_a_daemon_is_seeded_at_the_next_start(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    daemon = daemon_factory()
    apt_factory.path_form(daemon, mirror).update()
    daemon.stop()
    one = repo.package("dt-docs")
    imported = cli(daemon, "import", str(one.path))
    assert imported.returncode == 0 and "imported 1 files" in imported.stdout, imported.stdout
    daemon.start()
    wait_until(lambda: "seeding 1 files from the cache" in daemon.log_text(), what="seeding")
    assert os.stat(cached(daemon, mirror, repo, "dt-docs")).st_size == one.size


def test_commands_refuse_a_cache_without_indexes_and_bad_usage(daemon_factory) -> None:
    daemon = daemon_factory()
    none = cli(daemon, "import", "/nonexistent")
    assert (
        none.returncode == 1 and "no Packages index with a verified Release is saved" in none.stderr
    )
    twice = subprocess.run(
        [sys.executable, str(BIN), "status", "--port", "1", "--port", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert twice.returncode == 2
    assert (
        twice.stderr.strip()
        == "debtorrent: error: --port: given more than once; it takes one value"
    )
