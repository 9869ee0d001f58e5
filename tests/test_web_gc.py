"""The web process's garbage collector (config/asgi.py): start-up objects are frozen out of full collections."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_it_takes_what_start_up_made_out_of_the_full_collections() -> None:
    # A fresh interpreter loading the application as daphne does: the count is of that process alone.
    result = subprocess.run(
        [sys.executable, "-c", "import gc, config.asgi; print(gc.get_freeze_count())"],
        cwd=ROOT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # Django, Channels and the apps: far more objects than one request makes.
    assert int(result.stdout) > 50_000
