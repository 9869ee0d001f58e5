from django.apps.registry import Apps
from django.conf import settings
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

from pipeline.cursor import relay_host

LEGACY_NAME = "firehose"


def name_the_cursor_after_its_relay(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    """The one cursor kept before was the position on RELAY_URL: it becomes that relay's row. Its generation
    stays NULL: run_firehose allocates one, and resumes that relay from this seq."""
    cursor = apps.get_model("pipeline", "IndexCursor")
    legacy = cursor.objects.filter(name=LEGACY_NAME).first()
    if legacy is None:
        return
    cursor.objects.get_or_create(name=relay_host(settings.RELAY_URL), defaults={"seq": legacy.seq})
    legacy.delete()


def name_the_cursor_firehose_again(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    cursor = apps.get_model("pipeline", "IndexCursor")
    current = cursor.objects.filter(name=relay_host(settings.RELAY_URL)).first()
    if current is not None:
        cursor.objects.update_or_create(name=LEGACY_NAME, defaults={"seq": current.seq})


class Migration(migrations.Migration):
    """A durable cursor per relay host, each with the stream generation its events are pushed under."""

    dependencies = [
        ("pipeline", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="indexcursor",
            name="generation",
            field=models.BigIntegerField(null=True, unique=True),
        ),
        migrations.RunPython(name_the_cursor_after_its_relay, name_the_cursor_firehose_again),
    ]
