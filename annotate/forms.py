"""Forms of the HTML pages. They shape input; the services validate the rules and write."""

from django import forms

from .exports.records import ALL_ATTRIBUTES, PROVENANCES
from .models import Campaign, ExportSnapshot


class ExportCreateForm(forms.Form):
    """The exports page's form: a name, formats, filters and side tables (see exports.services.export_create)."""

    name = forms.SlugField(max_length=80, initial="gold", help_text="Snapshots of one name are numbered 1, 2, 3...")
    formats = forms.MultipleChoiceField(
        choices=ExportSnapshot.Format.choices, widget=forms.CheckboxSelectMultiple, initial=["jsonl", "parquet"]
    )
    campaigns = forms.ModelMultipleChoiceField(
        queryset=Campaign.objects.order_by("name"), to_field_name="slug", required=False, help_text="None: all."
    )
    attributes = forms.MultipleChoiceField(
        choices=[(a, a) for a in ALL_ATTRIBUTES], widget=forms.CheckboxSelectMultiple, required=False
    )
    provenance = forms.MultipleChoiceField(
        choices=[(p, p) for p in PROVENANCES],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None: all.",
    )
    min_confidence = forms.FloatField(min_value=0, max_value=1, initial=0, required=False)
    settled_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    settled_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    exclude_contested = forms.BooleanField(required=False)
    include_answers = forms.BooleanField(required=False, help_text="Raw answers, annotators pseudonymised.")
    include_reliability = forms.BooleanField(required=False, help_text="Per-annotator reliability and flags.")
    embed_images = forms.BooleanField(
        required=False, help_text="Hugging Face folder: image bytes inside (portable, larger), not server paths."
    )

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
