"""A local relay for demos, tests and benchmarks (``run_relay_sim``): real wire format, synthetic or
replayed events, the relay's cursor semantics and injectable faults. Development only: production code
never imports it."""
