"""How long does the agreement report of an attributes campaign take at 100,000 answers?

Builds, in bulk, an attributes campaign over --products dresses ("Clothing › Dresses › Dress", one
retailer, no images) with the default attribute schema: color, pattern, neckline (single choice),
season (multi choice) and the eight persona_* ratings (1-5), so 12 attributes per answer. Two teams
of --team-size taggers each; every product gets --raters answers (Answer, choice "tags"), each
holding one AttributeAnswer per attribute: --answers of those rows (default 100,000, rounded up to
whole products). A --calibration share of the products is the calibration sample, tagged by
--raters / 2 people of each team; the other products by --raters people drawn from everyone.

The crowd: every product has a true value per attribute (options drawn with shares falling with
their position). A tagger gives the true option with probability --agree (default 0.8), else
"cant_tell" (2%) or another option at random; for season the true set, else the true set with one
option flipped; for a persona the true rating plus rounded Gaussian noise (sd 0.8, a per-team
leniency of +-0.25), clipped to 1..5.

Then times `annotate.selectors.campaign_agreement_report(campaign)` --runs times (default 3) in a
fresh child process, so that the builder's memory does not count, split into reading the answers
(`campaign_agreement_answers`: the query and the DataFrame), `agreement.agreement_rows` (alpha and
Fleiss' kappa per attribute and scope) and `agreement.persona_views`, each timed by wrapping the
function the report calls. Prints min and median per part, answers/s, the child's peak RSS (VmHWM)
and its RSS before the first report (Django, pandas, statsmodels loaded), then figures to check the
result by: rows in the report, alpha and kappa of every variable over everyone, the persona views.

--profile runs one more report under cProfile and prints the top functions by own and cumulative
time (stats kept as var/bench/agreement/profile.pstats).

Run (default size on a 2-core VM: building takes under a minute):

    .venv/bin/python bench/agreement.py
    .venv/bin/python bench/agreement.py --answers 20000 --profile
    bin/services start
    .venv/bin/python bench/agreement.py --database-url postgres://fitcheck@127.0.0.1:55432/fitcheck_bench_agreement

State lives in var/bench/agreement/ (wiped at start: the SQLite file, the profile) or in the
--database-url database (dropped and recreated; its name must contain "bench").
"""

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (bench/ is not a package)
import numpy as np  # noqa: E402

NAME = "agreement"
BATCH = 10_000
CATEGORY_PATH = "Clothing › Dresses › Dress"
SINGLE = ("color", "pattern", "neckline")
MULTI = ("season",)
PERSONA_NOISE_SD = 0.8  # rating points
TEAM_LENIENCY = (-0.25, 0.25)  # added to every persona rating of team 0, team 1
CANT_TELL_RATE = 0.02  # of single-choice values
TEAMS = (("merchandising", "Merchandising"), ("customer-experience", "Customer experience"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build an attributes campaign of --answers attribute answers in bulk, then time the agreement "
        "report in a child process: parts, answers/s, peak memory. Uses a throwaway database.",
    )
    parser.add_argument(
        "--answers",
        type=int,
        default=100_000,
        help="attribute answers (AttributeAnswer rows), rounded up to whole products (default: %(default)s)",
    )
    parser.add_argument("--raters", type=int, default=4, help="answers (people) per product (default: %(default)s)")
    parser.add_argument("--team-size", type=int, default=20, help="taggers in each of 2 teams (default: %(default)s)")
    parser.add_argument(
        "--calibration", type=float, default=0.1, help="share of products in the calibration sample (default: 0.1)"
    )
    parser.add_argument(
        "--agree", type=float, default=0.8, help="P(a tagger gives the true option), in [0, 1] (default: 0.8)"
    )
    parser.add_argument("--runs", type=int, default=3, help="timed reports (default: %(default)s)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL URL (dropped and recreated; name must contain 'bench'); default SQLite",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the data (default: %(default)s)")
    parser.add_argument("--profile", action="store_true", help="run one more report under cProfile; print hotspots")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # internal: a campaign id
    parser.add_argument("--profile-out", default=None, help=argparse.SUPPRESS)  # internal: the child's stats file
    args = parser.parse_args(argv)
    if args.child is None:
        if args.answers < 1 or args.raters < 2 or args.team_size < args.raters or args.runs < 1:
            parser.error("need --answers >= 1, --raters >= 2, --team-size >= --raters, --runs >= 1")
        if not 0 <= args.calibration <= 1 or not 0 <= args.agree <= 1:
            parser.error("--calibration and --agree must lie in [0, 1]")
    return args


# -- building --------------------------------------------------------------------------------------


def _uuids(rng: np.random.Generator, n: int) -> list[uuid.UUID]:
    """`n` version-4 uuids drawn from `rng` (reproducible, unlike uuid.uuid4)."""
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return [uuid.UUID(bytes=row.tobytes()) for row in raw]


def _shares(n: int) -> np.ndarray:
    """How often each of `n` options is the true one: falling with position, 1/(rank+1), summing to 1."""
    weights = 1.0 / np.arange(2, n + 2)
    return weights / weights.sum()


def _single_values(rng, truth: np.ndarray, options: list[str], *, agree: float) -> list[str]:
    """One value per row: the true option (index in `truth`) with P `agree`, else "cant_tell" or
    another option, uniformly."""
    n, k = len(truth), len(options)
    u = rng.random(n)
    other = (truth + rng.integers(1, k, n)) % k
    chosen = np.where(u < agree, truth, other)
    cant_tell = (u >= agree) & (u < agree + CANT_TELL_RATE)
    return ["cant_tell" if ct else options[c] for c, ct in zip(chosen.tolist(), cant_tell.tolist(), strict=True)]


def _multi_values(rng, truth: np.ndarray, options: list[str], *, agree: float) -> list[str]:
    """One "|"-joined selection per row (option order): the true set (rows of the bool (n, k)
    `truth`) with P `agree`, else the true set with one option flipped."""
    n, k = truth.shape
    chosen = truth.copy()
    flip = np.flatnonzero(rng.random(n) >= agree)
    chosen[flip, rng.integers(0, k, len(flip))] ^= True
    return ["|".join(o for o, on in zip(options, row, strict=True) if on) for row in chosen.tolist()]


def build(args) -> dict:
    """Create the catalog, the schema, the campaign, two teams, the tasks and the answers in bulk.
    Returns {"campaign_id", "products", "calibration", "answers", "attribute_answers", "build_s"}."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from annotate.models import Answer, AttributeAnswer, Campaign, Task, Team, TeamMember
    from catalog.attribute_schema import attribute_schema_ensure
    from catalog.models import Attribute, Product, Retailer
    from catalog.services import taxonomy_path_ensure

    rng = np.random.default_rng(args.seed)
    User = get_user_model()
    n_raters = args.raters
    n_products = math.ceil(args.answers / (n_raters * (len(SINGLE) + len(MULTI) + 8)))
    with _common.Stopwatch() as sw:
        with transaction.atomic():
            node = taxonomy_path_ensure(path=CATEGORY_PATH)
            attribute_schema_ensure()
            slugs = [*SINGLE, *MULTI, *(f"persona_{p}" for p in _personas())]
            attributes = {a.slug: a for a in Attribute.objects.filter(slug__in=slugs).prefetch_related("options")}
            campaign = Campaign.objects.create(
                slug="agreement-bench",
                name="Agreement bench",
                kind=Campaign.Kind.ATTRIBUTES,
                status=Campaign.Status.ACTIVE,
                calibration_answers_per_team=max(n_raters // 2, 1),
            )
            campaign.attributes.set([attributes[s] for s in slugs])
            teams = [
                Team.objects.create(uuid=u, slug=s, name=n) for (s, n), u in zip(TEAMS, _uuids(rng, 2), strict=True)
            ]
            campaign.calibration_teams.set(teams)
            n_people = args.team_size * len(teams)
            User.objects.bulk_create([User(username=f"agreement-tagger-{i:04d}") for i in range(n_people)])
            user_ids = np.array(
                User.objects.filter(username__startswith="agreement-tagger-")
                .order_by("username")
                .values_list("pk", flat=True)
            )
            team_of = np.arange(n_people) // args.team_size  # person -> team index
            TeamMember.objects.bulk_create(
                [TeamMember(team=teams[t], user_id=int(u)) for u, t in zip(user_ids, team_of, strict=True)]
            )
            retailer = Retailer.objects.create(slug="agreement-bench", name="Agreement bench retail")
            Product.objects.bulk_create(
                [
                    Product(
                        uuid=u, retailer=retailer, sku=f"AB-{i:06d}", title=f"Bench dress {i}", master_category=node
                    )
                    for i, u in enumerate(_uuids(rng, n_products))
                ],
                batch_size=BATCH,
            )
            product_ids = list(Product.objects.filter(retailer=retailer).order_by("pk").values_list("pk", flat=True))
            is_calibration = np.zeros(n_products, bool)
            is_calibration[rng.choice(n_products, round(n_products * args.calibration), replace=False)] = True
            shuffle = rng.integers(0, 2**31, n_products)
            Task.objects.bulk_create(
                [
                    Task(
                        uuid=u,
                        campaign=campaign,
                        product_id=pid,
                        shuffle_key=int(shuffle[i]),
                        is_calibration=bool(is_calibration[i]),
                        answer_count=n_raters,
                    )
                    for i, (pid, u) in enumerate(zip(product_ids, _uuids(rng, n_products), strict=True))
                ],
                batch_size=BATCH,
            )
            task_ids = list(Task.objects.filter(campaign=campaign).order_by("pk").values_list("pk", flat=True))

        # People per product: n_raters distinct from everyone; on calibration products half from each team.
        people = np.argsort(rng.random((n_products, n_people)), axis=1)[:, :n_raters]
        per_team = [n_raters - n_raters // 2, n_raters // 2]
        for i in np.flatnonzero(is_calibration):
            picks = [t * args.team_size + rng.choice(args.team_size, k, replace=False) for t, k in enumerate(per_team)]
            people[i] = np.concatenate(picks)
        product_of = np.repeat(np.arange(n_products), n_raters)  # one per Answer, product by product
        person_of = people.reshape(-1)
        n_answers = len(product_of)
        durations = np.maximum(rng.lognormal(math.log(5000), 0.4, n_answers).astype(np.int64), 1500)
        for start in range(0, n_answers, BATCH):
            stop = min(start + BATCH, n_answers)
            with transaction.atomic():
                Answer.objects.bulk_create(
                    [
                        Answer(
                            uuid=u,
                            task_id=task_ids[product_of[j]],
                            annotator_id=int(user_ids[person_of[j]]),
                            choice=Answer.Choice.TAGS,
                            product=None,
                            label="",
                            duration_ms=int(durations[j]),
                            is_too_fast=False,
                            idempotency_key=f"ab{j}",
                        )
                        for j, u in zip(range(start, stop), _uuids(rng, stop - start), strict=True)
                    ],
                    batch_size=BATCH,
                )
        answer_ids = list(
            Answer.objects.filter(task__campaign=campaign).order_by("pk").values_list("pk", flat=True)
        )  # inserted in order: answer_ids[j] is row j

        # Values, attribute by attribute (column j: Answer j).
        values: dict[str, list[str]] = {}
        for slug in SINGLE:
            options = [o.value for o in attributes[slug].options.all()]
            truth = rng.choice(len(options), n_products, p=_shares(len(options)))
            values[slug] = _single_values(rng, truth[product_of], options, agree=args.agree)
        for slug in MULTI:
            options = [o.value for o in attributes[slug].options.all()]
            truth = rng.random((n_products, len(options))) < 0.4
            values[slug] = _multi_values(rng, truth[product_of], options, agree=args.agree)
        leniency = np.asarray(TEAM_LENIENCY)[team_of[person_of]]
        for persona in _personas():
            truth = rng.integers(1, 6, n_products)
            noisy = truth[product_of] + leniency + rng.normal(0, PERSONA_NOISE_SD, n_answers)
            values[f"persona_{persona}"] = [str(v) for v in np.clip(np.rint(noisy), 1, 5).astype(int).tolist()]
        rows = [(answer_ids[j], attributes[slug].pk, values[slug][j]) for j in range(n_answers) for slug in slugs]
        for start in range(0, len(rows), BATCH):
            with transaction.atomic():
                AttributeAnswer.objects.bulk_create(
                    [AttributeAnswer(answer_id=a, attribute_id=s, value=v) for a, s, v in rows[start : start + BATCH]],
                    batch_size=BATCH,
                )
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                for name in ("annotate_attributeanswer", "annotate_answer", "annotate_task", "annotate_teammember"):
                    cursor.execute(f"VACUUM ANALYZE {name}")
            else:
                cursor.execute("ANALYZE")
    built = {
        "campaign_id": campaign.pk,
        "products": n_products,
        "calibration": int(is_calibration.sum()),
        "answers": n_answers,
        "attribute_answers": len(rows),
        "attributes": len(slugs),
        "people": n_people,
        "build_s": sw.seconds,
    }
    print(
        f"built: {n_products:,} products ({built['calibration']:,} calibration), {n_answers:,} answers by "
        f"{n_people} taggers in 2 teams, {len(rows):,} attribute answers ({len(slugs)} attributes each) "
        f"in {sw.seconds:.0f} s",
        flush=True,
    )
    return built


def _personas() -> tuple[str, ...]:
    from catalog.attribute_schema import PERSONAS

    return PERSONAS


# -- the child: time the report --------------------------------------------------------------------


class _Timed:
    """Replace `owner.name` (a function) with a wrapper that adds each call's wall time to
    `self.seconds`; restored on exit."""

    def __init__(self, owner, name: str):
        self.owner, self.name, self.seconds = owner, name, 0.0

    def __enter__(self):
        self.original = getattr(self.owner, self.name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        setattr(self.owner, self.name, timed)
        return self

    def __exit__(self, *exc):
        setattr(self.owner, self.name, self.original)
        return False


def _summary(report: dict) -> dict:
    """The figures a reader checks the report by, JSON-ready."""
    rows = report["rows"]
    persona = report["persona"]
    return {
        "row_count": len(rows),
        "answer_count": report["answer_count"],
        "item_count": report["item_count"],
        "calibration_item_count": report["calibration_item_count"],
        "teams": report["teams"],
        "rows_all": [r for r in rows if r["scope"] == "all"],
        "rows_color": [r for r in rows if r["attribute"] == "color"],
        "cosine_rows": persona.cosine_rows() if persona else [],
        "mad_rows": persona.mad_rows() if persona else [],
    }


def report_child(campaign_id: int, *, runs: int, profile: str | None) -> None:
    """Entry point of the child process (bench/agreement.py --child ID, with the parent's
    environment): the agreement report `runs` times, one JSON line each (total and parts in s, peak
    RSS in MB), then one with the report's figures and, with `profile`, one with the cProfile top."""
    if str(_common.ROOT) not in sys.path:
        sys.path.insert(0, str(_common.ROOT))
    _common.django_ready(migrate=False)
    import pandas  # noqa: F401  (loaded before the base RSS is read, as the report needs it)

    from annotate import agreement, selectors
    from annotate.models import Campaign

    campaign = Campaign.objects.get(pk=campaign_id)
    print(json.dumps({"base_rss_mb": _common.peak_rss_mb()}), flush=True)
    report = None
    for run in range(runs):
        with (
            _Timed(selectors, "campaign_agreement_answers") as read,
            _Timed(agreement, "agreement_rows") as rows,
            _Timed(agreement, "persona_views") as persona,
            _common.Stopwatch() as sw,
        ):
            report = selectors.campaign_agreement_report(campaign)
        print(
            json.dumps(
                {
                    "run": run + 1,
                    "total_s": sw.seconds,
                    "read_s": read.seconds,
                    "rows_s": rows.seconds,
                    "persona_s": persona.seconds,
                    "answer_count": report["answer_count"],
                    "peak_rss_mb": _common.peak_rss_mb(),
                }
            ),
            flush=True,
        )
    print(json.dumps({"summary": _summary(report)}, default=str), flush=True)
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        selectors.campaign_agreement_report(campaign)
        profiler.disable()
        profiler.dump_stats(profile)
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(20)
        stats.sort_stats("cumulative").print_stats(30)
        print(json.dumps({"profile_top": text.getvalue()}), flush=True)


# -- the parent ------------------------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(args) -> int:
    env = _common.bench_environment(NAME, database_url=args.database_url)
    vendor = _common.django_ready()
    from importlib.metadata import version

    print(
        f"agreement: {args.answers:,} attribute answers asked, {args.raters} raters per product, 2 teams of "
        f"{args.team_size}, calibration share {args.calibration}, P(agree) {args.agree}, seed {args.seed}; "
        f"{_common.database_label(args.database_url)}; pandas {version('pandas')}, krippendorff "
        f"{version('krippendorff')}, statsmodels {version('statsmodels')}; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    built = build(args)
    from django.db import connections

    connections.close_all()  # the child reads alone; no connection of ours holds a SQLite snapshot
    profile_out = _common.BENCH_VAR / NAME / "profile.pstats" if args.profile else None
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(built["campaign_id"])]
    command += ["--runs", str(args.runs)] + (["--profile-out", str(profile_out)] if profile_out else [])
    started = time.perf_counter()
    child = subprocess.run(
        command,
        env=env | {"PYTHONUNBUFFERED": "1"},
        cwd=_common.ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    child_wall = time.perf_counter() - started
    lines = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0:
        print(child.stdout[-3000:], child.stderr[-3000:], sep="\n")
        raise SystemExit(f"the report child failed with exit code {child.returncode}")
    base_mb = next(line["base_rss_mb"] for line in lines if "base_rss_mb" in line)
    runs = [line for line in lines if "run" in line]
    summary = next(line["summary"] for line in lines if "summary" in line)

    print(
        f"\n== campaign_agreement_report ({_common.database_label(args.database_url)}; {built['products']:,} "
        f"products, {built['answers']:,} answers, {built['attribute_answers']:,} attribute answers; database "
        f"built in {built['build_s']:.0f} s) =="
    )
    headers = ["run", "report s", "read answers s", "agreement_rows s", "persona_views s", "other s", "answers/s"]
    table_rows = [
        [
            r["run"],
            f"{r['total_s']:.2f}",
            f"{r['read_s']:.2f}",
            f"{r['rows_s']:.2f}",
            f"{r['persona_s']:.2f}",
            f"{r['total_s'] - r['read_s'] - r['rows_s'] - r['persona_s']:.2f}",
            f"{r['answer_count'] / r['total_s']:,.0f}",
        ]
        for r in runs
    ]
    for label, pick in (("min", min), ("median", statistics.median)):
        parts = {k: pick(r[k] for r in runs) for k in ("total_s", "read_s", "rows_s", "persona_s")}
        table_rows.append(
            [
                label,
                f"{parts['total_s']:.2f}",
                f"{parts['read_s']:.2f}",
                f"{parts['rows_s']:.2f}",
                f"{parts['persona_s']:.2f}",
                "",
                f"{summary['answer_count'] / parts['total_s']:,.0f}",
            ]
        )
    print(_common.table(headers, table_rows))
    print(
        f"peak RSS {max(r['peak_rss_mb'] for r in runs):.0f} MB (child's VmHWM; {base_mb:.0f} MB before the "
        f"first report, Django and pandas loaded); child process wall time incl. Django start-up "
        f"{child_wall:.1f} s"
        + ("" if not args.profile else ", one profiled report included")
        + "\n(read answers: campaign_agreement_answers, the query and the DataFrame; each part min/median on "
        "its own; answers/s: attribute answers in the report / report s)"
    )

    print(
        f"\n== the report: {summary['row_count']} rows; {summary['answer_count']:,} answers counted, "
        f"{summary['item_count']:,} items ({summary['calibration_item_count']:,} calibration); teams "
        f"{', '.join(summary['teams'])} =="
    )
    color = {r["scope"]: r for r in summary["rows_color"]}
    print(
        f"color alpha: all {_fmt(color['all']['alpha'])}, "
        + ", ".join(f"{s} {_fmt(r['alpha'])}" for s, r in color.items() if s != "all")
    )
    print(
        _common.table(
            ["variable (scope all)", "level", "items", "answers", "alpha", "Fleiss kappa", "kappa items", "k"],
            [
                [
                    r["attribute"],
                    r["level"],
                    f"{r['item_count']:,}",
                    f"{r['answer_count']:,}",
                    _fmt(r["alpha"]),
                    _fmt(r["fleiss_kappa"]),
                    "-" if r["fleiss_item_count"] is None else f"{r['fleiss_item_count']:,}",
                    "-" if r["fleiss_raters_per_item"] is None else r["fleiss_raters_per_item"],
                ]
                for r in summary["rows_all"]
            ],
        )
    )
    for c in summary["cosine_rows"]:
        mad = [m for m in summary["mad_rows"] if (m["group_a"], m["group_b"]) == (c["group_a"], c["group_b"])]
        print(
            f"persona {c['group_a']} vs {c['group_b']} over {c['item_count']:,} items: across median "
            f"{_fmt(c['across_median'])} (share > {c['threshold_low']}: {_fmt(c['share_above_low'], 2)}, > "
            f"{c['threshold_high']}: {_fmt(c['share_above_high'], 2)}), within medians {_fmt(c['within_a_median'])} "
            f"/ {_fmt(c['within_b_median'])}; mean abs diff "
            + ", ".join(f"{m['persona']} {_fmt(m['mean_abs_diff'], 2)}" for m in mad)
        )
    print(
        f"(the crowd: P(agree) {args.agree}; persona ratings with noise sd {PERSONA_NOISE_SD} and one team "
        f"{TEAM_LENIENCY[1] - TEAM_LENIENCY[0]:.2f} points more lenient, so a mean abs diff somewhat above that)"
    )

    profile_top = next((line["profile_top"] for line in lines if "profile_top" in line), None)
    if profile_top:
        print(f"\n-- cProfile of one report ({profile_out}) --")
        print(profile_top.strip()[:12000])
    print(f"\n({vendor}) load average now {os.getloadavg()[0]:.2f}")
    os.environ.pop("DATABASE_URL", None)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        report_child(args.child, runs=args.runs, profile=args.profile_out)
        return 0
    started = time.perf_counter()
    code = report(args)
    print(f"total {time.perf_counter() - started:.0f} s")
    return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except _common.BenchError as exc:
        print(f"agreement: {exc}", file=sys.stderr)
        sys.exit(2)
