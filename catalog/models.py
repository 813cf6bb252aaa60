"""Catalog: retailers, the master taxonomy, products and their images, and customer photos to match."""

import uuid

from django.db import models
from django.db.models import Q


class Retailer(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    slug = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.name


class TaxonomyNode(models.Model):
    """A node of the master taxonomy tree, e.g. Clothing › Tops › T-shirt/top.

    `path` is the full " › "-joined name path; it is unique and is what importers and the admin show.
    """

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    name = models.CharField(max_length=120)
    path = models.CharField(max_length=500, unique=True)
    depth = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["path"]
        constraints = [
            models.UniqueConstraint(fields=["parent", "name"], name="catalog_taxonomynode_unique_name_per_parent"),
        ]

    def __str__(self):
        return self.path


class NativeCategory(models.Model):
    """A retailer's own category path ("Women > Tees"), mapped onto a master taxonomy node."""

    retailer = models.ForeignKey(Retailer, on_delete=models.CASCADE, related_name="native_categories")
    path = models.CharField(max_length=500)
    master_node = models.ForeignKey(
        TaxonomyNode, null=True, blank=True, on_delete=models.SET_NULL, related_name="native_categories"
    )

    class Meta:
        verbose_name_plural = "native categories"
        constraints = [
            models.UniqueConstraint(fields=["retailer", "path"], name="catalog_nativecategory_unique_path"),
        ]

    def __str__(self):
        return f"{self.retailer.slug}: {self.path}"


class Product(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    retailer = models.ForeignKey(Retailer, on_delete=models.PROTECT, related_name="products")
    sku = models.CharField(max_length=120)
    title = models.CharField(max_length=300)
    description = models.TextField(blank=True)
    native_category = models.ForeignKey(
        NativeCategory, null=True, blank=True, on_delete=models.SET_NULL, related_name="products"
    )
    master_category = models.ForeignKey(
        TaxonomyNode, null=True, blank=True, on_delete=models.SET_NULL, related_name="products"
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # The importers' upsert key.
            models.UniqueConstraint(fields=["retailer", "sku"], name="catalog_product_unique_sku"),
        ]

    def __str__(self):
        return f"{self.title} ({self.retailer.slug}/{self.sku})"


class ProductImage(models.Model):
    """One image of a product. Files are stored by content hash, so a shared image is stored once."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="images")
    image = models.ImageField(upload_to="products/", width_field="width_px", height_field="height_px")
    sha256 = models.CharField(max_length=64, db_index=True)
    width_px = models.PositiveIntegerField()
    height_px = models.PositiveIntegerField()
    position = models.PositiveSmallIntegerField(default=0)
    source_url = models.CharField(max_length=1000, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["product", "sha256"], name="catalog_productimage_unique_per_product"),
        ]

    def __str__(self):
        return f"image {self.position} of product {self.product_id}"


class Photo(models.Model):
    """A customer photo to match against the catalog (an Instagram post that tags the brand, say)."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    source = models.CharField(max_length=200, help_text="Where the photo came from: a channel, account or URL.")
    caption = models.TextField(blank=True)
    posted_at = models.DateTimeField(null=True, blank=True)
    image = models.ImageField(upload_to="photos/", width_field="width_px", height_field="height_px")
    # Unique: the photo importer's idempotency key.
    sha256 = models.CharField(max_length=64, unique=True)
    width_px = models.PositiveIntegerField()
    height_px = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"photo {self.uuid} from {self.source}"


class DemoPhotoTruth(models.Model):
    """The true answer for a generated demo photo. Read by benchmarks and tests only.

    Kept in its own table so no annotator-facing query, serializer or template can reach it by
    accident: nothing in `annotate` imports this model.
    """

    class Kind(models.TextChoices):
        IN_CATALOG = "in_catalog", "View of a catalog product"
        NOT_IN_CATALOG = "not_in_catalog", "Product not in the catalog"
        NOT_A_PRODUCT = "not_a_product", "Not a product"

    photo = models.OneToOneField(Photo, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    product = models.ForeignKey(Product, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    source_label = models.SmallIntegerField(null=True, blank=True, help_text="Fashion-MNIST class index.")

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(kind="in_catalog", product__isnull=False)
                | (~Q(kind="in_catalog") & Q(product__isnull=True)),
                name="catalog_demophototruth_product_iff_in_catalog",
            ),
        ]

    def __str__(self):
        return f"truth of photo {self.photo_id}: {self.kind}"


class Attribute(models.Model):
    """A product attribute contract taggers label: a single choice (color), a multi choice (season)
    or an ordinal rating (a style persona, 1-5). Applies to the master taxonomy nodes in
    `applies_to` and their descendants; to every category when empty."""

    class Kind(models.TextChoices):
        SINGLE = "single", "Single choice"
        MULTI = "multi", "Multi choice"
        ORDINAL = "ordinal", "Ordinal rating"

    CANT_TELL = "cant_tell"  # offered by every single-choice attribute (a cropped photo, say)

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    slug = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    description = models.TextField(blank=True, help_text="What to look at; shown in the guide (Markdown).")
    position = models.PositiveSmallIntegerField(default=0, help_text="Order on the tagging form.")
    scale_min = models.PositiveSmallIntegerField(default=1, help_text="Ordinal ratings: the lowest value.")
    scale_max = models.PositiveSmallIntegerField(default=5, help_text="Ordinal ratings: the highest value.")
    applies_to = models.ManyToManyField(
        TaxonomyNode, blank=True, related_name="attributes", help_text="Categories (and their descendants); none: all."
    )

    class Meta:
        ordering = ["position", "slug"]
        constraints = [
            models.CheckConstraint(
                condition=Q(scale_min__lt=models.F("scale_max")), name="catalog_attribute_scale_range"
            ),
        ]

    def __str__(self):
        return self.name

    def values(self) -> list[str]:
        """The values an answer may hold, in form order: the options (single, multi), then "cant_tell"
        for single choice; "1".."5" for an ordinal rating. Uses prefetched options when present."""
        if self.kind == self.Kind.ORDINAL:
            return [str(v) for v in range(self.scale_min, self.scale_max + 1)]
        values = [o.value for o in self.options.all()]
        return values + [self.CANT_TELL] if self.kind == self.Kind.SINGLE else values


class AttributeOption(models.Model):
    """One option of a single- or multi-choice attribute, with an optional example image for the guide."""

    attribute = models.ForeignKey(Attribute, on_delete=models.CASCADE, related_name="options")
    value = models.SlugField(max_length=80, help_text="Stored in answers and exports; never rename once used.")
    label = models.CharField(max_length=120)
    position = models.PositiveSmallIntegerField(default=0)
    example_image = models.ImageField(upload_to="guide/", blank=True)

    class Meta:
        ordering = ["position", "value"]
        constraints = [
            models.UniqueConstraint(fields=["attribute", "value"], name="catalog_attributeoption_unique_value"),
            models.CheckConstraint(condition=~Q(value="cant_tell"), name="catalog_attributeoption_not_cant_tell"),
        ]

    def __str__(self):
        return f"{self.attribute.slug}: {self.label}"
