"""The option table drives the CLI and the config file, with the documented precedence."""

import subprocess
import sys
from pathlib import Path

import pytest

from debtorrent.cli import parse_args, usage
from debtorrent.config import OPTIONS, load_config
from debtorrent.errors import ConfigError

BIN = Path(__file__).resolve().parents[2] / "bin" / "debtorrent"


def test_every_option_is_in_the_usage_text():
    text = usage()
    for opt in OPTIONS:
        assert f"--{opt.name}=" in text
        if opt.default:
            assert f"(default: {opt.default})" in " ".join(text.split())


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    config = load_config({})
    assert config.port == 9988 and config.bind == "127.0.0.1"
    assert config.cache_dir == str(tmp_path / "debtorrent")
    assert config.client_allowed("127.0.0.5") and config.client_allowed("::1")
    assert not config.client_allowed("10.0.0.1")
    assert config.mirror_allowed("deb.example.org")


def test_precedence_defaults_file_cli(tmp_path):
    conf = tmp_path / "d.conf"
    conf.write_text(
        "[debtorrent]\nport = 7000\nlog_level = debug\nallowed-mirrors = *.example.org\n"
    )
    config = parse_args(["-c", str(conf), "--port", "7001"])
    assert config.port == 7001  # command line beats the file
    assert config.log_level == "debug"  # file beats the default (underscore accepted)
    assert config.mirror_allowed("deb.example.org:8080")
    assert not config.mirror_allowed("evil.example.com")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[debtorrent]\nport = abc\n", "port"),
        ("[debtorrent]\nbogus = 1\n", "bogus"),
        ("[other]\nport = 1\n", "other"),
        ("port = 1\n", "not a valid config file"),
        ("[debtorrent]\nallowed-clients = 300.1.1.1\n", "allowed-clients"),
    ],
)
def test_bad_config_file_names_the_key(tmp_path, text, needle):
    conf = tmp_path / "d.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config({"config": str(conf)})


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--port", "0"], "--port"),
        (["--http-timeout", "-1"], "--http-timeout"),
        (["--bogus"], "--bogus"),
        (["--log-level", "loud"], "--log-level"),
        (["-c", "/nonexistent/x.conf"], "/nonexistent/x.conf"),
    ],
)
def test_bad_command_line_exits_2_with_one_line(args, needle):
    proc = subprocess.run(
        [sys.executable, str(BIN), *args], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_version():
    proc = subprocess.run(
        [sys.executable, str(BIN), "--version"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0 and proc.stdout.startswith("debtorrent ")
