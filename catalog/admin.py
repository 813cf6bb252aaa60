from django.contrib import admin

from .models import NativeCategory, Photo, Product, ProductImage, Retailer, TaxonomyNode
from .services import native_category_map


@admin.register(Retailer)
class RetailerAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "created_at"]
    search_fields = ["name", "slug"]


@admin.register(TaxonomyNode)
class TaxonomyNodeAdmin(admin.ModelAdmin):
    list_display = ["path", "depth"]
    search_fields = ["path"]
    readonly_fields = ["path", "depth"]


@admin.register(NativeCategory)
class NativeCategoryAdmin(admin.ModelAdmin):
    list_display = ["path", "retailer", "master_node"]
    list_filter = ["retailer"]
    search_fields = ["path"]
    autocomplete_fields = ["master_node"]

    def save_model(self, request, obj, form, change):
        # Re-files the category's products through the service, not a signal.
        if change and "master_node" in form.changed_data:
            native_category_map(native_category=obj, master_node=obj.master_node)
        else:
            super().save_model(request, obj, form, change)


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
