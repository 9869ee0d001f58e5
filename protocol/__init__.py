"""The AT Protocol as this project reads it, with no Django, Redis or database in it.

- ``syntax``: checks of identifiers and values (DID, handle, NSID, record key, TID, AT-URI, datetime, CID,
  language tag);
- ``frames``: the relay's subscribeRepos frames (DAG-CBOR header and body) and repo events;
- ``car``: CAR v1 files, read through an index of block offsets;
- ``cid``: content identifiers of blocks;
- ``dagcbor``: records decoded with their CID links told apart from byte strings;
- ``commit``: the record operations of a ``#commit`` with their records taken from its blocks;
- ``testing``: encoders of frames and CAR files, for the relay simulator and the tests.

Nothing the network sends is trusted: readers check types, sizes and syntax and raise an error whose
message is one clear sentence.
"""
