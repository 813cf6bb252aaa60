"""How long `make demo` takes to be usable: a first start from a fresh clone, or a restart.

Starts `make demo` (or bin/demo with --no-make) in a checkout, on its own port, and polls:

- `url_s`: /healthz answers (what bin/demo waits for before it prints the URL);
- `page_s`: a demo employee's verify page answers 200 after logging in (a usable page);
- `task_s`: that employee's `GET /api/v1/campaigns/lunch-verify/next-task` answers 200 with a task
  (the first verifiable task; 409 campaign_preparing until the suggestions exist).

Then it stops the demo as Ctrl-C does (SIGINT to its process group) and prints the figures with the
1-minute load average before and after (the machine may be shared: a loaded run reads slower).

    bench/demo_start.py --fresh-clone          # git clone HEAD into a temp dir, `make demo` there (uv cache warm)
    bench/demo_start.py --dir /path/to/clone   # a restart: that checkout already ran the demo once
    bench/demo_start.py --fresh-clone --keep /tmp/fitcheck-demo   # keep the clone for a restart run

Never asserts anything; prints figures. The demo's own database (var/ of the checkout it runs in)
is the one it uses: point --dir at a throwaway clone, not at a checkout whose demo data you keep.
"""

import argparse
import http.cookiejar
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "fitcheck-demo"


def load_average() -> float:
    """The 1-minute load average (what `uptime` prints first)."""
    return os.getloadavg()[0]


def _request(opener, url: str, *, data: dict | None = None, headers: dict | None = None, timeout: float = 10):
    """(status, body bytes) of one request; connection errors give (None, b"")."""
    body = None if data is None else urllib.parse.urlencode(data).encode()
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None, b""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _page_ok(base: str, user: str) -> bool:
    """Log `user` in through the login form and load the verify page: True on 200."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect)
    status, body = _request(opener, f"{base}/accounts/login/")
    if status != 200:
        return False
    match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body)
    if not match:
        return False
    status, _ = _request(
        opener,
        f"{base}/accounts/login/",
        data={"username": user, "password": PASSWORD, "csrfmiddlewaretoken": match.group(1).decode()},
        headers={"Referer": f"{base}/accounts/login/"},
    )
    if status not in (302, 303):
        return False
    status, _ = _request(opener, f"{base}/verify/lunch-verify/", timeout=30)
    return status == 200


def _token(base: str, user: str) -> str | None:
    opener = urllib.request.build_opener()
    status, body = _request(
        opener,
        f"{base}/api/v1/auth/token",
        data={"username": user, "password": PASSWORD},
    )
    if status not in (200, 201):
        return None
    return json.loads(body).get("token")


def run(
    checkout: Path, *, port: int, user: str, timeout_s: float, use_make: bool, log: Path, keep_bytecode_setting: bool
) -> dict:
    """Start the demo in `checkout` and time it. Returns the figures (None for a stage not reached)."""
    drop = ("DATABASE_URL", "CELERY_BROKER_URL", "VIRTUAL_ENV")
    if not keep_bytecode_setting:
        # A user's shell: Python writes its bytecode caches (PYTHONDONTWRITEBYTECODE, set on some CI
        # and dev boxes, makes every process compile torch and Django from source: ~7 s each).
        drop += ("PYTHONDONTWRITEBYTECODE",)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["FITCHECK_DEMO_PORT"] = str(port)
    env["FITCHECK_DEMO_HOST"] = "127.0.0.1"
    cmd = ["make", "--no-print-directory", "demo"] if use_make else ["bin/demo"]
    base = f"http://127.0.0.1:{port}"
    figures = {"load_before": load_average(), "url_s": None, "page_s": None, "task_s": None}
    with log.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd, cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        token = None
        try:
            while time.monotonic() - started < timeout_s and proc.poll() is None:
                elapsed = time.monotonic() - started
                if figures["url_s"] is None:
                    status, _ = _request(urllib.request.build_opener(), f"{base}/healthz", timeout=5)
                    if status in (200, 503):
                        figures["url_s"] = elapsed
                if figures["url_s"] is not None and figures["page_s"] is None and _page_ok(base, user):
                    figures["page_s"] = time.monotonic() - started
                if figures["url_s"] is not None and figures["task_s"] is None:
                    token = token or _token(base, user)
                    if token:
                        status, _ = _request(
                            urllib.request.build_opener(),
                            f"{base}/api/v1/campaigns/lunch-verify/next-task",
                            headers={"Authorization": f"Token {token}"},
                            timeout=30,
                        )
                        if status == 200:
                            figures["task_s"] = time.monotonic() - started
                if figures["page_s"] is not None and figures["task_s"] is not None:
                    break
                time.sleep(0.25)
            figures["load_after"] = load_average()
        finally:
            stop_started = time.monotonic()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            figures["stop_s"] = time.monotonic() - stop_started
            figures["exit_code"] = proc.returncode
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--fresh-clone", action="store_true", help="git clone this repository's HEAD and start there")
    where.add_argument("--dir", type=Path, help="a checkout to (re)start the demo in")
    parser.add_argument("--keep", type=Path, help="with --fresh-clone: clone here and keep it afterwards")
    parser.add_argument("--port", type=int, default=int(os.environ.get("FITCHECK_DEMO_PORT", "8000")))
    parser.add_argument("--user", default="alice", help="the demo employee who asks for a task (default alice)")
    parser.add_argument("--timeout", type=float, default=900, help="give up after this many seconds (default 900)")
    parser.add_argument("--no-make", action="store_true", help="run bin/demo instead of `make demo` (no uv sync)")
    parser.add_argument(
        "--keep-pythondontwritebytecode", action="store_true", help="pass PYTHONDONTWRITEBYTECODE on to the demo"
    )
    args = parser.parse_args()

    temp = None
    if args.fresh_clone:
        if args.keep:
            if args.keep.exists():
                print(f"demo_start: {args.keep} exists; pick a new folder", file=sys.stderr)
                return 2
            checkout = args.keep
        else:
            temp = tempfile.mkdtemp(prefix="fitcheck-demo-")
            checkout = Path(temp) / "fitcheck"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(checkout)], check=True)
    else:
        checkout = args.dir.resolve()
    log = checkout.parent / f"demo_start-{checkout.name}.log" if temp is None else Path(temp) / "demo.log"
    try:
        figures = run(
            checkout,
            port=args.port,
            user=args.user,
            timeout_s=args.timeout,
            use_make=not args.no_make,
            log=log,
            keep_bytecode_setting=args.keep_pythondontwritebytecode,
        )
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    kind = "first start (fresh clone)" if args.fresh_clone else f"restart in {checkout}"

    def fmt(value):
        return "not reached" if value is None else f"{value:.1f} s"

    print(f"demo_start: {kind}, {'make demo' if not args.no_make else 'bin/demo'} on port {args.port}")
    print(f"  URL (healthz answers)        {fmt(figures['url_s'])}")
    print(f"  verify page 200 for {args.user:<8} {fmt(figures['page_s'])}")
    print(f"  first next-task 200          {fmt(figures['task_s'])}")
    print(f"  stopped (SIGINT) in          {figures['stop_s']:.1f} s, exit code {figures['exit_code']}")
    after = figures.get("load_after", float("nan"))
    print(f"  load average (1 min)         {figures['load_before']:.2f} before, {after:.2f} after")
    if temp is None:
        print(f"  demo output: {log}")
    return 0 if figures["task_s"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
