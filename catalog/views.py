from django.contrib.auth.decorators import login_required
from django.views.decorators.http import require_GET
from django.views.static import serve


@login_required
@require_GET
def media(request, path):
    """Serve an uploaded image to a logged-in user. Content-addressed names never change, so they
    may be cached for a long time."""
    from django.conf import settings

    response = serve(request, path, document_root=settings.MEDIA_ROOT)
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response
