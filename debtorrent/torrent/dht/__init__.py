"""The mainline DHT (BEP 5): a full node, in small pure parts and one gevent node.

- :mod:`.compact`: compact node info and compact peer info (bytes <-> addresses);
- :mod:`.krpc`: the KRPC message codec (bencoded dicts over UDP), strict about types
  and sizes, lenient about key order;
- :mod:`.routing`: the k-bucket routing table (k = 8), one node per address;
- :mod:`.lookup`: an iterative lookup (find_node / get_peers) as a state machine;
- :mod:`.peerstore`: other nodes' announces, bounded in total and per info hash;
- :mod:`.tokens`: announce tokens from a rotating secret;
- :mod:`.ratelimit`: per-source token buckets for incoming queries;
- :mod:`.node`: the UDP node on gevent that drives all of the above.

Everything but :mod:`.node` imports no gevent and opens no socket.
"""
