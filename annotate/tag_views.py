"""HTML pages of attribute tagging (campaign kind "attributes"): the keyboard-first tagging page with
its htmx partial, and the campaign's printable guide."""

import re
import uuid
from urllib.parse import urlsplit

import markdown
import nh3
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Prefetch
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from catalog.attribute_schema import CATEGORY_SLUG, attribute_applies, category_paths, category_value
from catalog.models import Attribute, Product, ProductImage
from mlcore.models import AttributePrediction, ModelVersion

from . import selectors, services, tagging
from .models import Campaign, GuideRead, Task
from .views import _session_seed

# Option keys in order: 1-9, then a-z without the letters the page uses itself (g: the guide,
# k: skip, z: undo). 0 is no option's key either: held, it zooms the product's image (tag.js).
NAVIGATION_KEYS = frozenset("gkz")
OPTION_KEYS = [k for k in "123456789abcdefghijklmnopqrstuvwxyz" if k not in NAVIGATION_KEYS]
VALUE_PREFIX = "attr-"
SUGGESTED_PREFIX = "suggested-"
CONFIDENCE_PREFIX = "confidence-"


def markdown_html(text: str) -> str:
    """Markdown rendered to HTML and sanitised with nh3 (no script, event handler or javascript:
    URL survives), so that an admin-written guide cannot run code in a tagger's browser. Images
    keep their src only when it is this server's (`_same_origin_src`): an external image would
    tell a third party who opened the guide and when (a tracking pixel)."""
    return nh3.clean(
        markdown.markdown(text or "", extensions=["sane_lists", "tables"]), attribute_filter=_guide_attribute
    )


def _guide_attribute(tag: str, attribute: str, value: str) -> str | None:
    if tag == "img" and attribute == "src":
        return value if _same_origin_src(value) else None
    return value


_C0_AND_SPACE = "".join(map(chr, range(0x21)))  # what browsers strip from both ends of a URL


def _same_origin_src(value: str) -> bool:
    """Whether an image URL stays on this server: relative ("a.png", "/media/a.png") or starting
    with FITCHECK_PUBLIC_URL's origin. Browsers drop tabs and newlines from URLs and read "\\" as
    "/", so "/\\evil.example" and "//evil.example" are other servers and refused."""
    url = re.sub(r"[\t\n\r]", "", value).strip(_C0_AND_SPACE).replace("\\", "/")
    parts = urlsplit(url)
    if not parts.scheme and not parts.netloc and not url.startswith("//"):
        return ":" not in url.split("/", 1)[0]  # no "data:" or other scheme hiding in the first segment
    public = urlsplit(settings.FITCHECK_PUBLIC_URL)
    return (parts.scheme.lower(), parts.netloc.lower()) == (public.scheme.lower(), public.netloc.lower())


# -- reads ---------------------------------------------------------------------------------------------


def _get_tag_task(campaign: Campaign, task_uuid, *, images: bool = True) -> Task:
    """The product task `task_uuid` of `campaign`, with its product and categories, and with
    `images`, the product's images in order (2 queries; 1 without).

    Raises:
        Http404: no such product task in this campaign (or a malformed uuid).
    """
    queryset = Task.objects.select_related("product__native_category", "product__master_category")
    if images:
        queryset = queryset.prefetch_related(
            Prefetch("product__images", queryset=ProductImage.objects.order_by("position", "pk"))
        )
    try:
        task = queryset.get(uuid=task_uuid, campaign=campaign, product__isnull=False)
    except (Task.DoesNotExist, ValidationError, ValueError, TypeError):
        raise Http404("No such task in this campaign.") from None
    task.campaign = campaign
    return task


def _suggestions(
    *, product: Product, attributes: list[Attribute]
) -> tuple[dict[str, tuple[str, float]], dict[str, tuple[str, float]]]:
    """The active model's predictions for the form, from the most recent model version that
    predicted each attribute (1 query): (suggestions, back-offs).

    suggestions: {attribute slug: (value, confidence in [0, 1])}, the values that pre-fill the form;
        a value the attribute no longer allows is dropped.
    back-offs: {attribute slug: (TaxonomyNode.path, confidence in [0, 1])} for a category prediction
        whose leaf was unsure (AttributePrediction.backoff_path): its leaf is not a suggestion, so
        the form asks for the leaf instead of pre-selecting a guess."""
    by_id = {a.pk: a for a in attributes}
    rows = (
        # The active model's (a retired or rolled-back model's predictions are not shown).
        AttributePrediction.objects.filter(
            product=product, attribute_id__in=list(by_id), model_version__status=ModelVersion.Status.ACTIVE
        )
        .order_by("attribute_id", "-model_version__created_at", "-model_version_id")
        .values_list("attribute_id", "value", "confidence", "backoff_path", "backoff_confidence")
    )
    found: dict[str, tuple[str, float]] = {}
    backoffs: dict[str, tuple[str, float]] = {}
    for attribute_id, value, confidence, backoff_path, backoff_confidence in rows:
        attribute = by_id[attribute_id]
        if attribute.slug in found or attribute.slug in backoffs:
            continue
        if backoff_path:
            backoffs[attribute.slug] = (backoff_path, min(max(float(backoff_confidence or 0.0), 0.0), 1.0))
            continue
        allowed = attribute.values()
        parts = [v for v in value.split("|") if v] if attribute.kind == Attribute.Kind.MULTI else [value]
        if all(v in allowed for v in parts):
            found[attribute.slug] = (value, min(max(float(confidence), 0.0), 1.0))
    return found, backoffs


def _applies_by_category(attributes: list[Attribute], *, catalog_value: str | None = None) -> dict[str, str]:
    """{attribute slug: the category option values it applies to, space-separated} for the attributes
    limited to some categories (the page's data-applies); attributes for every category are left out.
    `catalog_value`, the category value of the product's master category, is listed too when it is
    not an option (an inner node, "Shoes"): tag.js falls back to it while no leaf is chosen (1 query)."""
    category = next(a for a in attributes if a.slug == CATEGORY_SLUG)
    paths = category_paths()
    values = [o.value for o in category.options.all()]
    if catalog_value and catalog_value not in values:
        values.append(catalog_value)
    return {
        a.slug: " ".join(v for v in values if attribute_applies(a, paths.get(v)))
        for a in attributes
        if a.applies_to.all()
    }


def _category_hint(*, product: Product, backoff: tuple[str, float] | None, options: set[str], asks: bool) -> str:
    """The line beside the category field when it is not simply pre-filled: the model's back-off
    ("Model: Shoes (0.97)", the node's path and probability) and the catalog's category when it is
    an inner node of the taxonomy, not one of the leaves offered ("Catalog: Shoes"); with `asks` (no
    leaf pre-selected), "— which kind?" after them. "" when there is neither."""
    parts = []
    if backoff is not None:
        path, confidence = backoff
        parts.append(f"Model: {path} ({confidence:.2f})")
    master = product.master_category if product.master_category_id else None
    if master is not None and category_value(master.path) not in options:
        parts.append(f"Catalog: {master.path}")
    if not parts:
        return ""
    return " · ".join(parts) + (" — which kind?" if asks else "")


def _option_label(value: str, labels: dict[str, str]) -> str:
    return "Can't tell" if value == Attribute.CANT_TELL else labels.get(value, value)


def _fields(*, attributes, suggestions, posted: dict | None, errors: dict, optional=frozenset()) -> list[dict]:
    """One dict per attribute for _tag_task.html: its options with their keys and whether they are
    checked (the posted values on a re-render, else the model's suggestion), the suggestion, the
    errors and whether it is required (not in `optional`, ids of the campaign's optional attributes;
    a multi choice always has an answer, nothing ticked being "none of these")."""
    fields = []
    for attribute in attributes:
        suggestion = suggestions.get(attribute.slug)
        multi = attribute.kind == Attribute.Kind.MULTI
        if posted is not None:
            raw = posted.get(attribute.slug)
            chosen = set(raw) if isinstance(raw, list) else ({raw} if raw else set())
        elif suggestion is not None:
            chosen = set(suggestion[0].split("|")) if multi else {suggestion[0]}
        else:
            chosen = set()
        labels = {o.value: o.label for o in attribute.options.all()}
        options = [
            {
                "value": value,
                "label": _option_label(value, labels),
                "key": OPTION_KEYS[i] if i < len(OPTION_KEYS) else "",
                "checked": value in chosen,
                "suggested": suggestion is not None and value in suggestion[0].split("|"),
            }
            for i, value in enumerate(attribute.values())
        ]
        fields.append(
            {
                "attribute": attribute,
                "input_type": "checkbox" if multi else "radio",
                "name": VALUE_PREFIX + attribute.slug,
                "options": options,
                "suggestion": suggestion,
                "suggestion_percent": round(suggestion[1] * 100) if suggestion else None,
                "errors": errors.get(attribute.slug, []),
                "is_optional": attribute.pk in optional,
            }
        )
    return fields


def _tag_context(
    request,
    campaign: Campaign,
    *,
    task: Task | None = None,
    posted: dict | None = None,
    errors: dict | None = None,
    notice: str = "",
    notice_level: str = "info",
) -> dict:
    """The tagging partial's context: the given task (a re-render with the posted values and errors)
    or the person's next one (tagging.tag_next_for, which leases it)."""
    context = {"campaign": campaign, "notice": notice, "notice_level": notice_level, "task": None}
    context["today_count"] = selectors.annotator_today_count(request.user, campaign)
    if task is None:
        try:
            next_task = tagging.tag_next_for(user=request.user, campaign=campaign, seed=_session_seed(request))
        except services.AnnotatorPaused:
            context["state"] = "paused"
            return context
        if next_task is None:
            context["state"] = "done"
            return context
        task = _get_tag_task(campaign, next_task.uuid)
    product = task.product
    every = tagging.campaign_attributes(campaign)
    errors = errors or {}
    master_value = category_value(product.master_category.path if product.master_category_id else None)
    hint = ""
    if any(a.slug == CATEGORY_SLUG for a in every):
        # The tagger may correct the category: every attribute is on the page, those that do not apply
        # to the chosen category hidden (tag.js shows them when the category changes). Until a leaf is
        # chosen, the catalog's category rules, also when it is an inner node ("Shoes": no option, so
        # nothing is pre-selected; attribute_applies covers its ancestors).
        attributes = every
        suggestions, backoffs = _suggestions(product=product, attributes=attributes)
        chosen = (posted or {}).get(CATEGORY_SLUG) or (suggestions.get(CATEGORY_SLUG) or ("",))[0] or master_value
        shown = tagging.attributes_for_answer(attributes=every, product=product, values={CATEGORY_SLUG: chosen})
        applies = _applies_by_category(every, catalog_value=master_value)
        category = next(a for a in every if a.slug == CATEGORY_SLUG)
        hint = _category_hint(
            product=product,
            backoff=backoffs.get(CATEGORY_SLUG),
            options={o.value for o in category.options.all()},
            asks=not ((posted or {}).get(CATEGORY_SLUG) or CATEGORY_SLUG in suggestions),
        )
    else:
        attributes = tagging.attributes_for_product(attributes=every, product=product)
        suggestions, _ = _suggestions(product=product, attributes=attributes)
        shown, applies = attributes, {}
    # Sampled personas: only the ones this tagger is asked are on the form (never sent otherwise).
    personas = [a for a in shown if tagging.is_persona(a)]
    asked = {a.pk for a in tagging.personas_asked(task=task, personas=personas, user=request.user)}
    attributes = [a for a in attributes if not tagging.is_persona(a) or a.pk in asked]
    shown = [a for a in shown if not tagging.is_persona(a) or a.pk in asked]
    shown_slugs = {a.slug for a in shown}
    optional = tagging.optional_attribute_ids(campaign)
    fields = _fields(attributes=attributes, suggestions=suggestions, posted=posted, errors=errors, optional=optional)
    for field in fields:
        field["applies"] = applies.get(field["attribute"].slug, "")
        field["hidden"] = field["attribute"].slug not in shown_slugs
        field["hint"] = hint if field["attribute"].slug == CATEGORY_SLUG else ""
    context.update(
        state="task",
        task=task,
        product=product,
        master_category_value=master_value or "",
        images=list(product.images.all()),
        idempotency_key=uuid.uuid4().hex,
        fields=fields,
        other_errors=[f"{slug}: {' '.join(reasons)}" for slug, reasons in errors.items() if slug not in shown_slugs],
        personas_sampled=len(asked) < len(personas),
        persona_count=len(personas),
    )
    # The first attribute with an error is the active one on a re-render.
    visible = [f for f in context["fields"] if not f["hidden"]]
    context["active_index"] = next((i for i, f in enumerate(visible) if f["errors"]), 0)
    if visible:
        visible[context["active_index"]]["active"] = True
    return context


def _render_tag(request, campaign: Campaign, **kwargs):
    context = _tag_context(request, campaign, **kwargs)
    template = "annotate/_tag_task.html" if request.htmx else "annotate/tag.html"
    return render(request, template, context)


# -- pages ---------------------------------------------------------------------------------------------


@login_required
@require_GET
def tag(request, slug):
    """The tagging page: one product at a time, keyboard first. A person who has not opened the
    campaign's guide is sent there first."""
    campaign = tagging.get_tag_campaign_for_user(request.user, slug)
    unread = _guide_unread(request, campaign)
    return unread or _render_tag(request, campaign)


def _guide_unread(request, campaign: Campaign):
    """A redirect to the guide when this person has not opened it yet, else None."""
    if GuideRead.objects.filter(campaign=campaign, user=request.user).exists():
        return None
    guide_url = reverse("annotate:tag-guide", args=[campaign.slug])
    messages.info(request, "Read the guide before your first task.")
    if request.htmx:
        return HttpResponseClientRedirect(guide_url)
    return redirect(guide_url)


def _parse_values(post) -> tuple[dict, dict]:
    """(values, suggestions) from the form: {slug: value, or a list when several were sent} and
    {slug: (suggested value, confidence in [0, 1] or None)}. Unchecked multi choices send nothing,
    which tag_values_clean reads as none selected."""
    values, suggestions = {}, {}
    for key in post:
        if key.startswith(VALUE_PREFIX):
            sent = post.getlist(key)
            values[key.removeprefix(VALUE_PREFIX)] = sent[0] if len(sent) == 1 else sent
        elif key.startswith(SUGGESTED_PREFIX):
            slug = key.removeprefix(SUGGESTED_PREFIX)
            try:
                confidence = float(post.get(CONFIDENCE_PREFIX + slug, ""))
            except ValueError:
                confidence = None
            if confidence is not None and not 0.0 <= confidence <= 1.0:
                confidence = None
            suggestions[slug] = (post.get(key, ""), confidence)
    return values, suggestions


def _duration_ms(raw) -> int:
    try:
        return min(max(int(raw), 0), services.MAX_DURATION_MS)
    except (TypeError, ValueError):
        return 0


@login_required
@require_POST
def tag_answer(request, slug):
    """Take a tagger's values for one product (tagging.tag_submit), then hand out the next product.
    Invalid values re-render the same product with the reasons; a conflict (already tagged, task
    complete) says so and moves on."""
    campaign = tagging.get_tag_campaign_for_user(request.user, slug)
    # The guide gate holds for a direct POST too, not only for the page.
    unread = _guide_unread(request, campaign)
    if unread:
        return unread
    # Images only if the product is shown again (invalid values): not on the usual path.
    task = _get_tag_task(campaign, request.POST.get("task"), images=False)
    values, suggestions = _parse_values(request.POST)
    try:
        tagging.tag_submit(
            user=request.user,
            task=task,
            values=values,
            duration_ms=_duration_ms(request.POST.get("duration_ms")),
            idempotency_key=request.POST.get("idempotency_key", "")[:80] or uuid.uuid4().hex,
            suggestions=suggestions,
        )
    except services.AnswerInvalid as exc:
        return _render_tag(
            request,
            campaign,
            task=task,
            posted=values,
            errors=exc.errors,
            notice="Not saved: fix the marked attributes.",
            notice_level="error",
        )
    except services.AnswerConflict as exc:
        if not request.htmx:
            return redirect("annotate:tag", slug=campaign.slug)
        return _render_tag(
            request, campaign, notice=f"{exc.message} Here is your next product.", notice_level="warning"
        )
    if not request.htmx:
        return redirect("annotate:tag", slug=campaign.slug)
    response = _render_tag(request, campaign)
    response["HX-Trigger"] = "answer-saved"
    return response


@login_required
@require_POST
def tag_skip(request, slug):
    """Pass over a product without tagging it (services.task_skip): its lease is released, it goes
    back to the pool, and this person gets it again only when nothing else is left. Then the next
    product."""
    campaign = tagging.get_tag_campaign_for_user(request.user, slug)
    unread = _guide_unread(request, campaign)
    if unread:
        return unread
    task = _get_tag_task(campaign, request.POST.get("task"), images=False)
    notice = {"notice": "Skipped.", "notice_level": "info"}
    try:
        services.task_skip(user=request.user, task=task)
    except services.AnswerConflict as exc:
        notice = {"notice": exc.message, "notice_level": "warning"}
    if not request.htmx:
        return redirect("annotate:tag", slug=campaign.slug)
    context = _tag_context(request, campaign, **notice)
    if context.get("task") is not None and context["task"].pk == task.pk:
        context["notice"] = "Skipped, but there is no other product left for you: here it is again."
    return render(request, "annotate/_tag_task.html", context)


@login_required
@require_POST
def tag_undo(request, slug):
    """Undo the person's last tagging answer (tagging.tag_undo_last, within the undo window): its
    product comes back to be tagged again."""
    campaign = tagging.get_tag_campaign_for_user(request.user, slug)
    task = tagging.tag_undo_last(user=request.user, campaign=campaign)
    notice = (
        {"notice": "Undone: tag it again.", "notice_level": "info"}
        if task
        else {"notice": "Nothing to undo.", "notice_level": "warning"}
    )
    if not request.htmx:
        return redirect("annotate:tag", slug=campaign.slug)
    return _render_tag(request, campaign, **notice)


@login_required
@require_GET
def tag_guide(request, slug):
    """The campaign's written guide (Markdown, sanitised) and every attribute with its description
    and options, example images included; printable. Opening it records a GuideRead (idempotent)."""
    campaign = tagging.get_tag_campaign_for_user(request.user, slug)
    GuideRead.objects.get_or_create(campaign=campaign, user=request.user)
    optional = tagging.optional_attribute_ids(campaign)
    attributes = [
        {
            "attribute": attribute,
            "description_html": markdown_html(attribute.description),
            "options": list(attribute.options.all()),
            "is_optional": attribute.pk in optional,
            "is_persona": tagging.is_persona(attribute),
        }
        for attribute in tagging.campaign_attributes(campaign)
    ]
    return render(
        request,
        "annotate/guide.html",
        {
            "campaign": campaign,
            "guide_html": markdown_html(campaign.guide),
            "attributes": attributes,
            "personas_per_task": campaign.personas_per_task
            if 0 < campaign.personas_per_task < sum(item["is_persona"] for item in attributes)
            else None,
        },
    )
