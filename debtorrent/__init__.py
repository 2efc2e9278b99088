"""debtorrent: a BitTorrent-based apt proxy for Debian."""

__version__ = "0.1.0"
__all__ = ["__version__"]
