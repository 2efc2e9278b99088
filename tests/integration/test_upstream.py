"""Upstream reach: https sources (CONNECT tunnels and cached TLS mirrors), and no open door.

- CONNECT: apt with only ``Acquire::http::Proxy`` sends an ``https://`` source as
  ``CONNECT host:443``; the daemon tunnels it to an allowed mirror (nginx with a
  certificate from a test CA), counts it on the status page with the hint, and refuses
  anything else with a 403 whose reason phrase apt prints. Tunnels are bounded.
- Cached https: an ``http://`` source whose host is in ``--tls-mirrors`` (or a path-form
  ``host:443``) is fetched by the daemon over TLS, verified against ``--ca-file``,
  cached and shared; TLS failures are 502s whose reason apt prints.
- Not an open fetcher: a local "secret" web server on 127.0.1.3 is never reached, in
  any spelling (decimal, hex, short, IPv6-mapped, a name), through a redirect, or as a
  file that is no archive file; mirrors on loopback are reached only when
  ``--allowed-mirrors`` names them.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tools
from tests.fixtures.apt import AptClient
from tests.fixtures.daemon import Daemon
from tests.fixtures.helpers import raw_exchange, wait_until
from tests.fixtures.mirror import MirrorServer, TestCA, TLSMirror
from tests.fixtures.net import free_port
from tests.fixtures.repo import Repo

SECRET_HOST = "127.0.1.3"
SECRET = b"the secret of a service that listens only on this machine\n"


# ---- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    require_tools("openssl", "nginx")
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def tls_factory(ca: TestCA, repo: Repo, tmp_path: Path) -> Iterator:
    """``tls_factory(san=None) -> TLSMirror`` serving the session repo at /debian on 443."""
    started: list[TLSMirror] = []

    def make(san: str | None = None) -> TLSMirror:
        mirror = TLSMirror(tmp_path / f"nginx{len(started)}", ca, {"/debian": repo.root}, san=san)
        started.append(mirror)
        return mirror.start()

    yield make
    for mirror in started:
        mirror.stop()


@pytest.fixture
def secret(tmp_path: Path) -> Iterator[MirrorServer]:
    """A local-only web server holding a secret, also under archive-looking paths."""
    www = tmp_path / "secret"
    (www / "debian" / "dists" / "x").mkdir(parents=True)
    (www / "secret.txt").write_bytes(SECRET)
    (www / "debian" / "dists" / "x" / "InRelease").write_bytes(SECRET)
    server = MirrorServer(www, prefix="/", host=SECRET_HOST).start()
    yield server
    server.stop()


def status(daemon: Daemon) -> dict:
    with urllib.request.urlopen(f"{daemon.url}/status.json", timeout=10) as answer:
        return json.load(answer)


def get(daemon: Daemon, target: str, timeout: float = 30) -> tuple[int, str, bytes]:
    """``(status, reason phrase, body)`` of one GET with a raw request target."""
    conn = http.client.HTTPConnection(daemon.bind, daemon.port, timeout=timeout)
    try:
        conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", "x")
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, answer.reason, answer.read()
    finally:
        conn.close()


def connect(daemon: Daemon, authority: str) -> tuple[socket.socket, bytes]:
    """Open ``CONNECT authority``; the socket and the daemon's status line and headers."""
    sock = socket.create_connection((daemon.bind, daemon.port), timeout=15)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def https_apt(tmp_path: Path, repo: Repo, daemon: Daemon, host: str, ca: TestCA) -> AptClient:
    """apt with an ``https://`` source and the daemon as its (http) proxy."""
    return AptClient(
        tmp_path / f"apt-{host}",
        repo.sources_line(f"https://{host}/debian"),
        proxy=daemon.url + "/",
        extra_conf=f'Acquire::https::CaInfo "{ca.ca_pem}";',
    )


# ---- CONNECT ------------------------------------------------------------------------------------
def test_https_source_through_the_proxy_is_tunnelled_and_counted(
    repo: Repo, ca: TestCA, tls_factory, daemon_factory, tmp_path: Path
) -> None:
    tls = tls_factory()
    daemon = daemon_factory("--allowed-mirrors", f"*,{tls.host}")
    apt = https_apt(tmp_path, repo, daemon, tls.host, ca)
    apt.update()
    apt.install_download_only("dt-base", "libdt1")
    assert (
        apt.downloaded_sha256()["dt-base_1.0-1_" + repo.arch + ".deb"]
        == repo.package("dt-base").sha256
    )
    # the bytes went through the tunnel to nginx; the daemon kept nothing of that host
    assert any(p.endswith("/InRelease") for p in tls.paths()), tls.paths()
    assert any(p.endswith(".deb") for p in tls.paths()), tls.paths()
    assert not (daemon.cache_dir / tls.host).exists()
    tunnels = wait_until(lambda: (t := status(daemon)["tunnels"])["open"] == 0 and t, 15)
    assert tunnels["opened"] >= 1 and tunnels["bytes_from_mirror"] > 0, tunnels
    assert tunnels["hosts"] == [tls.host]
    assert "tls-mirrors" in tunnels["hint"]
    page = urllib.request.urlopen(daemon.url + "/", timeout=10).read().decode()
    assert "tls-mirrors" in page and 'id="tunnel-count"' in page
    assert f"CONNECT {tls.host}:443 from" in daemon.log_text()


def test_connect_elsewhere_is_403_with_a_reason_apt_prints(
    repo: Repo, ca: TestCA, tls_factory, secret, daemon_factory, tmp_path: Path
) -> None:
    tls = tls_factory()
    # *: any public host, but the TLS mirror's loopback address is not named
    daemon = daemon_factory("--allowed-mirrors", "*,127.0.0.1")
    refused = [
        f"{SECRET_HOST}:{secret.port}",  # not 443
        f"{tls.host}:443",  # loopback, not named
        "127.0.0.1:22",
        f"[::ffff:{tls.host}]:443",
        "2130706433:443",
        "deb.example.org:80",
        "deb.example.org",  # no port
        "/etc/passwd",
    ]
    for authority in refused:
        sock, head = connect(daemon, authority)
        sock.close()
        assert head.startswith(b"HTTP/1.1 403 Forbidden ("), (authority, head[:200])
    assert b"CONNECT only to allowed mirrors on port 443" in connect(daemon, "127.0.0.1:22")[1]
    assert secret.records() == [] and tls.paths() == []
    apt = https_apt(tmp_path, repo, daemon, tls.host, ca)
    result = apt.update(check=False)
    assert not result.ok
    out = result.stdout + result.stderr
    assert "403" in out and "Forbidden (internal address" in out, out
    assert tls.paths() == []
    assert status(daemon)["tunnels"]["refused"] >= len(refused)


def test_tunnels_are_bounded_in_number_and_idle_time(tls_factory, daemon_factory) -> None:
    tls = tls_factory()
    daemon = daemon_factory(
        "--allowed-mirrors", f"*,{tls.host}", "--max-tunnels", "1", "--tunnel-idle-timeout", "1"
    )
    first, head = connect(daemon, f"{tls.host}:443")
    assert head == b"HTTP/1.1 200 Connection established\r\n\r\n", head
    second, head2 = connect(daemon, f"{tls.host}:443")
    second.close()
    assert head2.startswith(b"HTTP/1.1 503 Service Unavailable (too many CONNECT tunnels)"), head2
    # nothing sent: the idle tunnel is closed by the daemon (bounded wait, no timing claim)
    first.settimeout(30)
    started = time.monotonic()
    assert first.recv(1) == b""
    first.close()
    assert time.monotonic() - started < 30
    wait_until(lambda: status(daemon)["tunnels"]["open"] == 0, 15, "the tunnel counted closed")
    third, head3 = connect(daemon, f"{tls.host}:443")
    third.close()
    assert head3.startswith(b"HTTP/1.1 200"), head3
    assert "idle for" in daemon.log_text()


def test_max_tunnels_zero_refuses_connect(tls_factory, daemon_factory) -> None:
    tls = tls_factory()
    daemon = daemon_factory("--allowed-mirrors", f"*,{tls.host}", "--max-tunnels", "0")
    sock, head = connect(daemon, f"{tls.host}:443")
    sock.close()
    assert head.startswith(b"HTTP/1.1 503 "), head


# ---- https mirrors fetched, cached and shared by the daemon -------------------------------------
def test_tls_mirror_in_proxy_form_is_fetched_over_https_cached_and_shared(
    repo: Repo, ca: TestCA, tls_factory, daemon_factory, tmp_path: Path
) -> None:
    tls = tls_factory()
    args = ("--allowed-mirrors", f"*,{tls.host}", "--tls-mirrors", tls.host, "--ca-file")
    daemon = daemon_factory(*args, str(ca.ca_pem))
    line = repo.sources_line(f"http://{tls.host}/debian")
    first = AptClient(tmp_path / "apt1", line, proxy=daemon.url + "/")
    first.update()
    first.install_download_only("dt-tool")
    assert any(p.endswith("/InRelease") for p in tls.paths())  # nginx speaks only TLS
    snap = status(daemon)
    assert [(s["mirror"], s["trust"]) for s in snap["suites"]] == [(tls.host, "verified")]
    assert [s["mirror"] for s in snap["swarms"]] == [tls.host]
    deb = repo.package("dt-tool")
    cached = daemon.cache_dir / tls.host / "debian" / deb.filename
    assert cached.is_file() and wait_until(lambda: cached.stat().st_size == deb.size, 10)
    requests_before = len(tls.paths())
    second = AptClient(tmp_path / "apt2", line, proxy=daemon.url + "/")
    second.update()
    second.install_download_only("dt-tool")
    assert second.downloaded_sha256() == first.downloaded_sha256()
    fetched_again = [p for p in tls.paths()[requests_before:] if p.endswith(".deb")]
    assert fetched_again == [], fetched_again
    assert snap["tunnels"]["opened"] == 0


def test_path_form_host_443_is_https(
    repo: Repo, ca: TestCA, tls_factory, daemon_factory, tmp_path: Path
) -> None:
    tls = tls_factory()
    daemon = daemon_factory("--allowed-mirrors", f"*,{tls.host}", "--ca-file", str(ca.ca_pem))
    url = f"{daemon.url}/{tls.host}:443/debian"
    apt = AptClient(tmp_path / "apt", repo.sources_line(url))
    apt.update()
    apt.install_download_only("dt-base")
    assert any(p.endswith("dt-base_1.0-1_" + repo.arch + ".deb") for p in tls.paths())
    assert (
        daemon.cache_dir / f"{tls.host}:443" / "debian" / repo.package("dt-base").filename
    ).is_file()


def test_tls_failures_are_502_with_the_reason(
    repo: Repo, ca: TestCA, tls_factory, daemon_factory, tmp_path: Path
) -> None:
    good = tls_factory()
    wrong_name = tls_factory(san="IP:192.0.2.1")  # a certificate for another address
    hosts = f"{good.host},{wrong_name.host}"
    rel = repo.index_rel(repo.inrelease_path)
    # no --ca-file: the test CA is in no system store
    untrusting = daemon_factory("--allowed-mirrors", f"*,{hosts}", "--tls-mirrors", hosts)
    code, reason, body = get(untrusting, f"/{good.host}/debian/{rel}")
    assert code == 502 and reason.startswith("Bad Gateway (TLS: certificate verify failed"), reason
    assert b"TLS failure" in body
    trusting = daemon_factory(
        "--allowed-mirrors", f"*,{hosts}", "--tls-mirrors", hosts, "--ca-file", str(ca.ca_pem)
    )
    code, reason, _ = get(trusting, f"/{wrong_name.host}/debian/{rel}")
    assert (code, reason) == (502, "Bad Gateway (TLS: certificate does not match the host name)")
    code, _, body = get(trusting, f"/{good.host}/debian/{rel}")
    assert (code, body) == (200, repo.inrelease_path.read_bytes())
    # apt prints the reason
    apt = AptClient(
        tmp_path / "apt",
        repo.sources_line(f"http://{good.host}/debian"),
        proxy=untrusting.url + "/",
    )
    result = apt.update(check=False)
    assert "502  Bad Gateway (TLS: certificate verify failed" in result.stdout + result.stderr


def test_ca_file_that_is_no_certificate_stops_the_daemon(daemon_factory, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    daemon = daemon_factory("--ca-file", str(bogus), start=False)
    with pytest.raises(Exception, match="ca-file"):
        daemon.start(timeout=10)


# ---- not an open fetcher ------------------------------------------------------------------------
def test_local_services_are_never_reached_in_any_spelling(
    secret: MirrorServer, daemon_factory
) -> None:
    daemon = daemon_factory()  # the fixture's --allowed-mirrors: *, 127.0.0.1 ... 127.0.0.9
    port = secret.port
    archive_path = "debian/dists/x/InRelease"
    forbidden = [
        f"/{SECRET_HOST}:{port}/secret.txt",  # the request: no archive file
        f"/{SECRET_HOST}:{port}/{archive_path}",
        f"http://{SECRET_HOST}:{port}/{archive_path}",
        f"/2130706691:{port}/{archive_path}",  # 127.0.1.3 in decimal
        f"/0x7f000103:{port}/{archive_path}",
        f"/127.1.3:{port}/{archive_path}",
        f"/0177.0.1.3:{port}/{archive_path}",
        f"/[::ffff:{SECRET_HOST}]:{port}/{archive_path}",
        f"/[::ffff:7f00:103]:{port}/{archive_path}",
        f"/[::1]:{port}/{archive_path}",
        f"/[0:0:0:0:0:0:0:1]:{port}/{archive_path}",
        f"/localhost:{port}/{archive_path}",  # a name resolving to loopback
        f"/127.0.0.10:{daemon.port}/{archive_path}",  # the daemon itself
        f"/169.254.169.254/{archive_path}",  # link-local (cloud metadata)
        f"/0.0.0.0:{port}/{archive_path}",
        f"/[fe80::1]:{port}/{archive_path}",
    ]
    for target in forbidden:
        code, reason, body = get(daemon, target)
        assert code == 403, (target, code, body[:200])
        assert reason.startswith("Forbidden ("), (target, reason)
        assert SECRET not in body
    assert secret.records() == []
    assert not any(daemon.cache_dir.rglob("InRelease")) and not any(daemon.cache_dir.rglob("*.txt"))


def test_redirects_to_local_services_are_refused(
    repo: Repo, secret: MirrorServer, mirror, daemon_factory
) -> None:
    daemon = daemon_factory()
    port = secret.port
    for i, location in enumerate(
        [
            f"http://{SECRET_HOST}:{port}/debian/dists/x/InRelease",
            f"http://2130706691:{port}/debian/dists/x/InRelease",
            f"http://[::ffff:{SECRET_HOST}]:{port}/debian/dists/x/InRelease",
            f"http://localhost:{port}/debian/dists/x/InRelease",
        ]
    ):
        path = f"/debian/dists/r{i}/InRelease"
        mirror.fault(path, "redirect", location=location)
        code, reason, body = get(daemon, f"/{mirror.address}{path}")
        assert code in (403, 502), (location, code, reason)
        assert SECRET not in body
    assert secret.records() == []
    assert "refusing to connect" in daemon.log_text() or "not allowed" in daemon.log_text()


def test_loopback_mirrors_need_naming_and_then_work(
    repo: Repo, secret: MirrorServer, daemon_factory
) -> None:
    rel = f"/{SECRET_HOST}:{secret.port}/debian/dists/x/InRelease"
    wildcard = daemon_factory("--allowed-mirrors", "*,127.0.1.*")  # wildcards never suffice
    assert get(wildcard, rel)[0] == 403
    assert secret.records() == []
    by_network = daemon_factory("--allowed-mirrors", "127.0.1.0/24")
    code, _, body = get(by_network, rel)
    assert (code, body) == (200, SECRET)
    by_name = daemon_factory("--allowed-mirrors", f"{SECRET_HOST}:{secret.port}")
    assert get(by_name, rel)[0] == 200
    other_port = f"/{SECRET_HOST}:{free_port(SECRET_HOST)}/debian/dists/x/InRelease"
    assert get(by_name, other_port)[0] == 403  # another port is another mirror


def test_own_non_loopback_address_is_refused(daemon_factory, tmp_path: Path) -> None:
    own = _own_address()
    if own is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    www = tmp_path / "own"
    (www / "debian" / "dists" / "x").mkdir(parents=True)
    (www / "debian" / "dists" / "x" / "InRelease").write_bytes(SECRET)
    server = MirrorServer(www, prefix="/", host=own).start()
    try:
        daemon = daemon_factory()
        code, reason, body = get(daemon, f"/{own}:{server.port}/debian/dists/x/InRelease")
        assert code == 403 and "Forbidden" in reason and SECRET not in body
        assert server.records() == []
        assert "an address of this machine" in body.decode()
    finally:
        server.stop()


def _own_address() -> str | None:
    """A non-loopback IPv4 address of this machine (from the kernel's own table)."""
    try:
        raw = Path("/proc/net/fib_trie").read_text()
    except OSError:
        return None
    lines = raw.splitlines()
    for i, line in enumerate(lines):
        if "/32 host LOCAL" in line and i > 0:
            address = lines[i - 1].split()[-1]
            if not address.startswith("127."):
                return address
    return None


def test_raw_connect_bytes_do_not_reach_an_unnamed_tls_host(tls_factory, daemon_factory) -> None:
    """A CONNECT that smuggles a request in the same packet: refused, nothing relayed."""
    tls = tls_factory()
    daemon = daemon_factory("--allowed-mirrors", "*")
    raw = raw_exchange(
        daemon.bind,
        daemon.port,
        f"CONNECT {tls.host}:443 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n".encode(),
    )
    assert raw.startswith(b"HTTP/1.1 403 "), raw[:200]
    assert tls.paths() == []
