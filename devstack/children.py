"""Servers started by the harness die with the process that started them.

Each runs in a session of its own (so a Ctrl-C aimed at pytest or at
``make run`` does not cut it off before the service drained into it); without
this, a harness killed by a timeout would leave an orphan holding its ports
and burning CPU.
"""

from __future__ import annotations

import ctypes
import signal
import sys


def die_with_parent() -> None:
    """``preexec_fn`` for Popen: SIGTERM the child when its parent dies (Linux)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
