"""The read API: Bluesky-compatible XRPC queries under ``/xrpc/<NSID>`` (SPEC section 13).

- ``lexicons``: the official schemas, read once: each query's parameters and output;
- ``params``: request parameters checked and converted as the lexicon says;
- ``views``: the one HTTP entry point (rate limit, read-only transaction with a statement timeout, errors
  as ``{"error", "message"}``) and the query functions by NSID (``queries``);
- ``hydration``: profile, post, embed, list, feed generator and starter pack views built from rows, a
  constant number of queries per list whatever its length;
- ``selectors``: the reads of the index (feeds, threads, graphs, search) with keyset cursors.
"""
