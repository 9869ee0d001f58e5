"""DID resolution and handle confirmation (SPEC section 12): who a DID is (its document, repository signing key,
PDS and confirmed handle), cached in PostgreSQL and in memory, fetched politely from the network."""
