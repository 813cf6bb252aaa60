"""Forms of the HTML pages. They shape input; the services validate the rules and write."""

from django import forms

from .exports.records import ALL_ATTRIBUTES, PROVENANCES
from .models import Campaign, ExportSnapshot


class ExportCreateForm(forms.Form):
    """The exports page's form: a name, formats, filters and side tables (see exports.services.export_create).
    `sections` groups the fields for the page's layout, each field with its own explanation."""

    name = forms.SlugField(
        max_length=80,
        initial="gold",
        help_text="Letters, digits and dashes. Snapshots of one name are numbered 1, 2, 3…; the same filters over "
        "the same data give byte-identical files.",
    )
    formats = forms.MultipleChoiceField(
        choices=ExportSnapshot.Format.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=["jsonl", "parquet"],
        help_text="One file (or folder) per format, each listed with its sha256. Crowd-Kit holds the raw answers "
        "(worker, task, label) for its aggregation methods.",
    )
    campaigns = forms.ModelMultipleChoiceField(
        queryset=Campaign.objects.order_by("name"),
        to_field_name="slug",
        required=False,
        help_text="Only labels of these campaigns. None ticked: every campaign.",
        widget=forms.CheckboxSelectMultiple,
    )
    attributes = forms.MultipleChoiceField(
        choices=[(a, a) for a in ALL_ATTRIBUTES],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Only these labelled attributes (“match”: which catalog product a photo shows). None ticked: all.",
    )
    provenance = forms.MultipleChoiceField(
        choices=[(p, p) for p in PROVENANCES],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Where a label came from: gold (a known answer set by the ML team), human (people's weighted "
        "consensus) or model (auto-accepted by a model above its threshold). None ticked: all three.",
    )
    min_confidence = forms.FloatField(
        min_value=0,
        max_value=1,
        initial=0,
        required=False,
        help_text="Keep labels whose consensus confidence (the posterior's maximum, 0 to 1) is at least this. "
        "Gold labels count as 1. 0 keeps everything.",
    )
    settled_from = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Labels settled on or after this day (UTC): when the task completed or its gold label was set.",
    )
    settled_to = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="…and on or before this day (the whole day counts). Empty: no limit.",
    )
    exclude_contested = forms.BooleanField(
        required=False,
        help_text="Drop contested labels: people's consensus that reached the answer cap still below the "
        "campaign's confidence target.",
    )
    include_answers = forms.BooleanField(
        required=False,
        help_text="Add every raw answer behind the labels (answers.jsonl), annotators pseudonymised.",
    )
    include_reliability = forms.BooleanField(
        required=False,
        help_text="Add each annotator's reliability, gold accuracy and flags (reliability.jsonl), pseudonymised.",
    )
    embed_images = forms.BooleanField(
        required=False,
        help_text="Hugging Face folder only: image bytes inside (portable, larger) instead of image URLs.",
    )

    SECTIONS = (
        ("Snapshot", "What to build.", ("name", "formats")),
        (
            "Which labels",
            "Filters: a label is exported when it passes all of them.",
            ("campaigns", "attributes", "provenance", "min_confidence", "settled_from", "settled_to",
             "exclude_contested"),
        ),
        ("Side tables", "Extra files beside the labels.", ("include_answers", "include_reliability", "embed_images")),
    )

    def sections(self) -> list[dict]:
        """[{"title", "intro", "fields": [BoundField, ...]}] in SECTIONS order, for the page's layout."""
        return [
            {"title": title, "intro": intro, "fields": [self[name] for name in names]}
            for title, intro, names in self.SECTIONS
        ]

    def filters(self) -> dict:
        data = self.cleaned_data
        filters = {
            "campaigns": [c.slug for c in data["campaigns"]],
            "attributes": data["attributes"],
            "provenance": data["provenance"],
            "min_confidence": data["min_confidence"] or 0.0,
            "exclude_contested": data["exclude_contested"],
        }
        if data["settled_from"]:
            filters["settled_from"] = data["settled_from"].isoformat()
        if data["settled_to"]:
            # A date "to" means the whole day.
            filters["settled_to"] = data["settled_to"].isoformat() + "T23:59:59.999999"
        return filters
