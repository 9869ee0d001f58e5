"""The hidden accounts' share of each post's and actor's counts, kept by the worker (issue 17), filled here
from what is stored."""

from django.db import migrations, models

HIDDEN = "('deactivated', 'takendown', 'suspended', 'deleted')"
FILL = f"""
INSERT INTO appview_hiddenshare (key, like_count, repost_count, reply_count, quote_count, followers_count,
                                 follows_count)
SELECT key, sum(l), sum(r), sum(p), sum(q), sum(fr), sum(fo) FROM (
  SELECT x.subject_uri, 1, 0, 0, 0, 0, 0 FROM appview_like x JOIN appview_actor h ON h.did = x.did
   WHERE h.status IN {HIDDEN}
  UNION ALL SELECT x.subject_uri, 0, 1, 0, 0, 0, 0 FROM appview_repost x JOIN appview_actor h ON h.did = x.did
   WHERE h.status IN {HIDDEN}
  UNION ALL SELECT x.reply_parent_uri, 0, 0, 1, 0, 0, 0 FROM appview_post x JOIN appview_actor h ON h.did = x.did
   WHERE h.status IN {HIDDEN} AND x.reply_parent_uri IS NOT NULL
  UNION ALL SELECT x.quote_uri, 0, 0, 0, 1, 0, 0 FROM appview_post x JOIN appview_actor h ON h.did = x.did
   WHERE h.status IN {HIDDEN} AND x.quote_uri IS NOT NULL
  UNION ALL SELECT x.subject_did, 0, 0, 0, 0, 1, 0 FROM appview_follow x JOIN appview_actor h ON h.did = x.did
   WHERE h.status IN {HIDDEN}
  UNION ALL SELECT x.did, 0, 0, 0, 0, 0, 1 FROM appview_follow x JOIN appview_actor h ON h.did = x.subject_did
   WHERE h.status IN {HIDDEN}
) AS s(key, l, r, p, q, fr, fo) GROUP BY key;
"""


class Migration(migrations.Migration):
    dependencies = [("appview", "0007_rev_ordering_and_repo_sync")]

    operations = [
        migrations.CreateModel(
            name="HiddenShare",
            fields=[
                ("key", models.TextField(primary_key=True, serialize=False)),
                ("like_count", models.IntegerField(default=0)),
                ("repost_count", models.IntegerField(default=0)),
                ("reply_count", models.IntegerField(default=0)),
                ("quote_count", models.IntegerField(default=0)),
                ("followers_count", models.IntegerField(default=0)),
                ("follows_count", models.IntegerField(default=0)),
            ],
        ),
        migrations.RunSQL(FILL, migrations.RunSQL.noop),
    ]
