"""Fixtures shared by the whole suite: real repo, mirror, apt-get, opentracker, daemons.

Everything a fixture starts (threads, processes) is stopped in its teardown, and every
wait is bounded. Fixtures that need a Debian tool skip with the tool's name when missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.apt import AptClient
from tests.fixtures.daemon import Daemon
from tests.fixtures.mirror import MirrorServer
from tests.fixtures.net import loopback_host
from tests.fixtures.netns import lan_factory  # noqa: F401  (the test LAN fixture)
from tests.fixtures.repo import Repo, build_repo
from tests.fixtures.tracker import Tracker

REPO_TOOLS = ("dpkg-deb", "gpg", "gpgconf", "gpgv", "lz4", "zstd")


def require_tools(*tools: str) -> None:
    """Skip the current test when a Debian tool it needs is not installed."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages; `make debs` installs them)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    is_root = os.geteuid() == 0
    live = os.environ.get("DEBTORRENT_LIVE") == "1"
    for item in items:
        if item.get_closest_marker("root") and not is_root:
            item.add_marker(pytest.mark.skip(reason="needs root"))
        if item.get_closest_marker("live") and not live:
            item.add_marker(pytest.mark.skip(reason="live test: set DEBTORRENT_LIVE=1"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach each started daemon's log tail to a failing test's report."""
    rep = yield
    if rep.failed and rep.when in ("setup", "call"):
        for d in getattr(item, "dt_daemons", []):
            rep.sections.append((f"{d.name} log tail ({d.url})", d.log_tail()))
    return rep


# ---- repository and mirror ------------------------------------------------------------------
@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """The session's repository. Read-only: use ``fresh_repo`` to change packages."""
    require_tools(*REPO_TOOLS)
    return build_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture
def fresh_repo(repo: Repo, tmp_path: Path) -> Repo:
    """A private clone of ``repo`` (pool hard-linked) that a test may update/re-sign."""
    return repo.clone(tmp_path / "repo")


@pytest.fixture
def mirror_factory(repo: Repo) -> Iterator:
    """``mirror_factory(root=None, host="127.0.0.1", **opts) -> MirrorServer`` (started)."""
    started: list[MirrorServer] = []

    def make(root: Path | None = None, host: str = "127.0.0.1", **opts) -> MirrorServer:
        m = MirrorServer(root or repo.root, host=host, **opts)
        started.append(m)
        return m.start()

    yield make
    for m in started:
        m.stop()


@pytest.fixture
def mirror(mirror_factory) -> MirrorServer:
    """The session repo served at ``http://127.0.0.1:<port>/debian``."""
    return mirror_factory()


# ---- apt ------------------------------------------------------------------------------------
class AptFactory:
    """Makes sandboxed apt clients under the test's tmp dir."""

    def __init__(self, base: Path, repo: Repo) -> None:
        self.base = base
        self.repo = repo
        self.n = 0

    def _dir(self) -> Path:
        self.n += 1
        return self.base / f"apt{self.n}"

    def direct(self, mirror: MirrorServer, repo: Repo | None = None, **kw) -> AptClient:
        return AptClient.direct(self._dir(), repo or self.repo, mirror.url, **kw)

    def path_form(
        self, daemon: Daemon, mirror: MirrorServer, repo: Repo | None = None, **kw
    ) -> AptClient:
        return AptClient.path_form(self._dir(), repo or self.repo, daemon.url, mirror.address, **kw)

    def proxy_form(
        self, daemon: Daemon, mirror: MirrorServer, repo: Repo | None = None, **kw
    ) -> AptClient:
        return AptClient.proxy_form(
            self._dir(), repo or self.repo, daemon.url, mirror.address, **kw
        )


@pytest.fixture
def apt_factory(tmp_path: Path, repo: Repo) -> AptFactory:
    require_tools("apt-get")
    return AptFactory(tmp_path, repo)


# ---- daemons --------------------------------------------------------------------------------
@pytest.fixture
def daemon_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """``daemon_factory(*extra_args, bind=None, port=None, cache_dir=None, peer_port=None,
    start=True, timeout=15.0) -> Daemon``.

    Each daemon gets its own 127.0.0.(10+i) address (apt and peer side), free ports and
    directory; all are stopped at teardown, and their log tails are added to the report
    of a failing test.
    """
    started: list[Daemon] = []
    request.node.dt_daemons = started

    def make(
        *extra_args: str,
        bind: str | None = None,
        port: int | None = None,
        cache_dir: Path | None = None,
        peer_port: int | None = None,
        start: bool = True,
        timeout: float = 15.0,
    ) -> Daemon:
        i = len(started)
        d = Daemon(
            tmp_path / f"daemon{i}",
            bind=bind or loopback_host(10 + i),
            port=port,
            cache_dir=cache_dir,
            peer_port=peer_port,
            extra_args=extra_args,
            name=f"daemon{i}",
        )
        started.append(d)
        return d.start(timeout=timeout) if start else d

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def daemon(daemon_factory) -> Daemon:
    """One daemon with default options (its apt side at ``daemon.url``)."""
    return daemon_factory()


# ---- tracker --------------------------------------------------------------------------------
@pytest.fixture
def tracker_factory(tmp_path: Path) -> Iterator:
    """``tracker_factory(host="127.0.0.1") -> Tracker`` (started, stopped at teardown)."""
    require_tools("opentracker")
    started: list[Tracker] = []

    def make(host: str = "127.0.0.1") -> Tracker:
        t = Tracker(tmp_path / f"tracker{len(started)}", host=host)
        started.append(t)
        return t.start()

    yield make
    for t in started:
        t.stop()


@pytest.fixture
def tracker(tracker_factory) -> Tracker:
    return tracker_factory()
