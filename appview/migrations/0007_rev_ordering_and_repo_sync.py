"""Writes are ordered by the repo's rev instead of the relay's seq, and each actor row carries the state of
its repository's sync (issue 15)."""

import django.contrib.postgres.fields
from django.db import migrations, models

FORWARD = """
UPDATE appview_actor SET floor_rev = COALESCE(rev, '') WHERE purged_seq > 0;
UPDATE appview_actor SET sync_status = 'desynchronized', sync_reason = 'sync-event', resync_after = now()
 WHERE needs_resync;
"""


class Migration(migrations.Migration):
    dependencies = [("appview", "0006_follow_did_subject_index")]

    operations = [
        migrations.AddField("actor", "handle_checked_at", models.DateTimeField(blank=True, null=True)),
        migrations.AddField("actor", "status_position", models.TextField(blank=True, default="")),
        migrations.AddField("actor", "floor_rev", models.TextField(blank=True, default="")),
        migrations.AddField("actor", "missing_revs", django.contrib.postgres.fields.ArrayField(
            base_field=models.TextField(), blank=True, default=list, size=None)),
        migrations.AddField("actor", "missing_since", models.DateTimeField(blank=True, null=True)),
        migrations.AddField("actor", "sync_status", models.TextField(
            choices=[("active", "Active"), ("desynchronized", "Desynchronized"), ("resyncing", "Resyncing"),
                     ("error", "Error")], default="active")),
        migrations.AddField("actor", "sync_reason", models.TextField(blank=True, default="")),
        migrations.AddField("actor", "sync_tries", models.IntegerField(default=0)),
        migrations.AddField("actor", "resync_after", models.DateTimeField(blank=True, null=True)),
        migrations.RunSQL(FORWARD, migrations.RunSQL.noop),
        migrations.RemoveField("actor", "handle_seq"),
        migrations.RemoveField("actor", "status_seq"),
        migrations.RemoveField("actor", "rev_seq"),
        migrations.RemoveField("actor", "needs_resync"),
        migrations.RemoveField("actor", "purged_seq"),
        migrations.AddIndex("actor", models.Index(
            condition=~models.Q(sync_status="active"), fields=["sync_status"], name="actor_sync_status_idx")),
        migrations.AddIndex("actor", models.Index(
            condition=models.Q(resync_after__isnull=False), fields=["resync_after"], name="actor_resync_queue_idx")),
        migrations.AddIndex("actor", models.Index(
            condition=models.Q(missing_since__isnull=False), fields=["missing_since"], name="actor_missing_revs_idx")),
        # A tombstone's seq cannot be turned into a rev: those of before keep an empty rev, below every rev.
        migrations.AddField("recordtombstone", "rev", models.TextField(default=""), preserve_default=False),
        migrations.RemoveField("recordtombstone", "seq"),
    ]
