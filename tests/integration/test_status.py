"""The status page, /status.json and /metrics of real daemons, seen by a real browser.

Two daemons (the second has the first as ``--peer``) serve a fixture download through
the real apt-get: the first takes its packages from the mirror, the second takes the
same ones from the first and the rest from the mirror, one of them slowly enough to be
seen as a current download. Then:

- headless Chromium (Debian's ``chromium``) loads the second daemon's page: the DOM it
  built shows the swarm row and the non-zero byte counts from peers and from the
  mirror, and a hostile path that reached the recent errors shows as text, not markup.
  The screenshot is kept under the test's tmp dir (``status.png``; ``during.png`` is
  taken while the slow download runs);
- /status.json and /metrics say the same, and agree with the mirror's request log:
  ``bytes_from_mirror`` is exactly the .deb bytes the mirror sent to that daemon;
- every field of /status.json, at every depth, is described in debtorrent(1) STATUS
  and docs/status.md, and has the shape of the page builder's unit-test sample.

Clients outside ``--allowed-clients`` get 403 on /, /status.json and /metrics.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from debtorrent.cache import TMP_PREFIX
from debtorrent.status import CacheUsage
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import wait_until
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.net import loopback_aliases_usable
from tests.fixtures.repo import COMPONENT, ORIGIN, Repo
from tests.unit.test_statuspage import SAMPLE

pytestmark = pytest.mark.skipif(
    not loopback_aliases_usable(), reason="needs distinct 127.0.0.x addresses"
)

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--hide-scrollbars",
)
#: The first daemon's download, then the second's: dt-medium and dt-base come from the
#: first daemon, dt-tool, libdt1 and dt-data from the mirror (dt-data slowly).
FIRST = ("dt-medium",)
FIRST_DEBS = {"dt-medium", "dt-base"}
SECOND = ("dt-medium", "dt-tool")
SECOND_DEBS = {"dt-medium", "dt-base", "dt-tool", "libdt1", "dt-data"}
SLOW = "dt-data"
SLOW_RATE = 8000  # bytes/s: ~5 s for dt-data, long enough to be seen downloading
HOSTILE_NAME = '<script>alert("x")</script>&\'.dsc'


# ---- helpers --------------------------------------------------------------------------------
def request(
    d: Daemon,
    path: str,
    *,
    method: str = "GET",
    source: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(
        d.bind, d.port, timeout=10, source_address=(source, 0) if source else None
    )
    try:
        conn.request(method, path, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def status(d: Daemon) -> dict[str, Any]:
    code, _, body = request(d, "/status.json")
    assert code == 200, body
    return json.loads(body)


def metrics(d: Daemon) -> dict[tuple[str, tuple], float]:
    code, headers, body = request(d, "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain"), headers
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def mirror_deb_bytes(mirror: MirrorServer, d: Daemon) -> int:
    """Body bytes of .deb files the mirror sent to the daemon (its --peer-bind address)."""
    return mirror.bytes_sent(lambda r: r.path.endswith(".deb") and r.client == d.bind)


def key_paths(data: Any, prefix: str = "") -> set[str]:
    """``a``, ``a.b``, ``a[].c``: where each key sits, list positions collapsed."""
    out: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            out.add(prefix + key)
            out |= key_paths(value, prefix + key + ".")
    elif isinstance(data, list):
        for item in data:
            out |= key_paths(item, prefix.rstrip(".") + "[].")
    return out


def names(paths: set[str]) -> set[str]:
    return {p.rsplit(".", 1)[-1] for p in paths}


def man_status_fields() -> set[str]:
    """Field names tagged in debtorrent(1) STATUS: ``.TP`` then ``.B name`` (the levels
    tests/integration/test_package.py checks) or ``.BR name`` (items of lists)."""
    page = (ROOT / "man" / "debtorrent.1").read_text()
    section = page.split("\n.SH STATUS\n", 1)[1].split("\n.SH ", 1)[0]
    return set(re.findall(r"^\.TP\n\.BR? (\S+)$", section, re.MULTILINE))


def doc_status_fields() -> set[str]:
    """Field names in the tables of docs/status.md (first column, in backticks)."""
    text = (ROOT / "docs" / "status.md").read_text()
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, re.MULTILINE))


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; installed here when root and missing (``make debs`` does it too)."""
    if not os.path.exists(CHROMIUM) and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
            subprocess.run(install, env=env, capture_output=True, timeout=900)
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"needs Debian's chromium ({CHROMIUM}); `make debs` as root installs it")
    return CHROMIUM


def browse(chromium: str, workdir: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    """One headless Chromium run with a throwaway profile and home, kept under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
    }
    profile = workdir / f"profile-{time.monotonic_ns()}"
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    shutil.rmtree(profile, ignore_errors=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr[-3000:]}"
    return result


def screenshot(chromium: str, workdir: Path, url: str, png: Path) -> Path:
    browse(chromium, workdir, url, f"--screenshot={png}", "--window-size=1280,1600")
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, png
    return png


# ---- the fleet ---------------------------------------------------------------------------------
def test_fleet_download_in_chromium_json_and_metrics(
    repo: Repo, mirror: MirrorServer, apt_factory, daemon_factory, chromium: str, tmp_path: Path
) -> None:
    d1 = daemon_factory("--state-dir", str(tmp_path / "state1"))
    apt1 = apt_factory.path_form(d1, mirror)
    apt1.update()
    apt1.install_download_only(*FIRST)

    d2 = daemon_factory("--peer", d1.peer_address, "--state-dir", str(tmp_path / "state2"))
    apt2 = apt_factory.path_form(d2, mirror)
    apt2.update()
    wait_until(lambda: status(d2)["connections"] >= 1, 15, "the second daemon connected")

    # The second download, with dt-data crawling from the mirror: watched while it runs.
    slow = repo.package(SLOW)
    mirror.fault(slow.filename, "slow", times=1, rate=SLOW_RATE)
    results: list[object] = []
    worker = threading.Thread(
        target=lambda: results.append(apt2.install_download_only(*SECOND, check=False))
    )
    worker.start()
    try:

        def slow_download() -> dict | None:
            snap = status(d2)
            seen = [d for d in snap["downloads"] if d["path"].endswith(slow.filename)]
            return snap if seen and seen[0]["source"] == "mirror" else None

        during = wait_until(slow_download, 20, f"{SLOW} seen downloading from the mirror")
        screenshot(chromium, tmp_path / "chromium", f"{d2.url}/", tmp_path / "during.png")
    finally:
        worker.join(timeout=90)
    assert not worker.is_alive(), "apt-get still running"
    assert results and results[0].ok, getattr(results[0], "output", results)
    mirror.wait_idle(5)

    # A path the mirror answers 404 to ends up in the recent errors, markup and all.
    # (Asked last: debtorrent.mirror hands a connection back to its pool with the 404's
    # body unread, which can break the next request on it.)
    hostile = f"/{mirror.address}/debian/pool/main/x/{quote(HOSTILE_NAME, safe='')}"
    assert request(d2, hostile)[0] == 404

    # ---- /status.json against the repository and the mirror's log
    s1, s2 = status(d1), status(d2)
    first_size = repo.total_size(FIRST_DEBS)
    rest_size = repo.total_size(SECOND_DEBS - FIRST_DEBS)
    assert s1["totals"]["bytes_from_mirror"] == mirror_deb_bytes(mirror, d1) == first_size
    assert s1["totals"]["bytes_from_peers"] == 0
    assert s2["totals"]["bytes_from_mirror"] == mirror_deb_bytes(mirror, d2) == rest_size
    assert s2["totals"]["bytes_from_peers"] == first_size
    assert s1["totals"]["bytes_uploaded"] >= first_size
    assert s2["totals"]["peer_share"] == round(first_size / (first_size + rest_size), 4)
    for snap, debs in ((s1, FIRST_DEBS), (s2, SECOND_DEBS)):
        rows = {(r["class"], r["status"]): r for r in snap["requests"]}
        assert rows[("package", 200)]["count"] == len(debs), snap["requests"]
        assert rows[("package", 200)]["bytes"] == repo.total_size(debs)
        assert snap["totals"]["bytes_to_apt"] == sum(r["bytes"] for r in snap["requests"])
        for key in ("bytes_to_apt", "bytes_from_peers", "bytes_from_mirror", "bytes_uploaded"):
            assert snap["all_time"][key] == snap["totals"][key], key  # a fresh state dir
        (swarm,) = snap["swarms"]
        assert swarm["name"] == f"{ORIGIN}_{repo.codename}_{COMPONENT}"  # layout 2: no arch
        assert swarm["files_complete"] == len(debs) and swarm["files_enabled"] == 0
        assert swarm["index_date"] and swarm["files"] == len(repo.package_names())
        # counted when the fixture's readiness probe (HEAD /) came, then at most every 30 s
        assert snap["cache_counted"] <= time.time() and isinstance(snap["cache_files"], int)
    assert [p["address"] for p in s2["swarms"][0]["peer_list"]] == [d1.peer_address]
    assert any(HOSTILE_NAME in e["message"] for e in s2["errors"]), s2["errors"]

    # ---- /metrics says the same
    for d, snap in ((d1, s1), (d2, s2)):
        m = metrics(d)
        totals = snap["totals"]
        assert (
            m[("debtorrent_package_bytes_total", (("source", "peers"),))]
            == totals["bytes_from_peers"]
        )
        assert (
            m[("debtorrent_package_bytes_total", (("source", "mirror"),))]
            == totals["bytes_from_mirror"]
        )
        assert m[("debtorrent_uploaded_bytes_total", ())] == totals["bytes_uploaded"]
        assert m[("debtorrent_bans_total", ())] == totals["bans"] == 0
        assert m[("debtorrent_peers", ())] == snap["connections"] >= 1
        assert m[("debtorrent_swarms", ())] == len(snap["swarms"]) == 1
        assert m[("debtorrent_cache_bytes", ())] == snap["cache_bytes"]
        assert m[("debtorrent_cache_files", ())] == snap["cache_files"]
        for row in snap["requests"]:
            labels = (("class", row["class"]), ("status", str(row["status"])))
            assert m[("debtorrent_apt_requests_total", labels)] == row["count"]
        apt_bytes = sum(v for (n, _), v in m.items() if n == "debtorrent_apt_bytes_total")
        assert apt_bytes == totals["bytes_to_apt"]

    # ---- the page, as Chromium built it
    dom = browse(chromium, tmp_path / "chromium", f"{d2.url}/", "--dump-dom").stdout
    (tmp_path / "status.html").write_text(dom)
    swarm = s2["swarms"][0]
    row = re.search(rf'<tr class="swarm" data-info-hash="{swarm["info_hash"]}">(.*?)</tr>', dom)
    assert row and swarm["name"] in row.group(1), dom[:3000]
    shown = dict(re.findall(r'<td class="num" id="([a-z_]+-[a-z_]+)"><data value="(\d+)"', dom))
    assert int(shown["totals-bytes_from_peers"]) == s2["totals"]["bytes_from_peers"] > 0
    assert int(shown["totals-bytes_from_mirror"]) == s2["totals"]["bytes_from_mirror"] > 0
    assert int(shown["all_time-bytes_to_apt"]) == s2["all_time"]["bytes_to_apt"] > 0
    assert "<script" not in dom and "&lt;script&gt;alert" in dom
    png = screenshot(chromium, tmp_path / "chromium", f"{d2.url}/", tmp_path / "status.png")
    print(f"status page screenshots: {png} and {tmp_path / 'during.png'}")

    # ---- every field documented, and the unit tests' sample has the real shape
    real = key_paths(during) | key_paths(s2)
    assert real == key_paths(SAMPLE), "the page builder's SAMPLE no longer has the real shape"
    assert names(real) <= man_status_fields(), "undocumented in debtorrent(1) STATUS"
    assert man_status_fields() <= names(real), "documented in debtorrent(1) but not served"
    assert doc_status_fields() == names(real), "docs/status.md and /status.json differ"


# ---- access and answers ---------------------------------------------------------------------
def test_status_paths_refuse_clients_not_allowed(daemon_factory) -> None:
    d = daemon_factory("--allowed-clients", "127.0.0.99/32")
    for path in ("/", "/status.json", "/metrics", "/?refresh=1"):
        for method in ("GET", "HEAD"):
            code, _, body = request(d, path, method=method, source="127.0.0.1")
            assert code == 403, (path, method, body)
            assert b"bytes_from" not in body and b"debtorrent_" not in body
        assert request(d, path, source="127.0.0.99")[0] == 200, path


def test_status_answers_and_headers(daemon: Daemon) -> None:
    code, headers, body = request(daemon, "/", headers={"Host": '"><script>x</script>'})
    assert code == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["content-security-policy"]  # default-src 'none'
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert headers["cache-control"] == "no-store"
    page = body.decode()
    assert "<script>" not in page and "&quot;&gt;&lt;script&gt;x&lt;/script&gt;" in page
    assert int(headers["content-length"]) == len(body)
    for path in ("/", "/status.json", "/metrics"):
        code, headers, body = request(daemon, path, method="HEAD")
        assert code == 200 and body == b"" and int(headers["content-length"]) > 0, path
    snap = status(daemon)
    assert snap["swarms"] == [] and snap["downloads"] == [] and snap["requests"] == []
    m = metrics(daemon)
    assert m[("debtorrent_build_info", (("version", snap["version"]),))] == 1
    assert m[("debtorrent_start_time_seconds", ())] == snap["started"]


# ---- the cache count ---------------------------------------------------------------------------
def test_cache_usage_is_counted_then_cached(tmp_path: Path) -> None:
    """Files and bytes under the cache, temporaries and symlinks left out; recounted
    only once ``interval`` has passed (here in the test process, on gevent's hub)."""
    root = tmp_path / "cache"
    (root / "mirror" / "pool").mkdir(parents=True)
    (root / "mirror" / "pool" / "a.deb").write_bytes(b"x" * 1000)
    (root / "mirror" / "Packages").write_bytes(b"y" * 24)
    (root / "mirror" / "pool" / f"{TMP_PREFIX}partial").write_bytes(b"z" * 5000)
    (root / "link").symlink_to(tmp_path)  # a loop if followed
    usage = CacheUsage(root)
    usage.yield_every = 1  # yield at every entry: still one consistent count
    size, files, counted = usage.current()
    assert (size, files) == (1024, 2) and counted is not None and counted <= time.time()
    (root / "mirror" / "pool" / "b.deb").write_bytes(b"x" * 100)
    assert usage.current() == (1024, 2, counted)  # cached: no walk per request
    usage.interval = 0.0
    usage.current()  # starts a recount in the background ...
    assert usage._walker is not None
    usage._walker.join(5)  # ... which the next caller sees
    assert usage.current()[:2] == (1124, 3)
