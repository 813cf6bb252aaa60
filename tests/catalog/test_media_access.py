"""Images are served to people signed in and to API clients with their token (issue 16, bug 1: an
image URL from the API, fetched with the token, redirected to the login page)."""

from annotate.auth import token_create

from ..factories import PhotoFactory, user_with_role


def test_an_api_client_loads_an_image_with_its_token(client, db):
    photo = PhotoFactory()
    url = f"/media/{photo.image.name}"
    assert client.get(url).status_code == 302  # a browser without a session: to the login page
    _, token = token_create(user=user_with_role("employee", username="bot"))
    response = client.get(url, HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 200
    assert b"".join(response.streaming_content)[:8] == b"\x89PNG\r\n\x1a\n"
    bad = client.get(url, HTTP_AUTHORIZATION="Token not-a-real-token")
    assert bad.status_code == 401


def test_a_signed_in_person_still_loads_an_image(client, db):
    photo = PhotoFactory()
    client.force_login(user_with_role("employee", username="emma"))
    assert client.get(f"/media/{photo.image.name}").status_code == 200
