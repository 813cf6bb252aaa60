"""The campaign guide's Markdown keeps only this server's images (issue 14 item 7): an external
image is a tracking pixel that tells a third party who read the guide and when."""

import pytest
from django.urls import reverse

from annotate.models import Campaign
from annotate.tag_views import markdown_html

from ..factories import CampaignFactory, user_with_role


@pytest.mark.parametrize(
    "src",
    [
        "https://tracker.example/p.gif?u=1",
        "http://tracker.example/p.gif",
        "HTTPS://tracker.example/p.gif",
        "//tracker.example/p.gif",
        "/\\tracker.example/p.gif",
        " https://tracker.example/p.gif",
        "\x01//tracker.example/p.gif",
        "ht\ttps://tracker.example/p.gif",
        "http://localhost:8000.tracker.example/p.gif",
        "http://localhost:8001/p.gif",
        "ftp://tracker.example/p.gif",
        "data:image/gif;base64,R0lGODlhAQABAAAAACw=",
    ],
)
def test_an_external_image_loses_its_src(src, settings):
    settings.FITCHECK_PUBLIC_URL = "http://localhost:8000"
    for text in (f"![pixel]({src})", f'<img src="{src}" alt="pixel">'):
        html = markdown_html(text)
        assert "tracker.example" not in html and "src=" not in html, (text, html)


@pytest.mark.parametrize(
    "src",
    ["\\\\tracker.example/p.gif", "/&#9;/tracker.example/p.gif", "/&#10;/tracker.example/p.gif",
     "\\/tracker.example/p.gif", "&#1;//tracker.example/p.gif"],
)
def test_an_html_image_with_backslashes_or_tabs_towards_another_host_loses_its_src(src):
    """Raw HTML keeps what Markdown would have unescaped or expanded (a tab written as &#9;);
    browsers read "\\" as "/", drop tabs and newlines and strip leading control characters, so each
    of these is "//tracker.example/p.gif"."""
    html = markdown_html(f'<img src="{src}" alt="pixel">')
    assert "tracker.example" not in html and "src=" not in html, html


@pytest.mark.parametrize(
    "src", ["/media/guide/striped.png", "media/guide/striped.png", "striped.png", "http://localhost:8000/media/x.png"]
)
def test_an_image_of_this_server_is_kept(src, settings):
    settings.FITCHECK_PUBLIC_URL = "http://localhost:8000"
    assert f'src="{src}"' in markdown_html(f"![example]({src})")


def test_the_guide_page_shows_no_external_image(client, db):
    campaign = CampaignFactory(
        slug="tagging", kind=Campaign.Kind.ATTRIBUTES, guide="# Guide\n\n![x](https://tracker.example/p.gif)\n"
    )
    client.force_login(user_with_role("tagger"))
    html = client.get(reverse("annotate:tag-guide", args=[campaign.slug])).content.decode()
    assert "<h1>Guide</h1>" in html and "tracker.example" not in html
