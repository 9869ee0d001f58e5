"""Runs the real pipeline for fault, soak and benchmark runs: throwaway servers, the real commands as
subprocesses, and a full comparison of the resulting database.

- ``servers``: ``throwaway_postgres()``, ``throwaway_redis()`` (own processes on free ports, with
  stop/start/restart for faults) and ``scratch_database()`` (a migrated database of its own on any server).
- ``processes``: ``Pipeline`` starts ``run_relay_sim``, ``run_firehose`` and ``run_worker`` processes
  against one database and one Redis, kills and restarts them, and waits until every event is indexed.
- ``compare``: ``take_snapshot()`` of every table and of ``cluster:metrics``; ``diff()`` says what differs.
"""
