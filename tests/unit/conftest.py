"""The unit tests see Debian 12's os-release whatever the machine runs (the advice localaid gives
depends on the distribution: tests/unit/test_distro.py sets the others), so that they pass alike on
a developer's Ubuntu and on CI's Debian."""

import os
from pathlib import Path

os.environ.setdefault("LOCALAID_OS_RELEASE", str(Path(__file__).resolve().parent / "platforms" / "os-release-debian-12"))
