"""The start of a backfill staging process (``backfill_stage.StagingPool``). A spawned process unpickles this
function before Django is set up, so this module imports nothing that needs Django."""

import os
import signal
import threading
import time
from typing import Any

PARENT_CHECK_SECONDS = 1.0


def start_staging_process(parent: int, staging_settings: dict[str, Any]) -> None:
    """The signals are the run's to handle (it ends the pool); the process ends with its run, even one killed
    with SIGKILL; Django is set up with the run's staging settings (which tests change at run time)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django
    from django.conf import settings

    django.setup()
    for name, value in staging_settings.items():
        setattr(settings, name, value)


def _exit_with_parent(parent: int) -> None:
    # The pool's queues never report a dead parent to its processes: each holds both ends of its own pipe.
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)
