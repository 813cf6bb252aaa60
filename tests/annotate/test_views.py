"""The verify page: permissions, keyboard, htmx partials, undo, prefetch, preparing state."""

import io
import re

import pytest
from django.urls import reverse

from annotate.models import Answer, Campaign, Task
from catalog.models import DemoPhotoTruth

from ..conftest import ROLE_MATRIX
from ..factories import CampaignFactory, task_with_candidates

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def campaign(db):
    return CampaignFactory()


def verify_url(campaign):
    return reverse("annotate:verify", args=[campaign.slug])


def answer_url(campaign):
    return reverse("annotate:verify-answer", args=[campaign.slug])


def _form_fields(html: str) -> dict:
    return dict(re.findall(r'name="(task|idempotency_key)" value="([^"]+)"', html))


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_verify_page_permission_matrix(client, as_role, campaign, role):
    task_with_candidates(campaign)
    as_role(role)
    response = client.get(verify_url(campaign))
    if role == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    elif role in ("employee", "admin"):
        assert response.status_code == 200
    else:
        assert response.status_code == 403


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_answer_and_undo_permission_matrix(client, as_role, campaign, role):
    task = task_with_candidates(campaign)
    as_role(role)
    response = client.post(answer_url(campaign), {"task": task.uuid, "pick": "none", "idempotency_key": "k"}, **HTMX)
    undo = client.post(reverse("annotate:verify-undo", args=[campaign.slug]), **HTMX)
    if role in ("employee", "admin"):
        assert response.status_code == 200 and undo.status_code == 200
    elif role == "anonymous":
        assert response.status_code == 302 and undo.status_code == 302
    else:
        assert response.status_code == 403 and undo.status_code == 403
    assert Answer.objects.filter(revoked_at__isnull=True).count() == 0  # answered then undone, or refused


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_home_permission_matrix(client, as_role, campaign, role):
    as_role(role)
    response = client.get("/")
    if role == "anonymous":
        assert response.status_code == 302
    else:
        assert response.status_code == 200
        assert (campaign.name in response.content.decode()) == (role in ("employee", "admin"))


def test_full_page_has_keys_htmx_from_static_and_the_photo(client, employee, campaign):
    task = task_with_candidates(campaign)
    client.force_login(employee)
    html = client.get(verify_url(campaign)).content.decode()
    assert '<script src="/static/django_htmx/htmx-2' in html
    assert "unpkg.com" not in html and "cdn." not in html
    assert "hx-headers" in html and "X-CSRFToken" in html
    for key in ("1", "2", "3", "0", "x", "u", "z"):
        assert f'data-key="{key}"' in html
    assert task.photo.image.url in html
    for candidate in task.candidates.all():
        assert candidate.product.title in html
        assert candidate.product.images.first().image.url in html


def test_an_answer_returns_the_next_task_as_a_partial(client, employee, campaign):
    first = task_with_candidates(campaign, shuffle_key=1)
    second = task_with_candidates(campaign, shuffle_key=2)
    client.force_login(employee)
    page = client.get(verify_url(campaign)).content.decode()
    fields = _form_fields(page)
    assert fields["task"] == str(first.uuid)
    product = first.candidates.get(rank=3).product
    response = client.post(
        answer_url(campaign),
        {**fields, "pick": f"product:{product.uuid}", "duration_ms": "1834"},
        **HTMX,
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert response["HX-Trigger"] == "answer-saved"
    assert "<html" not in html and html.lstrip().startswith('<section id="task"')  # a partial, no reload
    assert _form_fields(html)["task"] == str(second.uuid)
    answer = Answer.objects.get()
    assert (answer.task, answer.product, answer.duration_ms) == (first, product, 1834)


def test_double_submit_stores_one_answer(client, employee, campaign):
    task = task_with_candidates(campaign, shuffle_key=1)
    task_with_candidates(campaign, shuffle_key=2)
    client.force_login(employee)
    fields = _form_fields(client.get(verify_url(campaign)).content.decode())
    for _ in range(2):
        client.post(answer_url(campaign), {**fields, "pick": "none", "duration_ms": "500"}, **HTMX)
    assert Answer.objects.filter(task=task).count() == 1


def test_an_answer_to_a_task_leased_to_others_is_refused_with_a_message(client, employee, campaign):
    campaign.overlap_min = campaign.overlap_max = 1
    campaign.save()
    task = task_with_candidates(campaign)
    from annotate.services import task_next_for

    from ..factories import user_with_role

    task_next_for(user=user_with_role("employee"), campaign=campaign, seed=0)
    client.force_login(employee)
    response = client.post(answer_url(campaign), {"task": task.uuid, "pick": "none", "idempotency_key": "k"}, **HTMX)
    assert "reserved for other annotators" in response.content.decode()
    assert not Answer.objects.exists()


def test_invalid_pick_is_reported_and_not_saved(client, employee, campaign):
    task = task_with_candidates(campaign)
    client.force_login(employee)
    response = client.post(answer_url(campaign), {"task": task.uuid, "pick": "maybe", "idempotency_key": "k"}, **HTMX)
    assert "That answer was not saved" in response.content.decode()
    assert not Answer.objects.exists()


def test_answer_to_an_unknown_task_is_404(client, employee, campaign):
    client.force_login(employee)
    response = client.post(answer_url(campaign), {"task": "not-a-uuid", "pick": "none"}, **HTMX)
    assert response.status_code == 404


def test_without_htmx_an_answer_redirects_back_to_the_page(client, employee, campaign):
    task = task_with_candidates(campaign)
    client.force_login(employee)
    response = client.post(answer_url(campaign), {"task": task.uuid, "pick": "unfit", "idempotency_key": "k"})
    assert response.status_code == 302 and response["Location"] == verify_url(campaign)
    assert Answer.objects.get().choice == "unfit"


def test_undo_brings_the_task_back(client, employee, campaign):
    first = task_with_candidates(campaign, shuffle_key=1)
    task_with_candidates(campaign, shuffle_key=2)
    client.force_login(employee)
    fields = _form_fields(client.get(verify_url(campaign)).content.decode())
    client.post(answer_url(campaign), {**fields, "pick": "none"}, **HTMX)
    html = client.post(reverse("annotate:verify-undo", args=[campaign.slug]), **HTMX).content.decode()
    assert "Undone" in html
    assert _form_fields(html)["task"] == str(first.uuid)
    assert Answer.objects.get().revoked_at is not None


def test_next_task_images_are_prefetched(client, employee, campaign):
    task_with_candidates(campaign, shuffle_key=1)
    following = task_with_candidates(campaign, shuffle_key=2)
    client.force_login(employee)
    html = client.get(verify_url(campaign)).content.decode()
    prefetch = html[html.index('class="prefetch"') :]
    assert following.photo.image.url in prefetch
    for candidate in following.candidates.all():
        assert candidate.product.images.first().image.url in prefetch


def test_the_true_answer_never_reaches_the_page(client, employee, campaign):
    task = task_with_candidates(campaign)
    truth_product = task.candidates.get(rank=2).product
    DemoPhotoTruth.objects.create(photo=task.photo, kind="in_catalog", product=truth_product, source_label=7)
    client.force_login(employee)
    html = client.get(verify_url(campaign)).content.decode()
    assert "in_catalog" not in html and "View of a catalog product" not in html
    assert "source_label" not in html


def test_preparing_campaign_shows_progress_and_polls(client, employee):
    campaign = CampaignFactory(slug="prep", status=Campaign.Status.PREPARING)
    client.force_login(employee)
    html = client.get(verify_url(campaign)).content.decode()
    assert "Preparing suggestions" in html
    assert 'hx-trigger="every 2s"' in html


def test_preparing_shows_the_time_left_from_the_measured_rate(client, employee):
    """Issue 16: the progress said how far, never how long. 6 products and 4 photos left at 2 images/s."""
    from django.core.management import call_command

    from mlcore.models import EmbeddingRun

    from ..factories import ModelVersionFactory, PhotoFactory, ProductFactory

    version = ModelVersionFactory()
    campaign = CampaignFactory(slug="prep-eta", status=Campaign.Status.PREPARING, model_version=version)
    for _ in range(6):
        ProductFactory()
    for _ in range(4):
        PhotoFactory()
    client.force_login(employee)
    assert 'id="preparing-eta"' not in client.get(verify_url(campaign)).content.decode()  # no rate yet
    EmbeddingRun.objects.create(
        model_version=version, target="products", status="running", done_count=0, total_count=6, images_per_s=2.0
    )
    html = client.get(verify_url(campaign)).content.decode()
    assert '<p id="preparing-eta">About 5 s left' in html
    out = io.StringIO()
    call_command("demo_progress", campaign="prep-eta", timeout=0.5, every=0.1, stdout=out)
    assert "Preparing suggestions: products 0/6 at 2 images/s; about 5 s left" in out.getvalue()


def test_done_state_when_nothing_is_left(client, employee, campaign):
    task = task_with_candidates(campaign)
    Task.objects.filter(pk=task.pk).update(status=Task.Status.COMPLETE)
    client.force_login(employee)
    assert "All done here" in client.get(verify_url(campaign)).content.decode()


def test_verify_partial_query_count_is_pinned(client, employee, campaign, django_assert_max_num_queries):
    # The regular path: no gold draw comes up gold (a gold draw costs the gold pick's 1-2 queries).
    Campaign.objects.filter(pk=campaign.pk).update(gold_early_rate=0, gold_rate=0)
    for key in range(1, 6):
        task_with_candidates(campaign, shuffle_key=key)
    client.force_login(employee)
    # A person's first answer also creates their stats row; measure from the second on.
    fields = _form_fields(client.get(verify_url(campaign)).content.decode())
    client.post(answer_url(campaign), {**fields, "pick": "none", "duration_ms": "900"}, **HTMX)
    fields = _form_fields(client.get(verify_url(campaign)).content.decode())
    # Session + user + roles, the answer's checks and writes, the person's counters, the task's
    # consensus update, the next lease, the task and the peek with their candidates, products,
    # retailers and images (and the server's gold draw: read, redrawn, read for the peek): a fixed
    # number, whatever the queue size.
    # 48 before gamification, which adds 8: the answer's points (its task's answers with their points
    # and teams, the tallies read, the points row written, the tallies updated) and the verify page's
    # events (the running sprint, unseen badges, all-time points, the profile).
    with django_assert_max_num_queries(59) as captured:
        client.post(answer_url(campaign), {**fields, "pick": "none", "duration_ms": "900"}, **HTMX)
    first_count = len(captured.captured_queries)
    for key in range(6, 30):
        task_with_candidates(campaign, shuffle_key=key)
    fields = _form_fields(client.get(verify_url(campaign)).content.decode())
    with django_assert_max_num_queries(first_count) as captured_again:
        client.post(answer_url(campaign), {**fields, "pick": "none", "duration_ms": "900"}, **HTMX)
    assert len(captured_again.captured_queries) == first_count


@pytest.mark.parametrize(
    "url",
    [
        "/admin/annotate/campaign/",
        "/admin/annotate/task/",
        "/admin/annotate/answer/",
        "/admin/mlcore/embeddingrun/",
        "/admin/catalog/product/",
        "/admin/catalog/photo/",
    ],
)
def test_admin_lists_load_for_an_admin_and_not_for_an_employee(client, as_role, campaign, url):
    task_with_candidates(campaign)
    as_role("employee")
    assert client.get(url).status_code == 302  # to the admin login
    as_role("admin")
    assert client.get(url).status_code == 200


def test_the_admin_index_names_every_model_in_plain_english(client, as_role):
    # Django's default plurals read "Annotator statss", "Answer pointss", "Tallys" (issue 16, bug 9).
    as_role("admin")
    html = client.get("/admin/").content.decode()
    for wrong in ("statss", "pointss", "Tallys"):
        assert wrong not in html
    for right in ("Annotator stats", "Answer points", "Tallies"):
        assert right in html


def test_the_campaign_progress_line_survives_an_answer(client, employee, campaign):
    # The answer partial does not recount the campaign; it keeps the page's line with hx-preserve, so
    # "campaign N/M tasks settled" no longer vanishes after the first answer (issue 16, bug 13).
    for key in range(1, 4):
        task_with_candidates(campaign, shuffle_key=key)
    client.force_login(employee)
    page = client.get(verify_url(campaign)).content.decode()
    assert "campaign 0/3 tasks settled" in page
    fields = _form_fields(page)
    partial = client.post(answer_url(campaign), {**fields, "pick": "none", "duration_ms": "900"}, **HTMX)
    html = partial.content.decode()
    assert re.search(r'<span id="campaign-progress" hx-preserve="true"[^>]*></span>', html)


def test_the_settled_line_counts_regular_tasks_as_the_other_pages_do(client, employee, campaign):
    # Issue 16, bug 12: "16 of 1324 settled" here, "16 of 1284" on the announcement page (40 gold).
    from annotate import services as annotate_services
    from gamify.selectors import campaign_announcement

    tasks = [task_with_candidates(campaign, shuffle_key=key) for key in range(1, 5)]
    annotate_services.gold_set(task=tasks[0], label="none")
    client.force_login(employee)
    assert "campaign 0/3 tasks settled" in client.get(verify_url(campaign)).content.decode()
    assert campaign_announcement(campaign)["task_count"] == 3
