"""The worker's indexing: decoding stream entries, extracting typed columns from records, and applying a
batch of events to PostgreSQL with set-based SQL (docs/ARCHITECTURE.md)."""
