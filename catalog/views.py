from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse
from django.views.decorators.http import require_GET
from django.views.static import serve


def _token_user(request):
    """The user of a valid API token in the Authorization header (django-rest-knox, as the API
    checks it), or None when there is no such header.

    Raises:
        rest_framework.exceptions.AuthenticationFailed: a token that is wrong or expired.
    """
    from knox.auth import TokenAuthentication

    result = TokenAuthentication().authenticate(request)
    return result[0] if result else None


@require_GET
def media(request, path):
    """Serve an uploaded image to a logged-in user, or to an API client sending its token (the image
    URLs of the API and of exports are for them too). A browser without a session goes to the login
    page; a request with a wrong or expired token gets 401. Content-addressed names never change, so
    they may be cached for a long time."""
    from django.conf import settings
    from rest_framework.exceptions import AuthenticationFailed

    if not request.user.is_authenticated:
        try:
            user = _token_user(request)
        except AuthenticationFailed as exc:
            return HttpResponse(str(exc.detail), status=401, content_type="text/plain; charset=utf-8")
        if user is None:
            return redirect_to_login(request.get_full_path())
    response = serve(request, path, document_root=settings.MEDIA_ROOT)
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response
