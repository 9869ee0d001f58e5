from django.db import models
from django.db.models.functions import Now


class IndexCursor(models.Model):
    """The durable cursor: every event at or below ``seq`` has its effects committed here."""

    name = models.TextField(primary_key=True)
    seq = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "appview_indexcursor"  # created by the appview app, which held the model first

    def __str__(self) -> str:
        return f"{self.name}: {self.seq}"
