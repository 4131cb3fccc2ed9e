"""The ``behavior-lm`` console script.

It lives outside the ``behavior_lm`` package so that it can ask the package to defer its
registrations (and with them the 5-7 s import of torch and transformers) before the package is
imported: ``behavior_lm.cli.main`` checks recipes and inputs first, then calls
``behavior_lm.register()``. The flag is removed again at once, so nothing the command starts
(``accelerate launch`` workers, user code) inherits it.
"""
from __future__ import annotations

import os
import sys

DEFER_ENV = "BEHAVIOR_LM_DEFER_REGISTRATION"   # behavior_lm.DEFER_ENV (not imported: that is the point)


def main() -> None:
    """Console-script entry point: ``behavior-lm COMMAND ...``."""
    os.environ[DEFER_ENV] = "1"
    try:
        from behavior_lm.cli.main import main as cli_main
    finally:
        os.environ.pop(DEFER_ENV, None)
    sys.exit(cli_main())
