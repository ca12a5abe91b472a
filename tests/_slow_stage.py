"""A participant stage that blocks, to test what happens to workers when the run is killed.

It writes ``<pid>.pid`` into the folder named by ``BRAINAGE_TEST_SLOW_DIR`` (so a
test can tell which worker processes are busy), then sleeps.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def run_sleep(ctx):
    folder = Path(os.environ["BRAINAGE_TEST_SLOW_DIR"])
    (folder / f"{os.getpid()}.pid").write_text(ctx.subject)
    time.sleep(float(os.environ.get("BRAINAGE_TEST_SLOW_SECONDS", "120")))
    return {}


def main(argv):
    """Run ``brainage.cli.main(argv)`` with the sleeping stage as the structural stage."""
    from brainage import stages
    from brainage.cli import main as cli_main

    stages.STAGES["anat"] = stages.StageSpec("anat", "tests._slow_stage:run_sleep")
    return cli_main(argv)


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
