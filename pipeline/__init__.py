"""The contract between run_firehose and the workers (SPEC section 3), owned here and nowhere else:
the Redis key names and connections (``redis_store``), the stream and its consumer group with the push
and acknowledge scripts (``stream``, ``lua/*.lua``), ``firehose:status`` (``status``) and the durable
cursor in PostgreSQL (``cursor``, model ``IndexCursor``). The firehose and the indexer both import it;
neither imports the other."""
