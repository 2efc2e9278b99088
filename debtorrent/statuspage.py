"""The status page: :meth:`~debtorrent.status.Status.snapshot` as one HTML document.

Pure: a function of the snapshot, the ``Host`` the browser used and the current time;
no I/O, no gevent. The page needs no JavaScript (the daemon forbids scripts in its
Content-Security-Policy anyway) and reloads itself every :data:`REFRESH` seconds with a
``<meta http-equiv="refresh">``; the per-swarm peer lists are ``<details>`` elements,
closed by default, so they stay out of the way.

Much of what is shown comes from outside: swarm names and index dates from a mirror's
Release, paths from its Packages, client names and addresses from peers, error texts
that quote them, the Host header from the browser. Every value therefore goes through
:func:`escape` (``html.escape`` with ``quote=True``) on its way into the page, numbers
included, and a formatter given something that is not a number shows it escaped as it
is rather than failing.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["REFRESH", "duration", "escape", "human_bytes", "render", "sources_lines"]

#: Seconds between reloads of the page.
REFRESH = 5

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")

_STYLE = """
:root { color-scheme: light dark; --fg: #1d2329; --muted: #5f6b76; --bg: #fbfbfc;
  --card: #ffffff; --line: #dde2e7; --accent: #a80030; --good: #1a7f37; --bad: #b42318; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e9ec; --muted: #9aa5b1;
  --bg: #16191d; --card: #1f2328; --line: #343a41; --accent: #ff5c7c; --good: #4ac26b;
  --bad: #ff7b72; } }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1240px; padding: 1rem 1.5rem 3rem; color: var(--fg);
  background: var(--bg); font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
header { display: flex; align-items: baseline; gap: 1rem; flex-wrap: wrap;
  border-bottom: 3px solid var(--accent); padding-bottom: .4rem; }
header h1 { margin: 0; font-size: 1.5rem; color: var(--accent); }
header p { margin: 0; color: var(--muted); }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .5rem; }
.cards { display: grid; grid-template-columns: minmax(260px, 1fr) 2fr; gap: 1rem;
  margin-top: 1rem; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: .8rem 1rem; }
.headline .big { font-size: 3.2rem; font-weight: 700; color: var(--good); line-height: 1.1; }
.headline p { margin: .3rem 0 0; color: var(--muted); }
.headline #cache { margin-top: .9rem; padding-top: .6rem; border-top: 1px solid var(--line); }
table { border-collapse: collapse; width: 100%; background: var(--card); }
th, td { text-align: left; padding: .3rem .55rem; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: .85rem; white-space: nowrap; }
td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .82rem;
  overflow-wrap: anywhere; }
.muted { color: var(--muted); }
.empty { color: var(--muted); font-style: italic; margin: .3rem 0; }
.ok { color: var(--good); }
.err td { color: var(--bad); }
.alert { margin: 1rem 0 0; padding: .6rem 1rem; border-radius: 6px;
  border: 1px solid var(--bad); color: var(--bad); background: var(--card); }
.hint { margin: .6rem 0 0; padding: .5rem .8rem; border-left: 3px solid var(--accent);
  background: var(--card); }
progress { width: 9rem; vertical-align: middle; }
details { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  margin: .4rem 0; padding: .3rem .6rem; }
summary { cursor: pointer; font-weight: 600; }
pre { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: .6rem .8rem; overflow-x: auto; }
footer { margin-top: 2rem; color: var(--muted); font-size: .85rem; }
a { color: var(--accent); }
"""


# --- escaping and formatting ------------------------------------------------------------------


def escape(value: object) -> str:
    """Any value as text safe in HTML content and in a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def human_bytes(value: object) -> str:
    """``1536`` -> ``1.5 KiB``; anything not a number comes back as its text."""
    if not _is_number(value):
        return "" if value is None else str(value)
    amount = float(value)  # type: ignore[arg-type]
    for unit in _UNITS:
        if abs(amount) < 1024 or unit == _UNITS[-1]:
            return f"{int(amount)} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def _text(value: object) -> str:
    """Plain text of a value (escaped later, where it enters the page)."""
    return "" if value is None else str(value)


def _count(value: object) -> str:
    """``12345`` -> ``12,345``."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else _text(value)


def _plural(value: object, noun: str) -> str:
    """``1 peer``, ``2 peers``, ``1,000 files``."""
    return f"{_count(value)} {noun}{'' if value == 1 else 's'}"


def _percent(value: object) -> str:
    return f"{value * 100:.1f} %" if _is_number(value) else _text(value)  # type: ignore[operator]


def duration(value: object) -> str:
    """Seconds as ``2 d 3 h``, ``4 h 5 min``, ``6 min 7 s`` or ``8 s``."""
    if not _is_number(value):
        return _text(value)
    seconds = int(value)  # type: ignore[call-overload]
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def _clock(value: object) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``."""
    if not _is_number(value):
        return _text(value)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))  # type: ignore[arg-type]


def _flag(value: object, yes: str, no: str) -> str:
    if value is True:
        return yes
    if value is False:
        return no
    return _text(value)


# --- building blocks (every argument is escaped here) ----------------------------------------


def _attrs(attrs: Mapping[str, object]) -> str:
    return "".join(
        f' {name}="{escape(value)}"' for name, value in attrs.items() if value is not None
    )


def _td(text: object, cls: str | None = None, **attrs: object) -> str:
    return f"<td{_attrs({'class': cls, **attrs})}>{escape(text)}</td>"


def _bytes_td(value: object, cell_id: str | None = None) -> str:
    """Bytes, readable; the exact figure is in ``<data value>`` and the tooltip."""
    exact = _count(value)
    return (
        f'<td class="num"{_attrs({"id": cell_id})}>'
        f'<data value="{escape(value)}" title="{escape(exact)} bytes">'
        f"{escape(human_bytes(value))}</data></td>"
    )


def _table(headers: Sequence[tuple[str, bool]], rows: Iterable[str], cls: str = "") -> str:
    head = "".join(f"<th{' class=num' if num else ''}>{escape(h)}</th>" for h, num in headers)
    body = "".join(rows)
    return (
        f'<table class="{escape(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _get(data: object, key: str, default: object = None) -> Any:
    return data.get(key, default) if isinstance(data, Mapping) else default


def _items(data: object, key: str) -> list[Any]:
    value = _get(data, key, [])
    return list(value) if isinstance(value, list | tuple) else []


# --- the sections -------------------------------------------------------------------------------


def _headline(snap: Mapping[str, Any]) -> str:
    totals, all_time = _get(snap, "totals", {}), _get(snap, "all_time", {})
    from_peers, from_mirror = (
        _get(totals, "bytes_from_peers", 0),
        _get(totals, "bytes_from_mirror", 0),
    )
    fetched = _is_number(from_peers) and _is_number(from_mirror) and from_peers + from_mirror > 0
    if fetched or not (_is_number(from_peers) and _is_number(from_mirror)):
        big = _percent(_get(totals, "peer_share"))
        line = (
            f"of package bytes came from peers since the start: {human_bytes(from_peers)} "
            f"from peers, {human_bytes(from_mirror)} from the mirror."
        )
    else:
        big, line = "\u2013", "No package fetched since the start yet."
    return (
        '<section class="card headline" id="headline">'
        f'<div class="big" id="peer-share">{escape(big)}</div>'
        f"<p>{escape(line)}</p>"
        f"<p>All time: {escape(_percent(_get(all_time, 'peer_share')))} from peers.</p>"
        f"{_sharing_hint(snap)}{_cache(snap)}</section>"
    )


def _sharing_hint(snap: Mapping[str, Any]) -> str:
    """Why the share may stay at 0: no way to find peers, or none found yet (the
    sentence comes with the snapshot's discovery figures)."""
    hint = _get(_get(snap, "discovery", {}), "hint")
    return f'<p class="hint" id="sharing-hint">{escape(hint)}</p>' if hint else ""


_TOTAL_ROWS = (
    ("bytes_to_apt", "Sent to apt"),
    ("bytes_from_peers", "Received from peers"),
    ("bytes_from_mirror", "Fetched from the mirror"),
    ("bytes_uploaded", "Uploaded to peers"),
)


def _totals(snap: Mapping[str, Any]) -> str:
    totals, all_time = _get(snap, "totals", {}), _get(snap, "all_time", {})
    rows = [
        f"<tr><th>{escape(label)}</th>"
        f"{_bytes_td(_get(totals, key), f'totals-{key}')}"
        f"{_bytes_td(_get(all_time, key), f'all_time-{key}')}</tr>"
        for key, label in _TOTAL_ROWS
    ]
    rows.append(
        "<tr><th>Peer share of package bytes</th>"
        f"{_td(_percent(_get(totals, 'peer_share')), 'num', id='totals-peer_share')}"
        f"{_td(_percent(_get(all_time, 'peer_share')), 'num', id='all_time-peer_share')}</tr>"
    )
    misbehaviour = [
        _count(_get(figures, "bans")) + " / " + _count(_get(figures, "protocol_errors"))
        for figures in (totals, all_time)
    ]
    rows.append(
        "<tr><th>Peers banned / protocol errors</th>"
        f"{_td(misbehaviour[0], 'num')}{_td(misbehaviour[1], 'num')}</tr>"
    )
    table = _table((("", False), ("Since start", True), ("All time", True)), rows, "totals")
    return f'<section class="card" id="totals">{table}{_rates(snap)}</section>'


def _cache(snap: Mapping[str, Any]) -> str:
    """The cache line of the headline card, with the exact figures in ``<data>``."""
    size, files, counted = (_get(snap, k) for k in ("cache_bytes", "cache_files", "cache_counted"))
    hits, misses = _get(snap, "cache_hits"), _get(snap, "cache_misses")
    ratio = ""
    if _is_number(hits) and _is_number(misses) and hits + misses > 0:
        ratio = f" ({_percent(hits / (hits + misses))})"
    hit_line = (
        f'<p class="muted" id="cache-hits">Packages answered from the cache: '
        f'<data id="cache-hit-count" value="{escape(hits)}">{escape(_count(hits))}</data> '
        f"{escape('hit' if hits == 1 else 'hits')}, "
        f'<data id="cache-miss-count" value="{escape(misses)}">{escape(_count(misses))}</data>'
        f" {escape('miss' if misses == 1 else 'misses')}{escape(ratio)}.</p>"
    )
    if counted is None:
        return '<p class="muted" id="cache">Cache: not counted yet.</p>' + hit_line
    return (
        '<p class="muted" id="cache">Cache: '
        f'<data id="cache-bytes" value="{escape(size)}">{escape(human_bytes(size))}</data> in '
        f'<data id="cache-files" value="{escape(files)}">{escape(_plural(files, "file"))}</data>'
        f", counted at {escape(_clock(counted))}.</p>{hit_line}"
    )


_RATE_ROWS = (
    ("download", "Received from peers"),
    ("upload", "Sent to peers"),
    ("mirror", "Fetched from mirrors"),
)


def _rates(snap: Mapping[str, Any]) -> str:
    rates = _get(snap, "rates", {})
    rows = []
    for key, label in _RATE_ROWS:
        figures = _get(rates, key, {})
        limit = _get(figures, "limit")
        shown = human_bytes(limit) + "/s" if _is_number(limit) else "no limit"
        rows.append(
            f"<tr><th>{escape(label)}</th>"
            f"{_td(human_bytes(_get(figures, 'rate')) + '/s', 'num', id=f'rate-{key}')}"
            f"{_td(shown, 'num', id=f'limit-{key}')}</tr>"
        )
    return _table((("", False), ("Now", True), ("Limit", True)), rows, "rates")


def _requests(snap: Mapping[str, Any]) -> str:
    rows = [
        f"<tr>{_td(_get(r, 'class'))}{_td(_get(r, 'status'), 'num')}"
        f"{_td(_count(_get(r, 'count')), 'num')}{_bytes_td(_get(r, 'bytes'))}</tr>"
        for r in _items(snap, "requests")
    ]
    if not rows:
        return '<p class="empty">No apt request answered yet.</p>'
    headers = (("File class", False), ("Status", True), ("Requests", True), ("Bytes sent", True))
    return _table(headers, rows, "requests")


def _swarms(snap: Mapping[str, Any]) -> str:
    rows = []
    for s in _items(snap, "swarms"):
        rows.append(
            f'<tr class="swarm"{_attrs({"data-info-hash": _get(s, "info_hash")})}>'
            f"{_td(_get(s, 'name'), 'name')}"
            f"{_td(_get(s, 'index_date'))}"
            f"{_td(_count(_get(s, 'files')), 'num')}"
            f"{_td(_count(_get(s, 'files_enabled')), 'num')}"
            f"{_td(_count(_get(s, 'files_complete')), 'num')}"
            f"{_td(_flag(_get(s, 'seeding'), 'seeding', 'downloading'))}"
            f"{_td(_count(_get(s, 'peers')), 'num')}"
            f"{_td(human_bytes(_get(s, 'down_rate')) + '/s', 'num')}"
            f"{_td(human_bytes(_get(s, 'up_rate')) + '/s', 'num')}"
            f"{_td(_get(s, 'info_hash'), 'mono')}</tr>"
        )
    if not rows:
        return '<p class="empty">No swarm yet: one starts for each Packages index apt fetches.</p>'
    headers = (
        ("Swarm", False),
        ("Index date", False),
        ("Files", True),
        ("Enabled", True),
        ("Complete", True),
        ("State", False),
        ("Peers", True),
        ("Down", True),
        ("Up", True),
        ("Info hash", False),
    )
    return _table(headers, rows, "swarms")


def _progress(done: object, size: object) -> str:
    if _is_number(done) and _is_number(size) and size > 0:  # type: ignore[operator]
        bar = f'<progress value="{escape(done)}" max="{escape(size)}"></progress> '
        return f"{bar}{escape(human_bytes(done))} / {escape(human_bytes(size))}"
    return f"{escape(human_bytes(done))} / {escape(human_bytes(size) or '?')}"


def _downloads(snap: Mapping[str, Any]) -> str:
    rows = []
    for d in _items(snap, "downloads"):
        waiting = _get(d, "waiting")
        rows.append(
            "<tr>"
            f"{_td(_get(d, 'path'), 'mono')}"
            f"{_td(_get(d, 'swarm') or _get(d, 'mirror'))}"
            f"<td>{_progress(_get(d, 'done'), _get(d, 'size'))}</td>"
            f"{_td(_get(d, 'source'))}"
            f"{_td('apt waits ' + duration(waiting) if waiting is not None else '')}"
            "</tr>"
        )
    if not rows:
        return '<p class="empty">Nothing is being downloaded.</p>'
    headers = (
        ("File", False),
        ("Swarm or mirror", False),
        ("Progress", False),
        ("Source", False),
        ("Apt request", False),
    )
    return _table(headers, rows, "downloads")


def _peers(snap: Mapping[str, Any]) -> str:
    parts = []
    for s in _items(snap, "swarms"):
        peers = _items(s, "peer_list")
        rows = []
        for p in peers:
            flags = [
                _flag(_get(p, "outgoing"), "outgoing", "incoming"),
                "seed" if _get(p, "seed") is True else "",
                "optimistic" if _get(p, "optimistic") is True else "",
                "snubbed" if _get(p, "snubbed") is True else "",
            ]
            interest = (
                f"we {_flag(_get(p, 'am_interested'), 'want', 'do not want')}, "
                f"they {_flag(_get(p, 'peer_interested'), 'want', 'do not want')}"
            )
            rows.append(
                "<tr>"
                f"{_td(_get(p, 'address'), 'mono')}"
                f"{_td(_get(p, 'client'))}"
                f"{_td(_get(p, 'source'))}"
                f"{_td(human_bytes(_get(p, 'down_rate')) + '/s', 'num')}"
                f"{_td(human_bytes(_get(p, 'up_rate')) + '/s', 'num')}"
                f"{_bytes_td(_get(p, 'downloaded'))}"
                f"{_bytes_td(_get(p, 'uploaded'))}"
                f"{_td(_flag(_get(p, 'am_choking'), 'choked', 'unchoked'))}"
                f"{_td(_flag(_get(p, 'peer_choking'), 'choked', 'unchoked'))}"
                f"{_td(interest)}"
                f"{_td(' '.join(f for f in flags if f))}"
                f"{_td(duration(_get(p, 'connected')), 'num')}"
                "</tr>"
            )
        headers = (
            ("Address", False),
            ("Client", False),
            ("Found by", False),
            ("Down", True),
            ("Up", True),
            ("Received", True),
            ("Sent", True),
            ("We choke them", False),
            ("They choke us", False),
            ("Interest", False),
            ("Flags", False),
            ("Connected", True),
        )
        body = _table(headers, rows, "peers") if rows else '<p class="empty">No peer.</p>'
        listed = f"{len(peers)} listed" if len(peers) != _get(s, "peers") else ""
        summary = f"{_get(s, 'name')}: {_plural(_get(s, 'peers'), 'peer')} {listed}".strip()
        parts.append(f"<details><summary>{escape(summary)}</summary>{body}</details>")
    if not parts:
        return '<p class="empty">No swarm, so no peer.</p>'
    return "".join(parts)


_SOURCE_LABELS = (
    ("lsd", "Local discovery (LSD)"),
    ("dht", "DHT"),
    ("pex", "Peer exchange (PEX)"),
    ("tracker", "Trackers"),
    ("static", "Configured peers"),
    ("incoming", "Connected to us"),
)


def _discovery(snap: Mapping[str, Any]) -> str:
    """How peers are found: what runs, peers by source, the DHT and LSD, the hint."""
    d = _get(snap, "discovery", {})
    parts = []
    enabled = _items(d, "enabled")
    scope = " (LAN only)" if _get(d, "lan_only") is True else ""
    what = ", ".join(_text(m) for m in enabled) if enabled else "none"
    parts.append(f'<p id="discovery-enabled">Discovery: {escape(what + scope)}.</p>')
    by_source, learnt = _get(d, "peers_by_source", {}), _get(d, "addresses_learnt", {})
    rows = [
        f"<tr><th>{escape(label)}</th>"
        f"{_td(_count(_get(by_source, key, 0)), 'num', id=f'peers-{key}')}"
        f"{_td(_count(_get(learnt, key)) if key != 'incoming' else '', 'num')}</tr>"
        for key, label in _SOURCE_LABELS
    ]
    headers = (("Source", False), ("Peers connected", True), ("Addresses learnt", True))
    parts.append(_table(headers, rows, "sources"))
    dht = _get(d, "dht")
    if isinstance(dht, Mapping) and _get(dht, "running") is not False:
        parts.append(
            f'<p id="discovery-dht">DHT: {escape(_plural(_get(dht, "nodes"), "node"))} in the '
            f"routing table ({escape(_count(_get(dht, 'good_nodes')))} good), "
            f"{escape(_plural(_get(dht, 'lookups'), 'lookup'))} done, "
            f"{escape(_count(_get(dht, 'lookups_running')))} running; "
            f"{escape(_plural(_get(dht, 'stored_peers'), 'peer'))} of "
            f"{escape(_plural(_get(dht, 'stored_hashes'), 'swarm'))} stored for others; "
            f"{escape(_plural(_get(dht, 'malformed'), 'malformed message'))} dropped.</p>"
        )
    lan = _get(d, "lsd")
    if isinstance(lan, Mapping) and _get(lan, "running") is not False:
        interfaces = ", ".join(_text(i) for i in _items(lan, "interfaces"))
        parts.append(
            f'<p id="discovery-lsd">Local discovery on {escape(interfaces)}: '
            f"{escape(_plural(_get(lan, 'rounds'), 'announce round'))} sent, "
            f"{escape(_plural(_get(lan, 'heard'), 'announce'))} heard for our swarms, "
            f"{escape(_count(_get(lan, 'dropped')))} dropped.</p>"
        )
    return "".join(parts)


def _errors(snap: Mapping[str, Any], now: float) -> str:
    rows = []
    for err in _items(snap, "errors"):
        when = _get(err, "time")
        ago = f" ({duration(now - when)} ago)" if _is_number(when) else ""
        count = _get(err, "count", 1)
        times = (
            f" (\u00d7{_count(count)}, the last shown)" if _is_number(count) and count > 1 else ""
        )
        rows.append(
            f'<tr class="err">{_td(_clock(when) + ago, "num")}'
            f"{_td(_text(_get(err, 'message')) + times, 'mono')}</tr>"
        )
    if not rows:
        return '<p class="empty ok">No error since the start.</p>'
    return _table((("Time", True), ("What happened", False)), rows, "errors")


def _suites(snap: Mapping[str, Any]) -> str:
    """Each Release the daemon knows and whether its signature verified."""
    rows = []
    for r in _items(snap, "suites"):
        trusted = _get(r, "trusted") is True
        where = f"{_text(_get(r, 'mirror'))}/{_text(_get(r, 'path'))}"
        rows.append(
            f'<tr class="suite {"ok" if trusted else "untrusted"}">'
            f"{_td(where, 'name')}"
            f"{_td(_get(r, 'origin'))}"
            f"{_td(_get(r, 'codename') or _get(r, 'suite'))}"
            f"{_td(_get(r, 'trust'), 'trust')}"
            f"{_td('shared' if trusted else 'passed to apt, not shared')}"
            f"{_td(_get(r, 'reason'))}"
            f"{_td(_get(r, 'valid_until') or '')}</tr>"
        )
    if not rows:
        return '<p class="empty">No Release fetched yet.</p>'
    headers = (
        ("Release", False),
        ("Origin", False),
        ("Suite", False),
        ("Signature", False),
        ("Indexes", False),
        ("Why", False),
        ("Valid until", False),
    )
    return _table(headers, rows, "suites")


def _tunnels(snap: Mapping[str, Any]) -> str:
    """CONNECT tunnels (https sources through the proxy), with how to cache them."""
    t = _get(snap, "tunnels", {})
    opened = _get(t, "opened", 0)
    if not opened and not _get(t, "refused", 0):
        return '<p class="empty">No CONNECT tunnel since the start.</p>'
    line = (
        f"{_plural(opened, 'tunnel')} opened ({_count(_get(t, 'open'))} open now), "
        f"{_count(_get(t, 'refused'))} refused; {human_bytes(_get(t, 'bytes_from_mirror'))} "
        "passed from mirrors uncached."
    )
    hosts = ", ".join(_text(h) for h in _items(t, "hosts"))
    hint = _get(t, "hint") or ""
    return (
        f'<p id="tunnel-count">{escape(line)}</p>'
        + (f"<p>Hosts: {escape(hosts)}</p>" if hosts else "")
        + (f'<p class="hint" id="tunnel-hint">{escape(hint)}.</p>' if hint else "")
    )


def sources_lines(snap: Mapping[str, Any], host: str) -> list[str]:
    """Path-form ``deb`` lines for every mirror, archive and suite the daemon has seen,
    through ``host``; plus a security line to fill in when a Debian release is used
    without its security suite (the security archive has a host of its own)."""
    lines: list[str] = []
    seen: set[str] = set()
    debian: set[str] = set()
    for mirror in _items(snap, "mirrors"):
        name = _text(_get(mirror, "host"))
        for entry in _items(mirror, "suites"):
            root, suite = _text(_get(entry, "root")), _text(_get(entry, "suite"))
            comps = " ".join(_text(c) for c in _items(entry, "components")) or "main"
            base = f"{name}/{root}" if root else name
            lines.append(f"deb http://{host}/{base} {suite} {comps}")
            seen.add(suite)
            if _get(entry, "origin") == "Debian" and suite.isalpha():
                debian.add(suite)
    if not any(s.endswith(("-security", "/updates")) for s in seen):
        for codename in sorted(debian):
            lines.append(
                f"# security updates: put the host of your security archive for SECURITY-HOST\n"
                f"deb http://{host}/SECURITY-HOST/debian-security {codename}-security main"
            )
    return lines


def _apt_lines(snap: Mapping[str, Any], host: str) -> str:
    proxy = f'Acquire::http::Proxy "http://{host}/";'
    lines = sources_lines(snap, host)
    if lines:
        sources = (
            "<p>Path form: these lines, in place of the direct ones, send every source this "
            f"daemon has seen through it ({escape(_plural(len(lines), 'line'))}):</p>"
            f'<pre id="sources-lines">{escape(chr(10).join(lines))}</pre>'
        )
    else:
        sources = (
            "<p>Path form: put the mirror's host and path after the daemon's address in each "
            "source line (no mirror seen yet, so no line to copy):</p>"
            f"<pre>{escape(f'deb http://{host}/MIRROR-HOST/debian SUITE main')}</pre>"
        )
    return (
        f"{sources}<p>Or proxy form: keep the sources and make the daemon apt's HTTP proxy "
        "(the Debian package does this by itself, with a proxy detection script):</p>"
        f"<pre>{escape(proxy)}</pre>"
    )


def _alert(snap: Mapping[str, Any]) -> str:
    health = _get(snap, "health", {})
    if _get(health, "ok") is not False:
        return ""
    return (
        f'<p class="alert" id="health">Not serving: {escape(_get(health, "reason"))}. '
        "apt machines with the proxy detection script go straight to the mirrors.</p>"
    )


def render(snap: Mapping[str, Any], *, host: str, now: float) -> str:
    """The whole page for ``snap``, as seen through ``host`` (the request's Host)."""
    version = _get(snap, "version")
    started = _get(snap, "started")
    subtitle = (
        f"version {_text(version)}, up {duration(_get(snap, 'uptime'))} "
        f"(since {_clock(started)}), peer port {_text(_get(snap, 'peer_port'))}, "
        f"{_plural(_get(snap, 'connections'), 'peer connection')}"
    )
    sections = [
        _alert(snap),
        '<div class="cards">',
        _headline(snap),
        _totals(snap),
        "</div>",
        '<h2 id="swarms">Swarms</h2>',
        _swarms(snap),
        '<h2 id="downloads">Downloads now</h2>',
        _downloads(snap),
        '<h2 id="discovery">Finding peers</h2>',
        _discovery(snap),
        '<h2 id="peers">Connected peers</h2>',
        _peers(snap),
        '<h2 id="requests">Apt requests since the start</h2>',
        _requests(snap),
        '<h2 id="errors">Recent errors</h2>',
        _errors(snap, now),
        '<h2 id="suites">Suites and signatures</h2>',
        _suites(snap),
        '<h2 id="tunnels">https tunnels (CONNECT)</h2>',
        _tunnels(snap),
        '<h2 id="apt">Pointing apt at this daemon</h2>',
        _apt_lines(snap, host),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>debtorrent on {escape(host)}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<header><h1>debtorrent</h1><p>{escape(subtitle)}</p></header>"
        f"{''.join(sections)}"
        "<footer>This page reloads every "
        f"{REFRESH} s. The same figures, for programs: "
        '<a href="/status.json">/status.json</a>, '
        '<a href="/metrics">/metrics</a> (Prometheus) and '
        '<a href="/health">/health</a>.</footer>'
        "</body></html>\n"
    )
