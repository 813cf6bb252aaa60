"""HTML pages: campaign list, the keyboard-first verify page (htmx partials), stats, annotators and
exports."""

import random
import uuid

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from . import roles, selectors, services
from .exports import services as export_services
from .exports.records import ExportInvalid
from .forms import ExportCreateForm
from .models import Campaign

SEED_SESSION_KEY = "fitcheck_queue_seed"


def _session_seed(request) -> int:
    """A random seed per login session: it picks where in the shuffled queue this person starts."""
    if SEED_SESSION_KEY not in request.session:
        request.session[SEED_SESSION_KEY] = random.randrange(services.SHUFFLE_SPACE)
    return request.session[SEED_SESSION_KEY]


@login_required
@require_GET
def home(request):
    campaigns = list(selectors.campaigns_for_user(request.user))
    tag_campaigns = list(selectors.tag_campaigns_for_user(request.user))
    return render(
        request,
        "annotate/home.html",
        {"campaigns": campaigns, "tag_campaigns": tag_campaigns, "roles": sorted(roles.user_roles(request.user))},
    )


def _task_context(request, campaign: Campaign, *, notice: str = "", notice_level: str = "info") -> dict:
    context = {"campaign": campaign, "notice": notice, "notice_level": notice_level, "task": None, "peek": None}
    context["today_count"] = selectors.annotator_today_count(request.user, campaign)
    if campaign.status in (Campaign.Status.PREPARING, Campaign.Status.FAILED):
        progress = context["progress"] = selectors.campaign_progress(campaign)
        if not progress["task_count"]:
            context["state"] = campaign.status
            return context
    elif not request.htmx:
        # Campaign-wide counts cost a scan of the campaign's tasks: full page loads only, never on
        # the per-answer partial.
        context["progress"] = selectors.campaign_progress(campaign)
    try:
        task = services.task_next_for(user=request.user, campaign=campaign, seed=_session_seed(request))
    except services.AnnotatorPaused:
        context["state"] = "paused"
        return context
    if task is None:
        context["state"] = "done"
        return context
    context["state"] = "task"
    context["task"] = selectors.task_with_candidates(task.pk)
    context["idempotency_key"] = uuid.uuid4().hex
    peek = services.task_peek_after(user=request.user, campaign=campaign, seed=_session_seed(request), current=task)
    if peek is not None:
        context["peek"] = selectors.task_with_candidates(peek.pk)
    return context


def _render_task(request, campaign, *, status=200, **notice):
    context = _task_context(request, campaign, **notice)
    template = "annotate/_task.html" if request.htmx else "annotate/verify.html"
    return render(request, template, context, status=status)


@login_required
@require_GET
def verify(request, slug):
    campaign = selectors.get_campaign_for_user(request.user, slug)
    return _render_task(request, campaign)


def _parse_pick(value: str) -> tuple[str, str | None]:
    """ "product:<uuid>" → ("product", uuid); "none" → ("none", None)."""
    choice, _, product = (value or "").partition(":")
    return choice, product or None


@login_required
@require_POST
def verify_answer(request, slug):
    campaign = selectors.get_campaign_for_user(request.user, slug)
    task = selectors.get_task_for_user(request.user, request.POST.get("task"))
    if task.campaign_id != campaign.pk:
        raise Http404("No such task in this campaign.")
    choice, product = _parse_pick(request.POST.get("pick", ""))
    notice = {}
    try:
        services.answer_submit(
            user=request.user,
            task=task,
            choice=choice,
            product_uuid=product,
            duration_ms=request.POST.get("duration_ms") or 0,
            idempotency_key=request.POST.get("idempotency_key", ""),
        )
    except services.AnswerInvalid as exc:
        notice = {"notice": f"That answer was not saved: {exc}", "notice_level": "error"}
    except services.AnnotatorPaused as exc:
        notice = {"notice": f"That answer was not saved: {exc.message}", "notice_level": "error"}
    except services.AnswerConflict as exc:
        notice = {"notice": f"{exc.message} Here is your next task.", "notice_level": "warning"}
    if not request.htmx:
        return redirect("annotate:verify", slug=campaign.slug)
    response = _render_task(request, campaign, **notice)
    if not notice:
        response["HX-Trigger"] = "answer-saved"
        response["HX-Trigger-After-Settle"] = _gamify_events(request.user, campaign)
    return response


def _gamify_events(user, campaign) -> str:
    """Sprint count and celebrations for the verify page (gamify.views.answer_events_header)."""
    from gamify.views import answer_events_header

    return answer_events_header(user=user, campaign=campaign)


@login_required
@require_POST
def verify_undo(request, slug):
    campaign = selectors.get_campaign_for_user(request.user, slug)
    task = services.answer_undo_last(user=request.user, campaign=campaign)
    notice = (
        {"notice": "Undone: answer it again.", "notice_level": "info"}
        if task
        else {"notice": "Nothing to undo.", "notice_level": "warning"}
    )
    if not request.htmx:
        return redirect("annotate:verify", slug=campaign.slug)
    response = _render_task(request, campaign, **notice)
    response["HX-Trigger-After-Settle"] = _gamify_events(request.user, campaign)
    return response


@login_required
@require_POST
def verify_skip(request, slug):
    """Pass over the task on screen without answering (services.task_skip): its lease is released,
    it goes back to the pool, and this person gets it again only when nothing else is left. Then
    the next task."""
    campaign = selectors.get_campaign_for_user(request.user, slug)
    task = selectors.get_task_for_user(request.user, request.POST.get("task"))
    if task.campaign_id != campaign.pk:
        raise Http404("No such task in this campaign.")
    notice = {"notice": "Skipped.", "notice_level": "info"}
    try:
        services.task_skip(user=request.user, task=task)
    except services.AnswerConflict as exc:
        notice = {"notice": exc.message, "notice_level": "warning"}
    if not request.htmx:
        return redirect("annotate:verify", slug=campaign.slug)
    context = _task_context(request, campaign, **notice)
    if context["task"] is not None and context["task"].pk == task.pk:
        context["notice"] = "Skipped, but there is no other task left for you: here it is again."
    return render(request, "annotate/_task.html", context)


@login_required
@require_GET
def my_stats(request):
    """The signed-in person's own record per campaign: answers, gold accuracy, agreement, reliability,
    speed and flags. Gold numbers move only with the periodic full recompute, so a person cannot
    tell which of their tasks were gold."""
    return render(request, "annotate/my_stats.html", {"rows": list(selectors.annotator_stats_of(request.user))})


@login_required
@require_GET
def campaign_annotators(request, slug):
    """Admins: every annotator of a campaign with their numbers and flags; pause and resume."""
    campaign = selectors.get_campaign_for_admin(request.user, slug)
    return render(
        request,
        "annotate/annotators.html",
        {
            "campaign": campaign,
            "rows": selectors.campaign_annotators(campaign),
            "summary": selectors.campaign_consensus_summary(campaign),
        },
    )


@login_required
@require_POST
def annotator_pause(request, slug, username):
    campaign = selectors.get_campaign_for_admin(request.user, slug)
    annotator = get_user_model().objects.filter(username=username).first()
    if annotator is None:
        raise Http404("No such annotator.")
    services.annotator_pause(
        campaign=campaign, annotator=annotator, paused=request.POST.get("paused") == "1", by=request.user
    )
    return redirect("annotate:campaign-annotators", slug=campaign.slug)


@login_required
@require_POST
def consensus_recompute(request, slug):
    """Queue a full consensus recompute of the campaign now (the worker runs it)."""
    campaign = selectors.get_campaign_for_admin(request.user, slug)
    services.consensus_recompute_queue(campaign=campaign)
    return redirect("annotate:campaign-annotators", slug=campaign.slug)


# -- exports -----------------------------------------------------------------------------------------


@login_required
def exports(request):
    """ML team and admins: every export snapshot, and the form that starts a new one."""
    snapshots = selectors.snapshots_for_user(request.user)
    form = ExportCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            snapshot = export_services.export_create(
                name=form.cleaned_data["name"],
                formats=form.cleaned_data["formats"],
                filters=form.filters(),
                include_answers=form.cleaned_data["include_answers"],
                include_reliability=form.cleaned_data["include_reliability"],
                embed_images=form.cleaned_data["embed_images"],
                created_by=request.user,
            )
        except ExportInvalid as exc:
            for field, messages in exc.errors.items():
                form.add_error(field if field in form.fields else None, " ".join(messages))
        else:
            return redirect("annotate:export-detail", uuid=snapshot.uuid)
    return render(request, "annotate/exports.html", {"snapshots": snapshots[:200], "form": form})


@login_required
@require_GET
def export_detail(request, uuid):
    """One snapshot: filters, counts, progress (the htmx partial polls while it builds) and files."""
    snapshot = selectors.get_snapshot_for_user(request.user, uuid)
    template = "annotate/_export_progress.html" if request.htmx else "annotate/export_detail.html"
    return render(request, template, {"snapshot": snapshot})


@login_required
@require_GET
def export_download(request, uuid, path):
    """Download one file of a finished snapshot (streamed from storage)."""
    snapshot = selectors.get_snapshot_for_user(request.user, uuid)
    try:
        full = export_services.export_file_path(snapshot=snapshot, path=path)
    except FileNotFoundError:
        raise Http404("No such file in this export.") from None
    return export_file_response(snapshot, path, full)


@login_required
@require_GET
def export_download_all(request, uuid):
    """Download every file of a finished snapshot as one ZIP archive, streamed."""
    from django.http import StreamingHttpResponse

    snapshot = selectors.get_snapshot_for_user(request.user, uuid)
    try:
        chunks = export_services.export_zip_stream(snapshot=snapshot)
    except FileNotFoundError:
        raise Http404("This export is not ready, or its files are gone.") from None
    response = StreamingHttpResponse(chunks, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{snapshot.name}-v{snapshot.version}.zip"'
    return response


def export_file_response(snapshot, path: str, full) -> FileResponse:
    """A streamed download named <name>-v<version>-<path>, with its sha256 in a header."""
    filename = f"{snapshot.name}-v{snapshot.version}-{path.replace('/', '-')}"
    response = FileResponse(open(full, "rb"), as_attachment=True, filename=filename)
    sha256 = next(f["sha256"] for f in snapshot.files if f["path"] == path)
    response["X-Checksum-Sha256"] = sha256
    response["ETag"] = f'"{sha256}"'
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response


# -- agreement report (attribute campaigns) --------------------------------------------------------


@login_required
@require_GET
def agreement_report(request, slug):
    """ML team and admins: agreement per attribute, team and pair of teams, and the persona views
    (tables and bar plots), and each tagger's reliability per attribute from the last full
    recompute; ?format=csv, ?format=personas.csv and ?format=reliability.csv download them."""
    campaign = selectors.get_attribute_campaign_for_reporter(request.user, slug)
    report = selectors.campaign_agreement_report(campaign)
    reliability = selectors.campaign_tagger_reliability(campaign)
    fmt = request.GET.get("format")
    if fmt in ("csv", "personas.csv", "reliability.csv"):
        from .agreement import rows_to_csv

        if fmt == "csv":
            body, name = rows_to_csv(report["rows"]), "agreement"
        elif fmt == "reliability.csv":
            body, name = rows_to_csv(reliability["records"]), "reliability"
        else:
            persona = report["persona"]
            body = rows_to_csv(persona.mad_rows()) + "\r\n" + rows_to_csv(persona.cosine_rows()) if persona else ""
            name = "personas"
        response = HttpResponse(body, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{campaign.slug}-{name}.csv"'
        return response
    overall = [row for row in report["rows"] if row["scope"] == "all"]
    return render(
        request,
        "annotate/agreement.html",
        {
            "campaign": campaign,
            "report": report,
            "overall": overall,
            "rows": report["rows"],
            "reliability": reliability,
        },
    )
