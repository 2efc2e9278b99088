"""The status page builder, a pure function of a snapshot: layout and escaping.

:data:`SAMPLE` has every field ``/status.json`` has (the integration test
tests/integration/test_status.py checks a real daemon's snapshot against its shape).
The hostile tests put markup, quotes and ampersands into every leaf of it, numbers and
flags included, and parse the page: no element or attribute may come from the data, and
each hostile text must reach the reader as text.
"""

from __future__ import annotations

import copy
import html
from html.parser import HTMLParser
from typing import Any

import pytest

from debtorrent.statuspage import REFRESH, escape, human_bytes, render, sources_lines

NOW = 1_800_000_000.0

SAMPLE: dict[str, Any] = {
    "health": {"ok": True, "reason": "serving"},
    "mirrors": [
        {
            "host": "deb.example.org",
            "suites": [
                {
                    "root": "debian",
                    "suite": "bookworm",
                    "origin": "Debian",
                    "components": ["main"],
                }
            ],
            "failure": None,
            "failed_at": None,
        }
    ],
    "rates": {
        "upload": {"rate": 20_000, "limit": 1_000_000.0},
        "download": {"rate": 1_500_000, "limit": None},
        "mirror": {"rate": 0, "limit": None},
    },
    "cache_hits": 7,
    "cache_misses": 3,
    "version": "0.1.0",
    "uptime": 3725.5,
    "started": NOW - 3725.5,
    "peer_id": "-DT0100-abcdefghijkl",
    "peer_port": 9989,
    "connections": 1,
    "discovery": {
        "enabled": ["lsd", "dht", "pex"],
        "lan_only": False,
        "lsd": {
            "running": True,
            "interfaces": ["eth0"],
            "rounds": 3,
            "sent": 4,
            "received": 9,
            "heard": 2,
            "own": 4,
            "malformed": 1,
            "dropped": 2,
        },
        "dht": {
            "running": True,
            "node_id": "00112233445566778899aabbccddeeff00112233",
            "port": 9989,
            "nodes": 117,
            "good_nodes": 80,
            "replacement_nodes": 20,
            "stored_hashes": 12,
            "stored_peers": 30,
            "lookups": 42,
            "lookups_running": 1,
            "announces": 16,
            "peers_found": 5,
            "queries_in": 900,
            "queries_out": 700,
            "timeouts": 60,
            "malformed": 7,
            "rate_limited": 3,
        },
        "pex": {"sent": 4, "received": 3, "ignored": 0},
        "peers_by_source": {
            "tracker": 0,
            "dht": 0,
            "lsd": 1,
            "pex": 0,
            "static": 0,
            "incoming": 0,
        },
        "addresses_learnt": {"tracker": 0, "dht": 5, "lsd": 2, "pex": 3, "static": 0},
        "trackers": 0,
        "static_peers": 0,
        "peers_seen": 4,
        "hint": None,
    },
    "indexes_loading": 0,
    "totals": {
        "bytes_to_apt": 5_000_000,
        "bytes_from_peers": 3_000_000,
        "bytes_from_mirror": 1_000_000,
        "bytes_uploaded": 700_000,
        "peer_share": 0.75,
        "bans": 1,
        "protocol_errors": 2,
        "choke_rounds": 3,
    },
    "all_time": {
        "bytes_to_apt": 50_000_000,
        "bytes_from_peers": 30_000_000,
        "bytes_from_mirror": 10_000_000,
        "bytes_uploaded": 7_000_000,
        "peer_share": 0.75,
        "bans": 3,
        "protocol_errors": 4,
        "choke_rounds": 9,
    },
    "cache_bytes": 123_456_789,
    "cache_files": 321,
    "cache_counted": NOW - 12,
    "requests": [
        {"class": "index", "status": 200, "count": 3, "bytes": 9000},
        {"class": "package", "status": 200, "count": 5, "bytes": 4_000_000},
    ],
    "swarms": [
        {
            "name": "Debian_bookworm_main_binary-amd64",
            "info_hash": "0123456789abcdef0123456789abcdef01234567",
            "mirror": "deb.example.org",
            "index_date": "Sat, 10 Jun 2023 08:55:01 UTC",
            "files": 63000,
            "files_enabled": 1,
            "files_complete": 12,
            "seeding": False,
            "pieces": 409000,
            "pieces_had": 40,
            "peers": 1,
            "candidates": 3,
            "down_rate": 1_500_000,
            "up_rate": 20_000,
            "downloaded": 4_000_000,
            "uploaded": 700_000,
            "peer_list": [
                {
                    "address": "192.0.2.7:9989",
                    "client": "debtorrent 0.1.0",
                    "source": "tracker",
                    "outgoing": True,
                    "seed": False,
                    "pieces": 30,
                    "down_rate": 1_500_000,
                    "up_rate": 20_000,
                    "downloaded": 3_000_000,
                    "uploaded": 700_000,
                    "am_choking": False,
                    "am_interested": True,
                    "peer_choking": False,
                    "peer_interested": True,
                    "optimistic": False,
                    "snubbed": False,
                    "connected": 95.2,
                }
            ],
        }
    ],
    "downloads": [
        {
            "swarm": "Debian_bookworm_main_binary-amd64",
            "mirror": "deb.example.org",
            "path": "pool/main/l/linux/linux-image_6.1.0_amd64.deb",
            "size": 70_000_000,
            "done": 21_000_000,
            "source": "mirror",
            "waiting": 4.2,
        },
        {
            "swarm": None,
            "mirror": "deb.example.org",
            "path": "debian/dists/bookworm/main/i18n/Translation-en.bz2",
            "size": None,
            "done": 1000,
            "source": "mirror",
            "waiting": None,
        },
    ],
    "errors": [
        {"time": NOW - 30, "message": "banned peer 192.0.2.9: sent bad data", "count": 1},
        {"time": NOW - 90, "message": "fetch deb.example.org/x failed: 503", "count": 4},
    ],
    "suites": [
        {
            "mirror": "deb.example.org",
            "path": "debian/dists/bookworm",
            "origin": "Debian",
            "suite": "stable",
            "codename": "bookworm",
            "trust": "verified",
            "trusted": True,
            "reason": "good signature by 4D64FEC119C2029067D6E791F8D2585B8783D481",
            "signer": "4D64FEC119C2029067D6E791F8D2585B8783D481",
            "valid_until": None,
            "indexes": 1,
        },
        {
            "mirror": "deb.example.org",
            "path": "thirdparty/dists/stable",
            "origin": "Vendor",
            "suite": "stable",
            "codename": "stable",
            "trust": "no-key",
            "trusted": False,
            "reason": "signed by a key in no keyring (0123456789ABCDEF)",
            "signer": "",
            "valid_until": "Sat, 01 Jan 2028 00:00:00 UTC",
            "indexes": 0,
        },
    ],
    "tunnels": {
        "open": 1,
        "opened": 4,
        "refused": 2,
        "bytes_to_mirror": 9_000,
        "bytes_from_mirror": 2_000_000,
        "hosts": ["deb.example.org"],
        "hint": "https sources are tunnelled, not cached or shared: ...",
    },
}

HOSTILE = (
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "' onmouseover='alert(3)",
    "&amp; &lt;b&gt; & </td></tr></table>",
    "<!-- --><style>body{display:none}</style>",
)

#: Every element the page itself uses; data must never add another (or a script).
PAGE_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "p", "div",
    "section", "table", "thead", "tbody", "tr", "th", "td", "data", "progress", "details",
    "summary", "pre", "footer", "a",
}  # fmt: skip


class Page(HTMLParser):
    """What a browser would build: elements, attributes, and the text a reader sees."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.comments: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def leaves(data: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every leaf (not dicts or lists) of a snapshot."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in leaves(v, (*path, k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in leaves(v, (*path, i))]
    return [path]


def with_leaf(data: Any, path: tuple, value: Any) -> Any:
    out = copy.deepcopy(data)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def everywhere(data: Any, value: Any) -> Any:
    out = copy.deepcopy(data)
    for path in leaves(data):
        target = out
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return out


def check_safe(page_text: str, hostile: str | None = None) -> Page:
    page = Page(page_text)
    tags = {t for t, _ in page.tags}
    assert tags <= PAGE_TAGS, f"elements from data: {tags - PAGE_TAGS}"
    assert "script" not in tags and "img" not in tags
    for tag, attrs in page.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
    assert page.comments == [], "a comment opened from data"
    assert [t for t, _ in page.tags].count("style") == 1
    if hostile is not None:
        # the reader sees the hostile text itself, intact
        assert hostile in page.all_text or any(
            hostile in (v or "") for _, attrs in page.tags for v in attrs.values()
        )
    return page


# --- the page as it should look -------------------------------------------------------------
def test_sample_page_shows_every_section() -> None:
    text = render(SAMPLE, host="localhost:9988", now=NOW)
    page = check_safe(text)
    seen = page.all_text
    assert text.startswith("<!DOCTYPE html>")
    assert f'<meta http-equiv="refresh" content="{REFRESH}">' in text
    assert "<script" not in text
    assert "75.0 %" in seen  # the headline
    assert "Debian_bookworm_main_binary-amd64" in seen
    assert "Sat, 10 Jun 2023 08:55:01 UTC" in seen
    assert "0123456789abcdef0123456789abcdef01234567" in seen
    assert "63,000" in seen and "409000" not in seen  # files shown, pieces not
    assert "pool/main/l/linux/linux-image_6.1.0_amd64.deb" in seen
    assert "20.0 MiB / 66.8 MiB" in seen
    assert "apt waits 4 s" in seen
    assert "192.0.2.7:9989" in seen and "debtorrent 0.1.0" in seen
    assert "banned peer 192.0.2.9: sent bad data" in seen
    assert "Cache: 117.7 MiB in 321 files, counted at" in seen
    assert "deb http://localhost:9988/deb.example.org/debian bookworm main" in seen
    assert "deb http://localhost:9988/SECURITY-HOST/debian-security bookworm-security" in seen
    assert 'Acquire::http::Proxy "http://localhost:9988/";' in seen
    assert "7 hits, 3 misses (70.0 %)" in seen
    assert "fetch deb.example.org/x failed: 503 (\u00d74, the last shown)" in seen
    assert "976.6 KiB/s" in seen and "no limit" in seen  # the upload limit, the others
    assert "Not serving" not in seen and "No peer discovery" not in seen
    assert "1 h 2 min" in seen  # uptime
    assert "1 peer connection" in seen and ": 1 peer" in seen
    assert "Discovery: lsd, dht, pex." in seen
    assert "DHT: 117 nodes in the routing table (80 good), 42 lookups done" in seen
    assert "Local discovery on eth0: 3 announce rounds sent, 2 announces heard" in seen


def test_discovery_hint_and_stopped_mechanisms() -> None:
    snap = copy.deepcopy(SAMPLE)
    discovery = snap["discovery"]
    discovery["enabled"] = []
    discovery["lsd"]["running"] = discovery["dht"]["running"] = False
    discovery["hint"] = "No discovery is enabled and no tracker or peer is configured"
    page = check_safe(render(snap, host="h", now=NOW))
    assert "No discovery is enabled" in page.all_text
    assert "Discovery: none." in page.all_text
    assert "DHT:" not in page.all_text and "Local discovery on" not in page.all_text
    cells = {a.get("id") for t, a in page.tags if t == "td"}
    assert {f"peers-{s}" for s in ("lsd", "dht", "pex", "tracker", "static", "incoming")} <= cells


def test_exact_byte_counts_are_in_the_page() -> None:
    page = Page(render(SAMPLE, host="h", now=NOW))
    cells = {a.get("id"): a for t, a in page.tags if t == "td" and a.get("id")}
    assert "totals-bytes_from_peers" in cells and "all_time-bytes_from_mirror" in cells
    values = [a["value"] for t, a in page.tags if t == "data"]
    assert "3000000" in values and "10000000" in values


def test_peers_are_collapsed_by_default() -> None:
    page = Page(render(SAMPLE, host="h", now=NOW))
    details = [a for t, a in page.tags if t == "details"]
    assert len(details) == len(SAMPLE["swarms"])
    assert all("open" not in a for a in details)


def test_the_page_runs_nothing() -> None:
    page = Page(render(SAMPLE, host="h", now=NOW))
    for tag, attrs in page.tags:
        assert tag != "script"
        if tag == "a":
            assert attrs["href"] in ("/status.json", "/metrics", "/health")


def test_empty_daemon() -> None:
    empty = {**SAMPLE, "swarms": [], "downloads": [], "errors": [], "requests": []}
    empty["totals"] = dict.fromkeys(SAMPLE["totals"], 0)
    empty["cache_bytes"] = empty["cache_files"] = empty["cache_counted"] = None
    text = render(empty, host="h", now=NOW)
    seen = check_safe(text).all_text
    assert "No package fetched since the start yet." in seen
    assert "No swarm yet" in seen
    assert "Nothing is being downloaded." in seen
    assert "No error since the start." in seen
    assert "Cache: not counted yet." in seen


def test_hints_when_sharing_cannot_happen() -> None:
    """The discovery figures' hint is shown once, beside the share it explains."""
    hint = "No discovery is enabled and no tracker or peer is configured: <b>"
    alone = {**SAMPLE, "discovery": {**SAMPLE["discovery"], "hint": hint}}
    page = check_safe(render(alone, host="h", now=NOW))
    assert page.all_text.count("No discovery is enabled") == 1
    assert "<b>" in page.all_text  # escaped, shown as text
    quiet = {**SAMPLE, "discovery": {**SAMPLE["discovery"], "hint": None}}
    assert "sharing-hint" not in render(quiet, host="h", now=NOW)


def test_unhealthy_daemon_says_why() -> None:
    sick = {**SAMPLE, "health": {"ok": False, "reason": "cache disk full (/var/cache/x)"}}
    seen = check_safe(render(sick, host="h", now=NOW)).all_text
    assert "Not serving: cache disk full (/var/cache/x)." in seen


def test_sources_lines_for_every_mirror_and_no_security_template_when_used() -> None:
    both = copy.deepcopy(SAMPLE)
    both["mirrors"].append(
        {
            "host": "security.example.org",
            "suites": [
                {
                    "root": "debian-security",
                    "suite": "bookworm-security",
                    "origin": "Debian",
                    "components": ["main", "contrib"],
                }
            ],
            "failure": "refused connection",
            "failed_at": NOW - 5,
        }
    )
    assert sources_lines(both, "192.0.2.10:9988") == [
        "deb http://192.0.2.10:9988/deb.example.org/debian bookworm main",
        "deb http://192.0.2.10:9988/security.example.org/debian-security "
        "bookworm-security main contrib",
    ]


def test_missing_fields_do_not_break_the_page() -> None:
    check_safe(render({}, host="h", now=NOW))
    check_safe(render({"swarms": [{}], "downloads": [{}], "errors": [{}]}, host="h", now=NOW))


# --- hostile data -------------------------------------------------------------------------------
@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_text_in_every_field_at_once(hostile: str) -> None:
    text = render(everywhere(SAMPLE, hostile), host=hostile, now=NOW)
    page = check_safe(text, hostile)
    assert "<script>" not in text and "<img" not in text and "<style>body" not in text
    assert page.all_text.count(hostile) >= len(leaves(SAMPLE)) // 2


@pytest.mark.parametrize("path", leaves(SAMPLE), ids=lambda p: ".".join(map(str, p)))
def test_hostile_text_in_each_field(path: tuple) -> None:
    """Each field on its own (the rest sane): escaped wherever and however it is shown."""
    for hostile in (HOSTILE[0], HOSTILE[1], HOSTILE[2]):
        check_safe(render(with_leaf(SAMPLE, path, hostile), host="h", now=NOW))


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_host_header(hostile: str) -> None:
    text = render(SAMPLE, host=hostile, now=NOW)
    page = check_safe(text, hostile)
    assert f"deb http://{hostile}/deb.example.org/debian bookworm main" in page.all_text


def test_hostile_field_names() -> None:
    """Keys are never shown, but a mapping with odd keys must not matter either."""
    odd = copy.deepcopy(SAMPLE)
    odd["<script>"] = "<script>"
    odd["swarms"][0]['"onload="x'] = 1
    check_safe(render(odd, host="h", now=NOW))


# --- the helpers ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 1024**3, "5.0 GiB"),
        (2 * 1024**6, "2048.0 PiB"),
        (None, ""),
        ("<b>", "<b>"),  # not a number: its text, escaped where it is used
        (True, "True"),
    ],
)
def test_human_bytes(value: object, shown: str) -> None:
    assert human_bytes(value) == shown


def test_escape_covers_quotes_and_ampersands() -> None:
    assert escape("<a href=\"x\" title='y'>&</a>") == (
        "&lt;a href=&quot;x&quot; title=&#x27;y&#x27;&gt;&amp;&lt;/a&gt;"
    )
    assert escape(None) == ""
    assert html.unescape(escape(HOSTILE[3])) == HOSTILE[3]
