"""The agreement report page of an attributes campaign: alpha per attribute and the persona views
for a calibration sample answered by two teams; CSV downloads; who may see it, and that a tagger
reaches neither exports nor anyone else's answers."""

import pytest
from django.urls import reverse

from annotate import selectors, tagging
from annotate.models import Campaign, Task, Team, TeamMember
from catalog.attribute_schema import attribute_schema_ensure
from catalog.models import TaxonomyNode
from catalog.services import taxonomy_path_ensure

from ..conftest import ROLE_MATRIX
from ..factories import CampaignFactory, ProductFactory, user_with_role

PERSONAS = [
    "persona_minimalist",
    "persona_romantic",
    "persona_glamorous",
    "persona_sexy",
    "persona_edgy",
    "persona_boho",
    "persona_preppy",
    "persona_casual",
]


@pytest.fixture
def campaign(db):
    taxonomy_path_ensure(path="Clothing › Dresses › Dress")
    schema = {a.slug: a for a in attribute_schema_ensure()}
    campaign = CampaignFactory(slug="tag-report", kind=Campaign.Kind.ATTRIBUTES, overlap_min=4, overlap_max=4)
    campaign.attributes.set([schema["color"], *[schema[p] for p in PERSONAS]])
    merch, cx = Team.objects.create(slug="merch", name="Merchandising"), Team.objects.create(slug="cx", name="CX")
    campaign.calibration_teams.set([merch, cx])
    products = [
        ProductFactory(master_category=TaxonomyNode.objects.get(path="Clothing › Dresses › Dress"), image=False)
        for _ in range(4)
    ]
    tagging.tag_tasks_build(campaign=campaign, products=products, calibration=True)
    people = {}
    for team in (merch, cx):
        for n in range(2):
            person = user_with_role("tagger", username=f"{team.slug}-{n}")
            TeamMember.objects.create(team=team, user=person)
            people[(team.slug, n)] = person
    # Merchandising rates every persona 3 except boho 5; CX rates everything 3 except boho 4.
    for i, task in enumerate(Task.objects.filter(campaign=campaign).select_related("campaign", "product")):
        for (team, n), person in people.items():
            values = {p: "3" for p in PERSONAS}
            values["persona_boho"] = "5" if team == "merch" else "4"
            values["color"] = ["red", "blue", "red", "green"][i] if n == 0 or team == "merch" else "black"
            tagging.tag_submit(user=person, task=task, values=values, duration_ms=5000, idempotency_key=f"r{i}")
    return campaign


def test_report_figures_for_a_calibration_sample_of_two_teams(campaign):
    report = selectors.campaign_agreement_report(campaign)
    assert report["answer_count"] == 4 * 4 * 9 and report["calibration_item_count"] == 4
    assert report["teams"] == ["cx", "merch"]
    by_scope = {(r["attribute"], r["scope"]): r for r in report["rows"]}
    # Merchandising always agrees on color; within CX the second person always says black.
    assert by_scope[("color", "group:merch")]["alpha"] == pytest.approx(1.0)
    assert by_scope[("color", "group:cx")]["alpha"] < 0.5
    (pair,) = report["persona"].pairs
    assert (pair.group_a, pair.group_b) == ("cx", "merch")
    # |mean(CX) - mean(merch)| per product: boho |4 - 5| = 1, every other persona 0.
    assert pair.mean_abs_diff["boho"] == pytest.approx(1.0) and pair.mean_abs_diff["casual"] == pytest.approx(0.0)
    assert pair.within_a_median == pytest.approx(1.0) and pair.within_b_median == pytest.approx(1.0)
    # Across: cos((3,...,4,...), (3,...,5,...)) = (7*9 + 20) / (sqrt(7*9 + 16) * sqrt(7*9 + 25))
    assert pair.across_median == pytest.approx(83 / ((79**0.5) * (88**0.5)), abs=1e-9)
    assert pair.share_above_low == 1.0


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_report_page_permission_matrix(client, as_role, campaign, role):
    as_role(role)
    response = client.get(reverse("annotate:agreement-report", args=[campaign.slug]))
    if role in ("ml", "admin"):
        assert response.status_code == 200
        body = response.content.decode()
        assert "Alpha per attribute" in body and "persona_boho" in body and "cx and merch" in body
        assert "<svg" in body
    else:
        assert response.status_code == (302 if role == "anonymous" else 403)


def test_report_downloads_as_csv(client, as_role, campaign):
    as_role("ml")
    url = reverse("annotate:agreement-report", args=[campaign.slug])
    response = client.get(url + "?format=csv")
    assert response["Content-Type"].startswith("text/csv")
    lines = response.content.decode().splitlines()
    assert lines[0].startswith("attribute,kind,scope,level,item_count") and any(",pair:cx|merch," in x for x in lines)
    personas = client.get(url + "?format=personas.csv").content.decode()
    assert "group_a,group_b,persona,item_count,mean_abs_diff" in personas and "across_median" in personas


def test_report_shows_each_taggers_reliability_after_the_recompute(client, as_role, campaign):
    from annotate.consensus.services import consensus_recompute

    as_role("ml")
    url = reverse("annotate:agreement-report", args=[campaign.slug])
    assert "No full recompute yet" in client.get(url).content.decode()
    consensus_recompute(campaign_id=campaign.pk)
    reliability = selectors.campaign_tagger_reliability(campaign)
    assert reliability["attributes"][0] == "color" and len(reliability["rows"]) == 4
    color = {row["annotator"]: row["cells"][0] for row in reliability["rows"]}
    # cx-1 said black on every product while the three others agreed: the least reliable on color.
    assert min(color, key=lambda who: color[who]["accuracy"]) == "cx-1"
    assert color["cx-1"]["agreement"] == 0.0 and color["merch-0"]["agreement"] == 1.0
    assert {row["team"] for row in reliability["rows"]} == {"Merchandising", "CX"}
    body = client.get(url).content.decode()
    assert "Tagger reliability per attribute" in body and "cx-1" in body
    csv = client.get(url + "?format=reliability.csv").content.decode().splitlines()
    assert csv[0] == "annotator,team,attribute,accuracy,answer_count,agreement_total,agreement_count"
    assert len(csv) == 1 + 4 * 9  # 4 people x 9 attributes


def test_a_tagger_reaches_no_export_and_no_one_elses_answers(client, api, campaign):
    tagger = TeamMember.objects.filter(team__slug="merch").first().user
    client.force_login(tagger)
    api.force_authenticate(tagger)
    assert client.get(reverse("annotate:exports")).status_code == 403
    assert client.get(reverse("annotate:agreement-report", args=[campaign.slug])).status_code == 403
    assert client.get(reverse("annotate:campaign-annotators", args=[campaign.slug])).status_code == 403
    assert api.get("/api/v1/exports").status_code == 403
    assert api.get(f"/api/v1/campaigns/{campaign.slug}/answers").status_code == 403
    assert api.post("/api/v1/exports", {"name": "x", "formats": ["csv"]}, format="json").status_code == 403


@pytest.mark.parametrize(
    ("role", "tag_link", "report_link"),
    [("tagger", True, False), ("ml", False, True), ("admin", True, True), ("employee", False, False)],
)
def test_home_page_lists_attribute_campaigns_by_role(client, as_role, campaign, role, tag_link, report_link):
    as_role(role)
    body = client.get("/").content.decode()
    assert (f'href="{reverse("annotate:tag", args=[campaign.slug])}"' in body) is tag_link
    assert (reverse("annotate:agreement-report", args=[campaign.slug]) in body) is report_link


def test_the_tagger_reliability_section_sits_in_a_card_and_scrolls_inside_it(client, as_role, campaign):
    # Issue 16, bug 10: the section rendered outside its card and overflowed at 1280 px.
    from django.conf import settings

    as_role("ml")
    html = client.get(reverse("annotate:agreement-report", args=[campaign.slug])).content.decode()
    assert '<section class="card">\n  <h2>Tagger reliability per attribute</h2>' in html
    css = (settings.BASE_DIR / "static" / "fitcheck" / "app.css").read_text()
    assert ".table-scroll { overflow-x: auto;" in css
