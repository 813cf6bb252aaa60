import time

from django.core.management.base import BaseCommand

from annotate.models import Campaign
from annotate.selectors import campaign_progress, preparation_left


class Command(BaseCommand):
    help = (
        "Print the demo campaign's preparation progress every few seconds, with the time left estimated "
        "from the measured embedding rate, until its first tasks exist (or it failed). Read-only."
    )

    def add_arguments(self, parser):
        parser.add_argument("--campaign", default="lunch-verify")
        parser.add_argument("--every", type=float, default=5.0, help="seconds between lines (default 5)")
        parser.add_argument("--timeout", type=float, default=1800.0, help="stop waiting after this many seconds")

    def handle(self, *args, **options):
        started = time.monotonic()
        last = ""
        previous = None  # (monotonic time, images left) at the last poll
        while time.monotonic() - started < options["timeout"]:
            campaign = Campaign.objects.filter(slug=options["campaign"]).first()
            if campaign is None:
                self.stderr.write(f"demo_progress: no campaign {options['campaign']!r}")
                return
            progress = campaign_progress(campaign)
            if campaign.status == Campaign.Status.FAILED:
                detail = campaign.status_detail or "see the worker log"
                self.stderr.write(f"  Preparing {campaign.name} failed: {detail}")
                return
            if campaign.status != Campaign.Status.PREPARING or progress["task_count"]:
                self.stdout.write(
                    f"  Ready after {time.monotonic() - started:.0f} s: {progress['task_count']} tasks to verify."
                )
                return
            # The rate since the last line, once there is one: the runs' own averages lag behind
            # while the photos are still generated beside the embedding (issue 16: 237 s estimated
            # with 90 s to go).
            left, now = preparation_left(campaign), time.monotonic()
            if previous is not None and previous[1] > left and now > previous[0]:
                progress["eta_s"] = left / ((previous[1] - left) / (now - previous[0])) if left else None
            previous = (now, left)
            line = "  Preparing suggestions: " + progress_line(progress)
            if line != last:
                self.stdout.write(line)
                last = line
            time.sleep(options["every"])


def progress_line(progress: dict) -> str:
    """'products 3,200/10,000 at 215 images/s, photos queued; about 45 s left' from campaign_progress."""
    parts = []
    for run in progress["runs"]:
        name = run.get_target_display().lower()
        if run.status == "pending":
            parts.append(f"{name} queued")
        elif run.status == "done":
            parts.append(f"{name} done")
        else:
            rate = f" at {run.images_per_s:.0f} images/s" if run.images_per_s else ""
            parts.append(f"{name} {run.done_count:,}/{run.total_count:,}{rate}")
    text = ", ".join(parts) or "waiting for the worker"
    eta = progress.get("eta_s")
    return text + (f"; about {eta:.0f} s left" if eta is not None else "; estimating the time left")
