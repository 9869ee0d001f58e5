from django.db import models


class DidDocument(models.Model):
    """The cached resolution of one DID, shared by every process.

    A row is one of: a resolved document (``document`` set), a negative answer (no document, ``last_error``
    "not-found" or "invalid-document": the DID is tombstoned, unknown or its document unusable), or only a
    record of failed attempts (no document, a transient ``last_error``). The answer holds until ``expires_at``;
    after transient failures (timeouts, unavailable hosts) no attempt is made before ``next_attempt_at``, and a
    stale document stays usable meanwhile."""

    did = models.TextField(primary_key=True)
    document = models.JSONField(null=True)
    # The confirmed handle; "handle.invalid" when the document names one that did not confirm.
    handle = models.TextField(null=True)
    signing_key = models.TextField(null=True)  # the #atproto key as a multikey
    pds = models.TextField(null=True)
    fetched_at = models.DateTimeField(null=True)  # when the current answer was obtained
    expires_at = models.DateTimeField()
    failures = models.IntegerField(default=0)  # transient failures in a row
    last_error = models.TextField(null=True)  # the reason of the last failure
    last_error_detail = models.TextField(null=True)
    next_attempt_at = models.DateTimeField(null=True)

    class Meta:
        # The worker copies the handles of recently fetched documents into actor rows (appview.sync.handles).
        indexes = [models.Index(fields=["fetched_at"], name="diddocument_fetched_idx")]

    def __str__(self) -> str:
        return self.did
