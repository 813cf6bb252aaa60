"""`make demo` (bin/demo) refuses a port that is taken, before doing any work, and says what to do
(issue 16, bug 3: it printed "fitcheck is running" while gunicorn had failed to bind); a stop signal
during its setup stops it at once."""

import os
import signal
import socket
import subprocess
import sys
import time
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


def _demo_with_stand_ins(tmp_path: Path) -> tuple[Path, Path]:
    """bin/demo copied into tmp_path with a stand-in `.venv/bin/python`: the port check runs in this
    Python, the workers and gunicorn sleep, and demo_setup writes what happens to it into a marks
    file and takes a minute. Returns (the script, the marks file)."""
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "demo"
    script.write_text((ROOT / "bin" / "demo").read_text())
    marks = tmp_path / "marks"
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        f"""#!/bin/bash
case "$*" in
    -c*) exec {sys.executable} "$@" ;;
    *"manage.py demo_setup"*)
        echo setup-started >> {marks}
        trap 'echo setup-stopped >> {marks}; exit 143' TERM
        sleep 60 & wait
        echo setup-finished >> {marks} ;;
    *celery*|*gunicorn*) exec sleep 60 ;;
    *) exit 0 ;;
esac
"""
    )
    os.chmod(python, 0o755)
    return script, marks


def _kill_processes_under(folder: Path) -> None:
    """SIGKILL every process whose working directory is `folder` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) == folder:
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            pass


def test_a_stop_signal_during_the_setup_stops_the_demo_at_once(tmp_path):
    """`kill <make demo's script>` while the minute-long setup runs: bash ran its trap only once the
    setup had finished, then went on to report "the web server did not start". Now the setup is
    stopped, everything else too, and the script exits 0 (a stop asked for) within seconds."""
    script, marks = _demo_with_stand_ins(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "demo.log"  # a file, not a pipe: the stand-ins' sleeps would hold a pipe open
    demo = subprocess.Popen(
        ["bash", str(script)],
        env={"PATH": "/usr/bin:/bin", "FITCHECK_DEMO_PORT": str(port), "HOME": str(tmp_path)},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (marks.exists() and "setup-started" in marks.read_text()):
            time.sleep(0.1)
        assert marks.exists(), log.read_text()
        started = time.monotonic()
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        if demo.poll() is None:
            demo.kill()
        _kill_processes_under(tmp_path)  # a failed run leaves the workers' supervising loops behind
    output = log.read_text()
    assert demo.returncode == 0, output
    assert took < 15, f"{took:.1f} s"  # the trap waits at most 5 s for the workers
    assert marks.read_text().split() == ["setup-started", "setup-stopped"]
    assert "Stopping the workers and the web server" in output
    assert "did not start" not in output and "fitcheck is running" not in output
