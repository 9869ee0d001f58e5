from django.db import models
from django.db.models.functions import Now


class IndexCursor(models.Model):
    """The durable cursor of one relay host: every event of that relay at or below ``seq`` has its effects
    committed here. ``generation`` is the stream generation its events are pushed under now (NULL: none
    yet, ``seq`` is where to resume that relay from)."""

    name = models.TextField(primary_key=True)  # the relay's host[:port], lowercased
    seq = models.BigIntegerField(default=0)
    generation = models.BigIntegerField(null=True, unique=True)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "appview_indexcursor"  # created by the appview app, which held the model first

    def __str__(self) -> str:
        return f"{self.name}: {self.seq}"
