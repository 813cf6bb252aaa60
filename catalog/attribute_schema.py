"""The default fashion attribute schema that ships with fitcheck, and the service that installs it.

Edit it afterwards in the admin (Attribute, AttributeOption). `attribute_schema_ensure` is idempotent:
it creates what is missing and never deletes or renames what a team has changed.
"""

from __future__ import annotations

from django.db import transaction

from .models import Attribute, AttributeOption, TaxonomyNode
from .services import taxonomy_path_ensure

TOPS_AND_DRESSES = ("Clothing › Tops", "Clothing › Dresses", "Clothing › Outerwear")
PERSONAS = ("minimalist", "romantic", "glamorous", "sexy", "edgy", "boho", "preppy", "casual")

# slug, name, kind, applies_to (taxonomy paths; empty: all), options (value, label)
DEFAULT_SCHEMA: list[tuple[str, str, str, tuple[str, ...], list[tuple[str, str]]]] = [
    (
        "color",
        "Color",
        "single",
        (),
        [
            (v, v.replace("_", " ").capitalize())
            for v in (
                "black",
                "white",
                "grey",
                "beige",
                "brown",
                "red",
                "pink",
                "orange",
                "yellow",
                "green",
                "blue",
                "navy",
                "purple",
                "gold",
                "silver",
                "multicolour",
            )
        ],
    ),
    (
        "pattern",
        "Pattern",
        "single",
        (),
        [(v, v.capitalize()) for v in ("solid", "striped", "checked", "floral", "animal", "graphic", "logo", "other")],
    ),
    (
        "sleeve_length",
        "Sleeve length",
        "single",
        TOPS_AND_DRESSES,
        [
            ("sleeveless", "Sleeveless"),
            ("short", "Short"),
            ("elbow", "Elbow"),
            ("three_quarter", "Three-quarter"),
            ("long", "Long"),
        ],
    ),
    (
        "sleeve_type",
        "Sleeve type",
        "single",
        TOPS_AND_DRESSES,
        [
            (v, v.replace("_", " ").capitalize())
            for v in (
                "set_in",
                "raglan",
                "dolman",
                "kimono",
                "cap",
                "puff",
                "bishop",
                "bell",
                "flutter",
                "balloon",
                "lantern",
                "leg_of_mutton",
                "petal",
                "tulip",
                "cold_shoulder",
                "off_shoulder",
                "one_shoulder",
                "drop_shoulder",
                "batwing",
                "butterfly",
                "cape",
                "juliet",
                "poet",
                "peasant",
                "shirt",
                "roll_up",
                "cuffed",
                "angel",
                "split",
                "ruffle",
            )
        ],
    ),
    (
        "neckline",
        "Neckline",
        "single",
        TOPS_AND_DRESSES,
        [
            (v, v.replace("_", " ").capitalize())
            for v in (
                "crew",
                "v_neck",
                "scoop",
                "boat",
                "square",
                "sweetheart",
                "halter",
                "turtleneck",
                "mock_neck",
                "cowl",
                "collared",
                "off_shoulder",
                "one_shoulder",
                "henley",
                "keyhole",
            )
        ],
    ),
    (
        "skirt_length",
        "Skirt length",
        "single",
        ("Clothing › Dresses", "Clothing › Skirts"),
        [("mini", "Mini"), ("above_knee", "Above the knee"), ("knee", "Knee"), ("midi", "Midi"), ("maxi", "Maxi")],
    ),
    (
        "pant_length",
        "Pant length",
        "single",
        ("Clothing › Bottoms",),
        [("shorts", "Shorts"), ("capri", "Capri"), ("cropped", "Cropped"), ("ankle", "Ankle"), ("full", "Full length")],
    ),
    (
        "season",
        "Season",
        "multi",
        (),
        [("spring", "Spring"), ("summer", "Summer"), ("autumn", "Autumn"), ("winter", "Winter")],
    ),
] + [(f"persona_{p}", f"Persona: {p}", "ordinal", (), []) for p in PERSONAS]


def attribute_schema_ensure() -> list[Attribute]:
    """Install the default schema: category (options: the master taxonomy's leaves), color, pattern,
    sleeve length and type, neckline, skirt and pant length, season (multi) and the eight style
    personas rated 1-5. Idempotent; existing attributes and options keep their edits. Returns the
    attributes in form order."""
    with transaction.atomic():
        attributes = []
        category, _ = Attribute.objects.get_or_create(
            slug="category", defaults={"name": "Category", "kind": Attribute.Kind.SINGLE, "position": 0}
        )
        leaves = TaxonomyNode.objects.filter(children__isnull=True).order_by("path")
        for position, node in enumerate(leaves):
            AttributeOption.objects.get_or_create(
                attribute=category, value=_slug(node.path), defaults={"label": node.name, "position": position}
            )
        attributes.append(category)
        for position, (slug, name, kind, applies_to, options) in enumerate(DEFAULT_SCHEMA, start=1):
            attribute, created = Attribute.objects.get_or_create(
                slug=slug, defaults={"name": name, "kind": kind, "position": position}
            )
            if created:
                attribute.applies_to.set([taxonomy_path_ensure(path=path) for path in applies_to])
            for option_position, (value, label) in enumerate(options):
                AttributeOption.objects.get_or_create(
                    attribute=attribute, value=value, defaults={"label": label, "position": option_position}
                )
            attributes.append(attribute)
    return attributes


CATEGORY_SLUG = "category"  # the attribute whose options are the master taxonomy's leaves


def category_paths() -> dict[str, str]:
    """{category option value: TaxonomyNode.path} for every node of the master taxonomy (one query).
    The category attribute's option values are these slugs (attribute_schema_ensure)."""
    return {_slug(path): path for path in TaxonomyNode.objects.values_list("path", flat=True)}


def category_value(path: str | None) -> str | None:
    """The category attribute's option value for a TaxonomyNode.path (None for None)."""
    return _slug(path) if path else None


def _slug(path: str) -> str:
    from django.utils.text import slugify

    return slugify(path.replace("›", " ").replace("/", " "))[:80]


def attribute_applies(attribute: Attribute, category_path: str | None) -> bool:
    """Whether `attribute` applies to a product in the master category `category_path` (a
    TaxonomyNode.path, None when uncategorised): it does when its applies_to is empty, or holds that
    node or an ancestor. An uncategorised product gets only the attributes for every category.
    Uses prefetched applies_to when present."""
    nodes = [node.path for node in attribute.applies_to.all()]
    if not nodes:
        return True
    if category_path is None:
        return False
    return any(category_path == path or category_path.startswith(path + " › ") for path in nodes)
