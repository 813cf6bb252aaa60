from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotate.exports.label_studio import LabelStudioFileInvalid, label_studio_import
from annotate.models import Campaign


class Command(BaseCommand):
    help = (
        "Import a Label Studio JSON export (tasks with annotations) into a match campaign: each task's "
        "image becomes a photo, data.candidates its candidate products (by uuid or retailer/sku, which must "
        "be in the catalog), each annotation an answer by its annotator, ground-truth annotations gold labels. "
        "Idempotent; bad tasks are reported by position while the good ones are imported. Ends with a full "
        "consensus recompute."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="Label Studio JSON export (a JSON array of tasks)")
        parser.add_argument("--campaign", required=True, help="slug of the match campaign to import into")
        parser.add_argument(
            "--images-root",
            help=(
                "folder that Label Studio's /data/upload/... and /data/local-files/?d= image URLs resolve "
                "against (never outside it); it must lie inside FITCHECK_IMPORT_ROOTS"
            ),
        )

    def handle(self, *args, file, campaign, images_root, **options):
        target = Campaign.objects.filter(slug=campaign).first()
        if target is None:
            raise CommandError(f"no campaign {campaign!r}")
        try:
            report = label_studio_import(
                campaign=target, path=Path(file), images_root=Path(images_root) if images_root else None
            )
        except LabelStudioFileInvalid as exc:
            raise CommandError(str(exc)) from exc
        for position, reason in report.errors:
            self.stderr.write(f"task {position}: {reason}")
        self.stdout.write(
            f"tasks: {report.task_created_count} created, {report.task_existing_count} already there; "
            f"answers: {report.answer_created_count} created, {report.answer_existing_count} already there; "
            f"gold labels: {report.gold_count}; bad tasks: {len(report.errors)}"
        )
        if report.errors:
            raise CommandError(f"{len(report.errors)} task(s) could not be imported (see above)")
