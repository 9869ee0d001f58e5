"""Keeping each repository in sync (SPEC section 12): commit signatures checked per batch, handles taken from
DID documents, repositories fetched again from their PDS (resync)."""
