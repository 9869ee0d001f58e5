"""The worker's indexing (docs/ARCHITECTURE.md): stream entries parsed into events (``events``), their
records' typed columns (``feed``, ``graph``, ``actor``, through ``tables``), a batch folded in Python
(``fold``) and applied with set-based SQL (``statements``, ``apply``, ``services``), and ``run_worker``'s
stream I/O (``consumer``) and loop (``worker``)."""
