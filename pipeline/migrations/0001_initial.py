import django.db.models.functions.datetime
from django.db import migrations, models


class Migration(migrations.Migration):
    """IndexCursor moves here from the appview app: its table stays as it is."""

    initial = True

    dependencies = [
        ("appview", "0003_room_for_count_updates"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="IndexCursor",
                    fields=[
                        ("name", models.TextField(primary_key=True, serialize=False)),
                        ("seq", models.BigIntegerField(default=0)),
                        ("updated_at", models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                    ],
                    options={"db_table": "appview_indexcursor"},
                ),
            ],
        ),
    ]
