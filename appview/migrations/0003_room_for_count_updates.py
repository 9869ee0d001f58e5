"""Leaves free space in the pages of the tables whose count columns change all the time (posts, actors).

A count update writes a new version of the row; when it fits in the same page and no indexed column
changed, PostgreSQL keeps it there as a heap-only tuple and touches no index. With full pages (the
default fillfactor of 100) every count update rewrote every index of the row, the post text's full-text
GIN entry included, which made counting several times dearer than the insert of the like it counts.
"""

from django.db import migrations

TABLES = ("appview_post", "appview_actor")
FILLFACTOR = 80


class Migration(migrations.Migration):
    dependencies = [("appview", "0002_drop_pattern_indexes")]

    operations = [
        migrations.RunSQL(
            [f"ALTER TABLE {table} SET (fillfactor = {FILLFACTOR})" for table in TABLES],
            reverse_sql=[f"ALTER TABLE {table} RESET (fillfactor)" for table in TABLES],
        )
    ]
