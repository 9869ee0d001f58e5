"""Drops the text_pattern_ops ("_like") indexes Django adds beside every text primary key.

They only serve LIKE 'prefix%' queries, which nothing here runs (lookups are exact: DID, AT-URI), yet
every insert into a record table paid for a second B-tree on its widest column, the URI.
"""

from django.db import migrations

DROP_PATTERN_INDEXES = """
DO $$
DECLARE name text;
BEGIN
  FOR name IN SELECT indexname FROM pg_indexes
              WHERE schemaname = current_schema() AND tablename LIKE 'appview\\_%' AND indexname LIKE '%\\_like'
  LOOP
    EXECUTE format('DROP INDEX %I', name);
  END LOOP;
END $$;
"""


class Migration(migrations.Migration):
    dependencies = [("appview", "0001_initial")]

    operations = [migrations.RunSQL(DROP_PATTERN_INDEXES, reverse_sql=migrations.RunSQL.noop)]
