"""What the unit and end-to-end tests of console share."""

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run(command: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / command), *args], cwd=cwd, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)
