from django import forms
from django.contrib import admin

from .models import Attribute, AttributeOption, NativeCategory, Photo, Product, ProductImage, Retailer, TaxonomyNode
from .services import TAXONOMY_SEPARATOR, native_category_map


class TaxonomyNodeAddForm(forms.ModelForm):
    """Adds a node under `parent`; its path and depth follow from the parent's."""

    class Meta:
        model = TaxonomyNode
        fields = ["parent", "name"]

    def clean(self):
        cleaned = super().clean()
        name = (cleaned.get("name") or "").strip()
        if not name:
            return cleaned
        if TAXONOMY_SEPARATOR.strip() in name or " > " in name:
            self.add_error("name", "A name cannot contain a level separator (› or >); add each level in turn.")
            return cleaned
        parent = cleaned.get("parent")
        path = f"{parent.path}{TAXONOMY_SEPARATOR}{name}" if parent else name
        if TaxonomyNode.objects.filter(path=path).exists():
            raise forms.ValidationError(f"The node {path} already exists.")
        self.instance.name = name
        self.instance.path = path
        self.instance.depth = parent.depth + 1 if parent else 0
        return cleaned


@admin.register(Retailer)
class RetailerAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "created_at"]
    search_fields = ["name", "slug"]


@admin.register(TaxonomyNode)
class TaxonomyNodeAdmin(admin.ModelAdmin):
    list_display = ["path", "depth"]
    search_fields = ["path"]
    add_form = TaxonomyNodeAddForm

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        # Renaming or moving a node would leave its stored path, and its descendants', stale;
        # importers find nodes by path.
        return ["path", "depth"] if obj is None else ["parent", "name", "path", "depth"]


@admin.register(NativeCategory)
class NativeCategoryAdmin(admin.ModelAdmin):
    list_display = ["path", "retailer", "master_node"]
    list_filter = ["retailer"]
    search_fields = ["path"]
    autocomplete_fields = ["master_node"]

    def save_model(self, request, obj, form, change):
        # Save every edited field first (a path edited together with the mapping must not be lost),
        # then re-file the category's products through the service, not a signal.
        super().save_model(request, obj, form, change)
        if change and "master_node" in form.changed_data:
            native_category_map(native_category=obj, master_node=obj.master_node)


class ProductImageInline(admin.TabularInline):
    model = ProductImage
    extra = 0
    readonly_fields = ["sha256", "width_px", "height_px"]


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["title", "retailer", "sku", "master_category", "is_active"]
    list_filter = ["retailer", "is_active", "master_category"]
    search_fields = ["title", "sku"]
    list_select_related = ["retailer", "master_category"]
    raw_id_fields = ["native_category"]
    inlines = [ProductImageInline]


@admin.register(Photo)
class PhotoAdmin(admin.ModelAdmin):
    list_display = ["uuid", "source", "posted_at", "width_px", "height_px"]
    search_fields = ["source", "caption"]
    readonly_fields = ["sha256", "width_px", "height_px"]


class AttributeOptionInline(admin.TabularInline):
    model = AttributeOption
    extra = 1
    fields = ["position", "value", "label", "example_image"]


@admin.register(Attribute)
class AttributeAdmin(admin.ModelAdmin):
    """The attribute schema: kinds, options (with guide example images) and the categories each
    attribute applies to (none: all)."""

    list_display = ["name", "slug", "kind", "position"]
    list_filter = ["kind"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["applies_to"]
    inlines = [AttributeOptionInline]
