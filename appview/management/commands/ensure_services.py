"""Checks that PostgreSQL and Redis answer and creates the database when it is missing."""

from typing import Any

import psycopg
import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from psycopg import sql

from pipeline import redis_store

POSTGRES_HINT = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start "
    "(or point DATABASE_URL at a running server)"
)
REDIS_HINT = (
    'start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no '
    "(or point REDIS_URL at a running server)"
)


class Command(BaseCommand):
    help = "Check that PostgreSQL and Redis answer; create the configured database if it does not exist."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            redis_store.connect().ping()
        except redis.RedisError as exc:
            raise CommandError(f"Redis at {settings.REDIS_URL} does not answer ({exc}); {REDIS_HINT}") from None

        db = settings.DATABASE_URL
        conninfo = {"host": db.host, "port": db.port, "user": db.user, "password": db.password}
        conninfo = {name: value for name, value in conninfo.items() if value}
        try:
            with psycopg.connect(dbname="postgres", autocommit=True, connect_timeout=5, **conninfo) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db.name]).fetchone()
                if not exists:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db.name)))
                    self.stdout.write(f"Created database {db.name}")
        except psycopg.OperationalError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CommandError(f"PostgreSQL does not answer ({first_line}); {POSTGRES_HINT}") from None
        self.stdout.write("PostgreSQL and Redis answer")
