"""Production ingestion: ``run_firehose`` reads the relay's subscribeRepos websocket into the Redis Stream
of the pipeline contract (``pipeline``), decoding frames with ``protocol``."""
