"""Helpers shared by the bench/ scripts: a throwaway database and MEDIA_ROOT, Django setup, statistics.

Every bench runs on its own state under var/bench/<name>/ (SQLite file, media, logs), wiped at the
start, so it never touches the demo database. With --database-url it runs on PostgreSQL instead;
that database is dropped and created afresh, so its name must contain "bench" (fitcheck_bench, say).
"""

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH_VAR = ROOT / "var" / "bench"


class BenchError(RuntimeError):
    """The bench cannot run as asked; the message says why."""


def _postgres_reset(database_url: str) -> None:
    """Drop and create the database named in `database_url` (connecting to its server's `postgres`
    database). Refuses names without "bench": this is only for throwaway databases."""
    import psycopg

    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    if "bench" not in name:
        raise BenchError(
            f"refusing to drop database {name!r}: the bench recreates its database, so its name must "
            "contain 'bench' (e.g. postgres://fitcheck@127.0.0.1:55432/fitcheck_bench)"
        )
    admin_url = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def bench_environment(name: str, *, database_url: str | None = None) -> dict[str, str]:
    """Point this process (and the returned env, for subprocesses) at fresh state for bench `name`.

    Wipes var/bench/<name>/ and sets FITCHECK_VAR_DIR (hence MEDIA_ROOT), DATABASE_URL (a SQLite
    file there by default, else `database_url`, recreated), DJANGO_SETTINGS_MODULE, and puts the
    repository root on sys.path. Call before django.setup().

    Returns:
        A copy of os.environ after the changes.

    Raises:
        BenchError: a PostgreSQL database name without "bench".
    """
    var_dir = BENCH_VAR / name
    if database_url:
        _postgres_reset(database_url)
    if var_dir.exists():
        shutil.rmtree(var_dir)
    var_dir.mkdir(parents=True)
    if not database_url:
        database_url = f"sqlite:///{var_dir / 'bench.sqlite3'}"
    os.environ.update(
        {
            "FITCHECK_VAR_DIR": str(var_dir),
            "MEDIA_ROOT": str(var_dir / "media"),
            "STATIC_ROOT": str(var_dir / "staticfiles"),
            "DATABASE_URL": database_url,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            # A local install (keys generated under var_dir) whose API is not throttled: the benches
            # measure the app, not the rate limits.
            "FITCHECK_ENV": os.environ.get("FITCHECK_ENV", "demo"),
            "FITCHECK_THROTTLE_ANON": "1000000/minute",
            "FITCHECK_THROTTLE_USER": "1000000/minute",
        }
    )
    # A Celery broker is never contacted by the benches, but keep the default one under var/bench too.
    os.environ.pop("CELERY_BROKER_URL", None)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return dict(os.environ)


def django_ready(*, migrate: bool = True) -> str:
    """django.setup(), then migrate the (fresh) database quietly. Returns the database vendor."""
    import django
    from django.core.management import call_command
    from django.db import connection

    django.setup()
    if migrate:
        call_command("migrate", interactive=False, verbosity=0)
    return connection.vendor


def database_label(url: str | None) -> str:
    """A short, password-free description of the database: "sqlite" or "postgresql host:port/name"."""
    if not url or url.startswith("sqlite"):
        return "sqlite"
    parts = urlsplit(url)
    return f"postgresql {parts.hostname}:{parts.port or 5432}{parts.path}"


# -- statistics ------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); 95% for the default z.

    Returns (low, high) in [0, 1]; (0, 1) when n is 0.
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def percentile(values, q: float) -> float:
    """The q-th percentile (q in [0, 100]) with linear interpolation (numpy's default); nan if empty."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def table(headers: list[str], rows: list[list], *, align: str | None = None) -> str:
    """A plain-text table, columns padded; `align` holds one of "<" / ">" per column (default:
    the first column left, the rest right)."""
    align = align or "<" + ">" * (len(headers) - 1)
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, align, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


class Stopwatch:
    """with Stopwatch() as sw: ...; sw.seconds is the wall-clock time of the block."""

    def __enter__(self):
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
        return False


def int_list(*, low: int, high: int, what: str):
    """An argparse type: "96,128" → [96, 128], each value in [low, high], at least one."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not values or any(not low <= v <= high for v in values):
            raise argparse.ArgumentTypeError(f"{what} must be between {low} and {high}")
        return values

    return parse


def peak_rss_mb() -> float:
    """This process's peak resident set in MB: VmHWM from /proc/self/status. Not ru_maxrss, which on
    Linux keeps the high-water mark of the address space that exec replaced, so a child started by a
    big parent reports the parent's RSS at fork time."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
