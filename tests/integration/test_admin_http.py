"""What apt and an admin see of the HTTP side (issue 14), with the real apt-get.

- the reason phrase of a failed answer carries the cause, and apt prints it;
- refused clients and methods are logged, once a minute per client;
- ``--access-log``: one line per request with the source and the bytes sent;
- resume: an interrupted apt download continues with a 206, and a partial copy of bad
  bytes never does;
- ``/health``;
- ``--mirror-rate``, ``--download-rate``, ``--upload-rate``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.fixtures.apt import AptClient
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import deb_target, raw_exchange, wait_until
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.repo import Repo

HTTP_TIMEOUT = "2"
LINE = re.compile(
    r'^(?P<time>\S+) (?P<client>\S+) "(?P<request>[^"]*)" (?P<status>\d{3}) '
    r"(?P<bytes>\d+) (?P<source>cache|offline|peer|mirror|-) (?P<ms>\d+)$"
)


def request(
    daemon: Daemon, target: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, str, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(daemon.bind, daemon.port, timeout=30)
    try:
        conn.request(method, target, headers=headers or {})
        answer = conn.getresponse()
        body = answer.read()
        return answer.status, answer.reason, {k.lower(): v for k, v in answer.getheaders()}, body
    finally:
        conn.close()


def access_lines(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m]
    return [m.groupdict() for m in parsed if m]


def deb_lines(path: Path, name: str) -> list[dict[str, str]]:
    return [line for line in access_lines(path) if f"/{name}_" in line["request"]]


# ---- reason phrases ---------------------------------------------------------------------


def test_apt_prints_the_cause_of_a_refused_or_silent_mirror(
    repo: Repo, mirror_factory, daemon_factory, apt_factory
) -> None:
    daemon = daemon_factory("--http-timeout", HTTP_TIMEOUT)
    refused = mirror_factory()
    apt = apt_factory.path_form(daemon, refused)
    refused.stop()  # nothing listens on its port now
    res = apt.update(check=False)
    assert re.search(
        rf"Err:\d+ .*\n\s+502\s+Mirror refused connection \({re.escape(refused.address)}\)",
        res.output,
    ), res.output

    silent = mirror_factory()
    silent.fault("*", "hang")
    apt = apt_factory.path_form(daemon, silent)
    res = apt.update(check=False)
    assert re.search(
        rf"504\s+Mirror timed out after 2 s \({re.escape(silent.address)}\)", res.output
    ), res.output


def test_a_client_not_allowed_is_told_and_logged_once_a_minute(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    daemon = daemon_factory("--allowed-clients", "127.0.0.99/32")
    apt = apt_factory.path_form(daemon, mirror)
    res = apt.update(check=False)
    assert re.search(r"403\s+Client 127\.0\.0\.1 not allowed", res.output), res.output
    for _ in range(5):
        assert raw_exchange(daemon.bind, daemon.port, b"GET / HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 403 Client 127.0.0.1 not allowed\r\n"
        )
    wait_until(lambda: "refused client 127.0.0.1" in daemon.log_text(), what="the refusal logged")
    logged = [line for line in daemon.log_text().splitlines() if "refused client" in line]
    assert len(logged) == 1, logged  # 6+ refusals, one line: the rest wait a minute


def test_a_refused_method_is_named_and_logged(daemon: Daemon) -> None:
    status, reason, headers, _ = request(daemon, "/", method="DELETE")
    assert (status, reason, headers["allow"]) == (
        405,
        "Method DELETE not allowed: GET, HEAD or CONNECT",
        "GET, HEAD, CONNECT",
    )
    wait_until(lambda: "method DELETE refused" in daemon.log_text(), what="the refusal logged")


# ---- the access log ---------------------------------------------------------------------


def test_access_log_says_who_got_what_from_where(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    daemon = daemon_factory(f"--access-log={log}")
    apt = apt_factory.path_form(daemon, mirror)
    apt.update()
    apt.install_download_only("dt-docs")
    p = repo.package("dt-docs")
    cold = deb_lines(log, "dt-docs")
    assert [(c["status"], c["bytes"], c["source"]) for c in cold] == [
        ("200", str(p.size), "mirror")
    ]
    assert cold[0]["client"] == "127.0.0.1" and cold[0]["request"].startswith("GET /")
    apt.clean()
    apt.install_download_only("dt-docs")
    warm = deb_lines(log, "dt-docs")[1:]
    assert [(w["status"], w["bytes"], w["source"]) for w in warm] == [("200", str(p.size), "cache")]
    indexes = [line for line in access_lines(log) if "/InRelease " in line["request"]]
    assert indexes and {line["source"] for line in indexes} == {"mirror"}

    request(daemon, "/", method="DELETE")
    last = wait_until(lambda: [x for x in access_lines(log) if x["status"] == "405"], what="405")
    assert last[0]["source"] == "-" and last[0]["request"] == "DELETE / HTTP/1.1"

    # logrotate: move the file away, SIGHUP, and the next line goes to a new file
    log.rename(tmp_path / "access.log.1")
    daemon.signal(signal.SIGHUP)
    wait_until(log.exists, what="the access log reopened")
    request(daemon, deb_target(mirror, p), method="HEAD")
    head = wait_until(lambda: deb_lines(log, "dt-docs"), what="the line in the new file")
    assert (head[0]["request"].split()[0], head[0]["source"]) == ("HEAD", "cache")


# ---- resume ------------------------------------------------------------------------------


def interrupted_download(apt: AptClient, name: str, at_least: int) -> Path:
    """Start ``apt-get install --download-only name`` slowed down (apt's Dl-Limit), stop it
    with SIGINT (as Ctrl-C does) once ``at_least`` bytes are in its partial file."""
    partial = apt.archives_dir / "partial"
    cmd = [
        "apt-get",
        "-q",
        "-oAcquire::http::Dl-Limit=300",  # KB/s
        "-y",
        "--download-only",
        "install",
        name,
    ]
    proc = subprocess.Popen(
        cmd,
        env=apt.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        found = wait_until(
            lambda: [p for p in partial.glob(f"{name}_*.deb") if p.stat().st_size >= at_least],
            timeout=60,
            what=f"{at_least} bytes of {name} in apt's partial directory",
        )
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=30)
    return found[0]


def test_an_interrupted_apt_download_resumes_with_a_206(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    daemon = daemon_factory(f"--access-log={log}")
    apt = apt_factory.path_form(daemon, mirror)
    apt.update()
    p = repo.package("dt-big")
    apt.install_download_only("dt-base")  # its dependency, so only dt-big is left
    partial = interrupted_download(apt, "dt-big", 1 << 20)
    had = partial.stat().st_size
    assert 0 < had < p.size
    cached = daemon.cache_dir / mirror.address / "debian" / p.filename
    wait_until(cached.exists, timeout=60, what="the daemon finishing dt-big on its own")
    apt.install_download_only("dt-big")
    assert apt.downloaded_sha256()[Path(p.filename).name] == p.sha256
    resumed = deb_lines(log, "dt-big")[-1]
    assert resumed["status"] == "206", deb_lines(log, "dt-big")
    assert int(resumed["bytes"]) == p.size - had  # only the rest was sent
    assert resumed["source"] == "cache"
    assert len(mirror.find(p.filename)) == 1  # and the mirror sent it once


def test_a_partial_copy_of_bad_bytes_is_never_resumed(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    """The mirror sends dt-medium with one wrong byte near its end: apt's transfer is cut
    (the SHA256 fails) and apt keeps the partial bytes. The next attempt is good and
    cached under a date of its own, so apt's resume gets a 200, not a 206 that would
    join the bad head to the good tail."""
    log = tmp_path / "access.log"
    # the mirror read slowed down, so apt is streamed the head before the check fails
    daemon = daemon_factory(f"--access-log={log}", "--mirror-rate", "400k")
    apt = apt_factory.path_form(daemon, mirror)
    apt.update()
    apt.install_download_only("dt-base")
    p = repo.package("dt-medium")
    mirror.fault(p.filename, "wrong", times=1, offset=p.size - 10)
    res = apt.install_download_only("dt-medium", check=False)
    partial = apt.archives_dir / "partial" / Path(p.filename).name
    cached = daemon.cache_dir / mirror.address / "debian" / p.filename
    assert partial.exists() and partial.stat().st_size > 0, res.output

    def good_attempt() -> bytes | None:  # the failed attempt may still be ending
        status, _, _, body = request(daemon, deb_target(mirror, p))
        return body if status == 200 else None

    body = wait_until(good_attempt, timeout=30, what="a good attempt")
    assert sha256_file_bytes(body) == p.sha256 and cached.exists()
    apt.install_download_only("dt-medium")
    assert apt.downloaded_sha256()[Path(p.filename).name] == p.sha256
    last = deb_lines(log, "dt-medium")[-1]
    assert (last["status"], last["bytes"]) == ("200", str(p.size)), deb_lines(log, "dt-medium")


# ---- /health -------------------------------------------------------------------------------


def test_health_is_503_with_the_reason_while_every_mirror_fails(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    daemon = daemon_factory("--http-timeout", HTTP_TIMEOUT)
    assert request(daemon, "/health")[::3] == (200, b"ok: serving\n")
    apt = apt_factory.path_form(daemon, mirror)
    apt.update()
    mirror.stop()
    request(daemon, f"/{mirror.address}/debian/dists/{repo.suite}/InRelease")
    status, _, _, body = request(daemon, "/health")
    assert status == 503
    assert body.decode() == f"unhealthy: mirror {mirror.address} failing: refused connection\n"
    snap = json.loads(request(daemon, "/status.json")[3])
    assert snap["health"] == {"ok": False, "reason": body.decode()[11:].strip()}
    # the fetch and the answer to apt both logged the failure: it is listed once
    refusals = [e for e in snap["errors"] if "refused connection" in e["message"]]
    assert [e["count"] for e in refusals] == [1], snap["errors"]
    assert daemon.log_text().count("refused connection") >= 2
    mirror.restart()
    apt.update()
    assert request(daemon, "/health")[0] == 200


# ---- rate limits ----------------------------------------------------------------------------
# A cap is a statement about time, so these tests time a transfer. They assert only a
# lower bound (at least ~80 % of size / rate), which a slow or busy machine can only
# make truer: they never fail for being slow.


def timed_get(daemon: Daemon, target: str) -> tuple[float, bytes]:
    start = time.monotonic()
    status, _, _, body = request(daemon, target)
    assert status == 200
    return time.monotonic() - start, body


def test_mirror_rate_caps_what_comes_from_the_mirror(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    daemon = daemon_factory("--mirror-rate", "200k")
    apt_factory.path_form(daemon, mirror).update()
    p = repo.package("dt-medium")
    took, body = timed_get(daemon, deb_target(mirror, p))
    assert sha256_file_bytes(body) == p.sha256
    assert took >= 0.8 * (p.size - 81920) / 200_000, took
    rates = json.loads(request(daemon, "/status.json")[3])["rates"]
    assert rates["mirror"]["limit"] == 200_000 and rates["mirror"]["rate"] > 0
    assert rates["upload"]["limit"] is None and rates["download"]["limit"] is None


def test_peer_rates_cap_uploads_and_downloads(
    repo: Repo, mirror: MirrorServer, daemon_factory, apt_factory
) -> None:
    seeder = daemon_factory("--upload-rate", "250k")
    p = repo.package("dt-medium")
    apt_factory.path_form(seeder, mirror).update()
    assert request(seeder, deb_target(mirror, p))[0] == 200  # now seeded
    leecher = daemon_factory("--peer", seeder.peer_address, "--download-rate", "1M")
    apt_factory.path_form(leecher, mirror).update()
    took, body = timed_get(leecher, deb_target(mirror, p))
    assert sha256_file_bytes(body) == p.sha256
    snap = json.loads(request(leecher, "/status.json")[3])
    assert snap["totals"]["bytes_from_peers"] == p.size and len(mirror.find(p.filename)) == 1
    assert took >= 0.8 * (p.size - 81920) / 250_000, took  # the seeder's upload cap
    assert snap["rates"]["download"]["limit"] == 1_000_000
    up = json.loads(request(seeder, "/status.json")[3])["rates"]["upload"]
    assert up["limit"] == 250_000 and up["rate"] > 0


def sha256_file_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
