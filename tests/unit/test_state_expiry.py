"""The checkpoint survives restarts and refuses bad files; expiry keeps the cache lean."""

import hashlib
import json
import logging
import os
from collections import Counter

from debtorrent.archive.indexes import Archive
from debtorrent.cache import Cache
from debtorrent.expiry import Expiry
from debtorrent.state import State

MIRROR = "deb.example.org"


def test_counters_add_up_across_restarts(tmp_path):
    first = State(str(tmp_path))
    first.save(Counter(peers=100, mirror=7))
    second = State(str(tmp_path))
    second.load()
    assert second.totals(Counter(peers=1)) == Counter(peers=101, mirror=7)


def test_corrupt_checkpoint_is_set_aside_not_trusted(tmp_path, caplog):
    (tmp_path / "state.json").write_text('{"format": 1, "counters": {"peers": -5}}')
    state = State(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        state.load()
    assert state.base == Counter()
    assert "corrupt" in caplog.text
    assert (tmp_path / "state.corrupt").exists() and not (tmp_path / "state.json").exists()
    (tmp_path / "state.json").write_bytes(b'{"format": 1, "coun')  # torn
    State(str(tmp_path)).load()
    assert not (tmp_path / "state.json").exists()


def _archive_with(cache: Cache, listed: dict[str, bytes]) -> Archive:
    packages = "".join(
        f"Package: p{i}\nFilename: pool/main/{name}\nSize: {len(data)}\n"
        f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n"
        for i, (name, data) in enumerate(listed.items())
    ).encode()
    release = (
        "Origin: Test\nCodename: t\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-amd64/Packages\n"
    ).encode()
    archive = Archive(cache)
    archive.add_release(MIRROR, "debian/dists/t/InRelease", release)
    archive.add_packages(MIRROR, "debian/dists/t/main/binary-amd64/Packages", packages)
    return archive


def test_expiry_removes_unlisted_then_least_used(tmp_path):
    cache = Cache(tmp_path / "cache")
    files = {f"f{i}.deb": bytes([i]) * 1000 for i in range(5)}
    archive = _archive_with(cache, {k: v for k, v in files.items() if k != "f4.deb"})
    for i, (name, data) in enumerate(files.items()):
        path = cache.write(MIRROR, f"debian/pool/main/{name}", data)
        os.utime(path, (1000 + i, 1000 + i))  # f0 least recently used
    removed = []
    expiry = Expiry(cache, archive, 2500, lambda m, p: removed.append(p))
    report = expiry.run()
    assert report.unlisted == 1 and "debian/pool/main/f4.deb" in removed
    assert report.over_limit == 2  # 4000 bytes listed, limit 2500: f0 and f1 go
    assert sorted(removed) == [f"debian/pool/main/f{i}.deb" for i in (0, 1, 4)]
    left = sorted(p.name for p in (tmp_path / "cache" / MIRROR / "debian/pool/main").iterdir())
    assert left == ["f2.deb", "f3.deb"]
    assert cache.get(MIRROR, "debian/dists/t/main/binary-amd64/Packages") is not None
    assert json.dumps(report.__dict__)  # plain numbers, for the status page
