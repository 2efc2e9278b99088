"""Range parsing: apt resumes partial files with Range/If-Range."""

import pytest

from debtorrent.apt.serve import RangeNotSatisfiable, http_date, parse_http_date, parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 10)),
        ("bytes=90-", 100, (90, 100)),
        ("bytes=-10", 100, (90, 100)),
        ("bytes=-500", 100, (0, 100)),
        ("bytes=50-500", 100, (50, 100)),
        ("bytes=0-1,5-6", 100, None),
        ("items=0-1", 100, None),
        ("bytes=9-3", 100, None),
        ("bytes=x-3", 100, None),
    ],
)
def test_parse_range(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=200-300", "bytes=-0"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_http_dates_round_trip():
    assert parse_http_date(http_date(1_700_000_000)) == 1_700_000_000
    assert parse_http_date("garbage") is None
