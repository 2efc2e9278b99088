"""Configuration and state hygiene as the man pages promise them (issue 14).

- an existing cache directory the daemon cannot write: exit 1 with the reason (shown
  with a read-only bind mount in a private mount namespace, since root may write
  anywhere else; the mount ends with the namespace);
- root with a cache or state directory that belongs to another user: refused, exit 1,
  saying why and what to run instead;
- a checkpoint written by root into another user's state directory is that user's;
- ``key = value ; comment`` in the config file is the value alone.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from debtorrent.state import State
from tests.fixtures.daemon import BIN
from tests.fixtures.net import free_port

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def run(
    *args: str, prefix: tuple[str, ...] = (), timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, sys.executable, str(BIN), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def daemon_args(tmp_path: Path, cache: Path) -> list[str]:
    return [
        "-c",
        "/dev/null",
        "--bind",
        "127.0.0.1",
        "--port",
        str(free_port("127.0.0.1")),
        "--peer-bind",
        "127.0.0.1",
        "--peer-port",
        str(free_port("127.0.0.1")),
        "--cache-dir",
        str(cache),
        "--state-dir",
        str(tmp_path / "state"),
    ]


@root_only
def test_an_existing_cache_dir_that_cannot_be_written_exits_1(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    cache = tmp_path / "cache"
    cache.mkdir()
    args = " ".join(f"'{a}'" for a in daemon_args(tmp_path, cache))
    script = f"mount --bind -o ro '{cache}' '{cache}' && exec '{sys.executable}' '{BIN}' {args}"
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"cache directory {cache} is not writable: Read-only file system" in result.stderr
    assert "Traceback" not in result.stderr


@root_only
def test_root_refuses_the_service_users_directories(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(cache, nobody.pw_uid, nobody.pw_gid)
    result = run(*daemon_args(tmp_path, cache))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"debtorrent: error: refusing to run as root: cache-dir {cache} belongs to user "
        f"nobody, and files root writes there would be unusable to it; run the daemon as "
        f"that user (runuser -u nobody -- debtorrent ...) or start the service "
        f"(systemctl start debtorrent)"
    )
    assert list(cache.iterdir()) == []  # nothing written


@root_only
def test_a_checkpoint_root_writes_belongs_to_the_state_dirs_owner(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(state_dir, nobody.pw_uid, nobody.pw_gid)
    State(str(state_dir)).save(Counter(mirror=5))
    saved = state_dir / "state.json"
    assert (saved.stat().st_uid, saved.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
    again = State(str(state_dir))
    again.load()
    assert again.base["mirror"] == 5


def test_an_inline_comment_is_not_part_of_the_value(tmp_path: Path) -> None:
    conf = tmp_path / "d.conf"
    cache = tmp_path / "the cache"
    conf.write_text(
        f"[debtorrent]\ncache-dir = {cache}   ; on the big disk\nport = 9999 # not 9988\n"
    )
    result = run("status", "--json", "-c", str(conf), "--bind", "127.0.0.1")
    assert result.returncode == 3, result.stderr  # no daemon there: the offline summary
    assert f'"cache_dir": "{cache}"' in result.stdout
    assert '"url": "http://127.0.0.1:9999"' in result.stdout
    assert not list(tmp_path.glob("*;*")) and not list(tmp_path.glob("*#*"))


# ---- the Debian package's apt proxy detection script ---------------------------------------
DETECT = Path(__file__).resolve().parents[2] / "debian" / "apt-proxy-detect"


def detect(conf: Path, url: str) -> str:
    """What apt reads from the script (run as apt runs it: its shebang, Debian's python3)."""
    result = subprocess.run(
        [str(DETECT), url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "DEBTORRENT_CONF": str(conf)},
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.count("\n") == 1
    return result.stdout.strip()


def test_the_detection_script_follows_the_daemons_health(
    repo, mirror, daemon_factory, apt_factory, tmp_path: Path
) -> None:
    daemon = daemon_factory("--http-timeout", "2")
    conf = tmp_path / "debtorrent.conf"
    conf.write_text(
        f"[debtorrent]\nbind = {daemon.bind}  ; as the package's file has it\n"
        f"port = {daemon.port}\ncache-dir = /var/cache/debtorrent\n"
    )
    assert detect(conf, "http://deb.example.org/debian/") == f"http://{daemon.bind}:{daemon.port}/"
    assert detect(conf, "https://deb.example.org/debian/") == "DIRECT"
    # proxy form through what the script said: apt works
    apt_factory.proxy_form(daemon, mirror).update()
    mirror.stop()  # every mirror failing: the daemon cannot serve new files
    apt_factory.proxy_form(daemon, mirror).update(check=False)
    assert detect(conf, "http://deb.example.org/debian/") == "DIRECT"
    daemon.stop()
    assert detect(conf, "http://deb.example.org/debian/") == "DIRECT"
    conf.write_text("not an ini file at all\n")
    assert detect(conf, "http://deb.example.org/debian/") == "DIRECT"
