from django.db import migrations


class Migration(migrations.Migration):
    """IndexCursor now belongs to the pipeline app; its table stays as it is."""

    dependencies = [
        ("appview", "0003_room_for_count_updates"),
        ("pipeline", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[migrations.DeleteModel(name="IndexCursor")]),
    ]
