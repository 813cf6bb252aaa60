from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from annotate import views as annotate_views
from catalog import views as catalog_views
from config import health

urlpatterns = [
    path("", annotate_views.home, name="home"),
    path("healthz", health.healthz, name="healthz"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("annotate.urls")),
    path("", include("gamify.urls")),
    path("api/v1/", include("annotate.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its init script as a file, api_docs.html its styles: the page passes the
    # Content-Security-Policy.
    path(
        "api/docs/",
        SpectacularSwaggerSplitView.as_view(url_name="schema", template_name="api_docs.html"),
        name="swagger-ui",
    ),
    path("admin/", admin.site.urls),
]

# A database or broker outage raised outside a view still answers 503 (config.middleware).
handler500 = "config.middleware.server_error"

if settings.FITCHECK_SERVE_MEDIA:
    # Images are served to logged-in users only. In production, put a CDN or nginx in front of
    # MEDIA_ROOT (or object storage) and set FITCHECK_SERVE_MEDIA=false.
    urlpatterns += [re_path(r"^media/(?P<path>.*)$", catalog_views.media, name="media")]

# A 400 page that does not read the request body again; JSON 400 and 404 under /api/ (config/errors.py).
handler400 = "config.errors.bad_request"
handler404 = "config.errors.page_not_found"
