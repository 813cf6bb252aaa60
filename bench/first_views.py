"""The first view of each page in a fresh web process, as a new gunicorn worker serves it.

Issue 16: the first /learning/ took 48 s and the first agreement report 37 s in each gunicorn worker
(torch and statsmodels imported inside the request), the next ones 0.13 s and 2 s. For each page
this starts a fresh Python process on the demo's database, sets Django up (timed apart: a gunicorn
worker does that when it boots, before any request), logs the page's user in and times the first
and the second GET, and lists the heavy modules the process then holds.

    bench/first_views.py                      # the demo database of this checkout (var/)
    bench/first_views.py --var-dir /tmp/fitcheck-demo/var

Needs a prepared demo (`make demo` once). Prints figures, asserts nothing.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = (
    # (path, user)
    ("/", "alice"),
    ("/verify/lunch-verify/", "alice"),
    ("/me/stats/", "alice"),
    ("/me/impact/", "alice"),
    ("/leaderboard/", "alice"),
    ("/learning/", "mila"),
    ("/campaigns/catalog-tagging/agreement/", "mila"),
    ("/exports/", "mila"),
    ("/campaigns/lunch-verify/annotators/", "admin"),
    ("/announce/", "admin"),
)
HEAVY = ("torch", "torchvision", "transformers", "sentence_transformers", "crowdkit", "statsmodels", "sklearn", "scipy")

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import django
django.setup()
from django.contrib.auth import get_user_model
from django.test import Client
from django.test.utils import setup_test_environment
setup_test_environment()
setup_s = time.perf_counter() - t0
client = Client()
client.force_login(get_user_model().objects.get(username=sys.argv[2]))
times, status = [], None
for _ in range(2):
    t = time.perf_counter()
    status = client.get(sys.argv[1]).status_code
    times.append(time.perf_counter() - t)
print(json.dumps({"setup_s": setup_s, "first_s": times[0], "second_s": times[1], "status": status,
                  "heavy": sorted(m for m in sys.argv[3].split(",") if m in sys.modules)}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--var-dir", type=Path, default=ROOT / "var", help="the demo's var/ (default: this checkout's)")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(FITCHECK_ENV="demo", FITCHECK_VAR_DIR=str(args.var_dir), DJANGO_SETTINGS_MODULE="config.settings")
    print(f"first views, fresh process per page, demo database {args.var_dir}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'page':<42} {'user':<6} {'setup':>7} {'first':>7} {'second':>7}  status  heavy modules")
    for path, user in PAGES:
        result = subprocess.run(
            [sys.executable, "-c", CHILD, path, user, ",".join(HEAVY)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode:
            print(f"{path:<42} {user:<6} failed: {result.stderr.strip().splitlines()[-1]}")
            continue
        out = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"{path:<42} {user:<6} {out['setup_s']:>6.2f}s {out['first_s']:>6.2f}s {out['second_s']:>6.2f}s"
            f"  {out['status']:>6}  {', '.join(out['heavy']) or '-'}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
