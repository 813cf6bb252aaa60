"""`make demo` refuses a port that is taken, before doing any work, and says what to do (issue 16,
bug 3: it printed "fitcheck is running" while gunicorn had failed to bind)."""

import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_stops_at_once_with_a_clear_message_when_its_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            ["bash", str(ROOT / "bin" / "demo")],
            env={"PATH": "/usr/bin:/bin", "FITCHECK_DEMO_PORT": str(port), "HOME": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert "FITCHECK_DEMO_PORT=" in result.stderr
    assert "fitcheck is running" not in result.stdout
