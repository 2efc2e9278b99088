"""Acceptance of the Debian package: build, lint, install, run as the service, purge.

This installs ``debtorrent_*.deb`` into the machine the tests run on, so it needs root,
and it is skipped when a ``debtorrent`` package is already installed (it never replaces
an administrator's). The module fixture purges the package again at the end, whatever
failed, and removes what the purge keeps on purpose (the cache and the system user)
when they did not exist before the test. The tests run in file order; the last one is
the purge itself.

The daemon is started the way ``debtorrent.service`` starts it: ``/usr/bin/debtorrent -c
/etc/debtorrent.conf`` as user ``debtorrent`` (with ``runuser``, as there is no systemd
here), with an empty environment and ``/`` as working directory, so it runs on Debian's
own Python modules and nothing from the checkout or its venv.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from debtorrent import __version__
from tests.fixtures.net import free_port, port_open, wait_for_http

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tools" / "build-deb.sh"
PACKAGE = "debtorrent"
USER = "debtorrent"
CONFFILE = Path("/etc/debtorrent.conf")
CACHE_DIR = Path("/var/cache/debtorrent")
STATE_DIR = Path("/var/lib/debtorrent")
LOG_DIR = Path("/var/log/debtorrent")
UNIT = Path("/lib/systemd/system/debtorrent.service")
APT_DROPIN = Path("/etc/apt/apt.conf.d/20debtorrent-proxy")
DETECT = Path("/usr/lib/debtorrent/apt-proxy-detect")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: What the package installs outside /usr/lib/python3: all of it must go on purge.
SHIPPED = [
    Path("/usr/bin/debtorrent"),
    CONFFILE,
    UNIT,
    Path("/etc/logrotate.d/debtorrent"),
    Path("/usr/share/doc/debtorrent"),
    Path("/usr/share/man/man1/debtorrent.1.gz"),
    Path("/usr/share/man/man5/debtorrent.conf.5.gz"),
    Path("/usr/lib/python3/dist-packages/debtorrent"),
    DETECT,
    APT_DROPIN,  # written by postinst, not shipped, but it must go all the same
]

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs the .deb into this system: needs root"),
    pytest.mark.skipif(
        shutil.which("dpkg-buildpackage") is None or shutil.which("apt-get") is None,
        reason="needs a Debian system (dpkg-buildpackage, apt-get)",
    ),
]


def run(
    cmd: Sequence[str], *, timeout: float = 60, check: bool = True, **kw
) -> subprocess.CompletedProcess:
    """Run ``cmd``, output captured; on failure (``check``) the output is in the message."""
    result = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} -> {result.returncode}\n--- stdout\n{result.stdout}"
            f"\n--- stderr\n{result.stderr}"
        )
    return result


def package_status() -> str:
    result = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", PACKAGE], check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def user_exists() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return True


def debian_only_sources(workdir: Path) -> list[str]:
    """apt options that leave only the machine's Debian sources (Origin: Debian).

    The lists apt already has for them are reused: nothing is fetched unless they are
    missing. Other repositories this machine may use are invisible to the install.
    """
    fields = "$(TARGET_OF) $(REPO_URI) $(RELEASE) $(COMPONENT)"
    query = ["apt-get", "indextargets", "--format", fields, "Origin: Debian", "Target-Of: deb"]
    targets = run(query).stdout.split("\n")
    lines = sorted({line.strip() for line in targets if line.strip()})
    assert lines, "this machine's apt has no Debian sources"
    sources = workdir / "debian.list"
    sources.write_text("\n".join(lines) + "\n")
    parts = workdir / "sources.list.d"
    parts.mkdir(exist_ok=True)
    return [f"-oDir::Etc::SourceList={sources}", f"-oDir::Etc::SourceParts={parts}"]


def apt_get(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    return run(["apt-get", "-q", "-oDPkg::Lock::Timeout=120", *args], timeout=timeout, env=env)


# --- the package, built, installed and finally purged ------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb, built by the same script as ``make deb`` (unit tests included)."""
    if package_status().startswith("i"):
        pytest.skip("a debtorrent package is already installed here: not replacing it")
    out = tmp_path_factory.mktemp("deb")
    result = run([str(BUILD), str(out)], timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (deb,) = out.glob(f"{PACKAGE}_{__version__}_all.deb")
    return deb


@pytest.fixture(scope="module")
def installed(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The package installed with ``apt-get install ./…deb``; purged at the end, always."""
    had_user, had_cache = user_exists(), CACHE_DIR.exists()
    only_debian = debian_only_sources(tmp_path_factory.mktemp("apt"))
    try:
        apt_get(*only_debian, "install", "-y", str(built))
        yield built
    finally:
        if package_status():
            apt_get("purge", "-y", PACKAGE)
        if not had_cache:
            shutil.rmtree(CACHE_DIR, ignore_errors=True)
        if not had_user and user_exists():
            run(["deluser", "--system", "--quiet", USER], check=False)


# --- the daemon, started as the unit starts it ------------------------------------------


def bindable(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as gevent's, SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Service:
    """``runuser -u debtorrent -- /usr/bin/debtorrent -c /etc/debtorrent.conf [args]``."""

    def __init__(self, workdir: Path, *args: str) -> None:
        # The ports of /etc/debtorrent.conf, unless something else here holds them.
        self.port = 9988 if bindable("127.0.0.1", 9988) else free_port("127.0.0.1")
        if self.port != 9988:
            args = (*args, f"--port={self.port}")
        if not bindable("0.0.0.0", 9989):
            args = (*args, f"--peer-port={free_port('0.0.0.0')}")
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = workdir / f"service-{self.port}.out"
        # the packaged config turns LSD and the DHT on: nothing may leave this machine
        args = (*args, "--discovery=pex", "--dht-bootstrap=none")
        command = ["/usr/bin/debtorrent", "-c", str(CONFFILE), *args]
        with open(self.output, "wb") as out:
            self.runuser = subprocess.Popen(
                ["runuser", "-u", USER, "--", *command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
                env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
            )
        try:
            wait_for_http("127.0.0.1", self.port, timeout=20, alive=self.alive)
        except (TimeoutError, RuntimeError) as exc:
            self.kill()
            raise AssertionError(f"{exc}\n--- output\n{self.log()}") from None
        self.pid = self._daemon_pid()

    def alive(self) -> bool:
        return self.runuser.poll() is None

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def _daemon_pid(self) -> int:
        """The daemon itself: runuser forks it and waits, so it is runuser's child."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.runuser.pid:
                return int(entry.name)
        raise AssertionError(f"no child of runuser {self.runuser.pid}\n{self.log()}")

    def uid(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM to the daemon (not runuser, which would re-raise it); its exit status."""
        self.signal(signal.SIGTERM)
        try:
            return self.runuser.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"no exit {timeout} s after SIGTERM\n{self.log()}") from None

    def kill(self) -> None:
        if self.alive():
            for pid in (getattr(self, "pid", None), self.runuser.pid):
                if pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self.runuser.wait(timeout=10)


@pytest.fixture
def service_factory(installed: Path, tmp_path: Path) -> Iterator:
    started: list[Service] = []

    def make(*args: str) -> Service:
        started.append(Service(tmp_path, *args))
        return started[-1]

    yield make
    for service in started:
        service.kill()


# --- the tests, in order ------------------------------------------------------------------


def test_lintian_reports_no_error(built: Path):
    if shutil.which("lintian") is None:
        apt_get("install", "-y", "--no-install-recommends", "lintian")
    changes = next(built.parent.glob("*.changes"))
    result = run(["lintian", "--fail-on", "error", str(changes)], timeout=180, check=False)
    tags = [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:", "I:")]
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [tag for tag in tags if tag.startswith("E:")], tags


def test_installed_files_user_and_directories(installed: Path):
    user = pwd.getpwnam(USER)
    assert user.pw_uid < 1000 and user.pw_dir == str(STATE_DIR)
    assert user.pw_shell == "/usr/sbin/nologin"
    assert grp.getgrgid(user.pw_gid).gr_name == USER
    expected = {
        STATE_DIR: (USER, USER, 0o750),
        CACHE_DIR: (USER, USER, 0o755),
        LOG_DIR: (USER, "adm", 0o2750),
    }
    for path, (owner, group, mode) in expected.items():
        st = path.stat()
        found = (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name)
        assert (*found, stat.S_IMODE(st.st_mode)) == (owner, group, mode), path
    for path in SHIPPED:
        assert path.exists(), path
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE]).stdout
    assert str(CONFFILE) in conffiles
    assert CONFFILE.read_text() == (ROOT / "debian" / "debtorrent.conf").read_text()
    env = {"PATH": SYSTEM_PATH}
    version = run(["runuser", "-u", USER, "--", "debtorrent", "--version"], env=env, cwd="/")
    assert version.stdout.strip() == f"debtorrent {__version__}"


def test_unit_verifies(installed: Path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    result = run(["systemd-analyze", "verify", str(UNIT)], timeout=60, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.fixture
def service_keyring(repo) -> Iterator[Path]:
    """The fixture archive's key where the service user can read it (pytest's tmp is
    root's only): the daemon trusts it as apt's own keys, so its index becomes a swarm."""
    directory = Path(tempfile.mkdtemp(prefix="debtorrent-keyring-"))
    try:
        directory.chmod(0o755)
        copy = directory / repo.keyring.name
        shutil.copyfile(repo.keyring, copy)
        copy.chmod(0o644)
        yield copy
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_service_answers_apt_update_and_stops_on_sigterm(
    service_factory, repo, mirror, apt_factory, service_keyring
):
    # the fixture mirror listens on loopback, which the daemon reaches only when named;
    # its archive key is trusted as apt's own keys are, so its index becomes a swarm
    service = service_factory("--allowed-mirrors=*,127.0.0.1", f"--keyring={service_keyring}")
    assert pwd.getpwuid(service.uid()).pw_name == USER
    daemon = SimpleNamespace(url=service.url)
    path_form = apt_factory.path_form(daemon, mirror)
    path_form.update()
    assert path_form.lists(), "apt-get update through the daemon left no lists"
    proxy_form = apt_factory.proxy_form(daemon, mirror)
    proxy_form.update()
    name = repo.package_names()[0]
    path_form.install_download_only(name)
    assert repo.package(name).sha256 in path_form.downloaded_sha256().values()
    check_status_fields_documented(service.url)
    cached = [p for p in CACHE_DIR.rglob("*") if p.is_file()]
    assert cached, f"nothing cached under {CACHE_DIR}\n{service.log()}"
    assert {pwd.getpwuid(p.stat().st_uid).pw_name for p in cached} == {USER}
    assert service.stop() == 0, service.log()
    assert not port_open("127.0.0.1", service.port)


def check_status_fields_documented(url: str) -> None:
    """Every field of /status.json is described in STATUS of debtorrent(1), and back."""
    with urllib.request.urlopen(f"{url}/status.json", timeout=10) as answer:
        status = json.load(answer)
    fields = set(status) | set(status["totals"])
    fields |= {key for swarm in status["swarms"] for key in swarm}
    page = (ROOT / "man" / "debtorrent.1").read_text()
    section = page.split("\n.SH STATUS\n", 1)[1].split("\n.SH ", 1)[0]
    documented = set(re.findall(r"^\.TP\n\.B (\S+)$", section, re.MULTILINE))
    if not status["swarms"]:  # nothing to compare the per-swarm fields with
        documented -= {"name", "info_hash", "files", "pieces", "pieces_had", "peers"}
        documented -= {"downloaded", "uploaded"}
    assert sorted(fields - documented) == [], "undocumented in debtorrent(1) STATUS"
    assert sorted(documented - fields) == [], "documented but not in /status.json"


def test_apt_needs_no_line_goes_through_the_daemon_and_direct_without_it(
    service_factory, repo, mirror, apt_factory
):
    """The package's drop-in is the whole set-up: apt with plain sources (the mirror's own
    address) and no proxy line goes through the running daemon, and straight to the
    mirror once the daemon is stopped."""
    assert APT_DROPIN.is_file() and os.access(DETECT, os.X_OK)
    assert f'Acquire::http::Proxy-Auto-Detect "{DETECT}";' in APT_DROPIN.read_text()
    # the fixture mirror listens on loopback, which the daemon reaches only when named
    service = service_factory("--allowed-mirrors=*,127.0.0.1")
    if service.port != 9988:  # the script reads the port of /etc/debtorrent.conf
        pytest.skip("port 9988 is taken on this machine: the drop-in would find another")
    apt = apt_factory.direct(mirror)  # sources: http://<mirror>/debian ..., nothing else
    conf = apt.conf_path.read_text()
    apt.conf_path.write_text(conf.replace('Acquire::http::Proxy "DIRECT";\n', ""))
    assert "Proxy" not in apt.conf_path.read_text()
    # apt reads the installed drop-in itself (its sandboxed apt.conf.d links to it)
    (apt.root / "etc" / "apt.conf.d" / APT_DROPIN.name).symlink_to(APT_DROPIN)
    apt.update()
    name = repo.package_names()[0]
    apt.install_download_only(name)
    assert repo.package(name).sha256 in apt.downloaded_sha256().values()
    with urllib.request.urlopen(f"{service.url}/status.json", timeout=10) as answer:
        served = {r["class"]: r["count"] for r in json.load(answer)["requests"]}
    assert served.get("index", 0) >= 1 and served.get("package", 0) >= 1, served
    with urllib.request.urlopen(f"{service.url}/health", timeout=10) as answer:
        assert answer.read() == b"ok: serving\n"

    assert service.stop() == 0, service.log()
    before = len(mirror.records())
    apt.clean()
    apt.update()  # direct now: the script said DIRECT
    apt.install_download_only(name)
    assert repo.package(name).sha256 in apt.downloaded_sha256().values()
    assert any(r.path.endswith("/InRelease") for r in mirror.records()[before:])


def test_the_commands_find_the_service_without_options(service_factory):
    service = service_factory()
    if service.port != 9988:
        pytest.skip("port 9988 is taken on this machine: a bare command would ask it")
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
    status = run(["debtorrent", "status"], env=env, cwd="/")
    assert "at http://127.0.0.1:9988/: up " in status.stdout and ", serving" in status.stdout
    verify = run(["debtorrent", "cache", "verify"], env=env, cwd="/")  # as root, on its cache
    assert "0 bad" in verify.stdout, verify.stdout
    assert service.stop() == 0
    offline = run(["debtorrent", "status"], env=env, cwd="/", check=False)
    assert offline.returncode == 3 and f"Cache:      {CACHE_DIR}:" in offline.stdout
    # root with the system configuration: refused, with the reason
    refused = run(["debtorrent", "-c", str(CONFFILE)], env=env, cwd="/", check=False)
    assert refused.returncode == 1
    assert f"refusing to run as root: cache-dir {CACHE_DIR} belongs to user {USER}" in (
        refused.stderr
    )


def test_sighup_reopens_the_log_file(service_factory):
    log_file = LOG_DIR / "debtorrent.log"
    service = service_factory(f"--log-file={log_file}")
    rotated = log_file.with_name("debtorrent.log.1")
    log_file.rename(rotated)
    service.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not log_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log_file.exists(), f"no new log file after SIGHUP\n{service.log()}"
    assert pwd.getpwuid(log_file.stat().st_uid).pw_name == USER
    assert service.stop() == 0, service.log()
    assert "stopped" in log_file.read_text()


@pytest.mark.parametrize(
    ("page", "title"), [("debtorrent", "DEBTORRENT(1)"), ("debtorrent.conf", "DEBTORRENT.CONF(5)")]
)
def test_man_shows_the_pages(installed: Path, page: str, title: str):
    env = {"PATH": SYSTEM_PATH, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MANPAGER": "cat"}
    shown = run(["man", "-P", "cat", page], env=env).stdout
    assert shown.splitlines()[0].startswith(title)
    assert "cache-dir" in shown


def test_remove_takes_the_apt_drop_in_then_purge_leaves_only_the_cache(installed: Path):
    uid = pwd.getpwnam(USER).pw_uid
    apt_get("remove", "-y", PACKAGE)
    assert not APT_DROPIN.exists() and not DETECT.exists()
    dump = run(["apt-config", "dump"]).stdout  # apt still reads its configuration
    assert "Proxy-Auto-Detect" not in dump
    assert CONFFILE.exists()  # a conffile: kept until purge
    apt_get("purge", "-y", PACKAGE)
    assert package_status() in ("", "un ", "pn ")
    assert [p for p in [*SHIPPED, STATE_DIR, LOG_DIR] if p.exists()] == []
    # Kept on purpose (README.Debian): the cache, and the user who owns it.
    assert CACHE_DIR.is_dir() and user_exists()
    where = ["/etc", "/var", "/usr", "/srv", "/opt", "/home", "/run"]
    skip_cache = ["-path", str(CACHE_DIR), "-prune", "-o"]
    owned = run(
        ["find", *where, "-xdev", *skip_cache, "-uid", str(uid), "-print"],
        timeout=120,
        check=False,
    ).stdout.split()
    assert owned == [], f"files of user {USER} left after purge: {owned[:20]}"
