"""Gold tasks stay invisible to annotators; pausing; the stats pages; the gold API and its permissions."""

import json
import re
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.db.models import F
from django.urls import reverse

from annotate import services
from annotate.consensus.services import consensus_recompute
from annotate.models import AnnotatorStats, Answer, Campaign, GoldLabel, Lease, Task

from ..conftest import ROLE_MATRIX
from ..factories import CampaignFactory, ProductFactory, task_with_candidates, user_with_role

HTMX = {"HTTP_HX_REQUEST": "true"}
GOLD_LABEL = "not_a_product"
# Words and keys that would tell an annotator a task is a check, or what its known answer is.
TELLTALE_WORDS = ("gold", "expected", "correct")
TELLTALE_KEYS = {"gold", "is_gold", "gold_label", "label", "expected", "correct", "truth", "posterior", "confidence"}


# -- helpers -----------------------------------------------------------------------------------------


def verify_url(campaign):
    return reverse("annotate:verify", args=[campaign.slug])


def answer_url(campaign):
    return reverse("annotate:verify-answer", args=[campaign.slug])


def annotators_url(campaign):
    return reverse("annotate:campaign-annotators", args=[campaign.slug])


def pause_url(campaign, user):
    return reverse("annotate:annotator-pause", args=[campaign.slug, user.username])


def recompute_url(campaign):
    return reverse("annotate:consensus-recompute", args=[campaign.slug])


def next_task_url(campaign):
    return f"/api/v1/campaigns/{campaign.slug}/next-task"


def api_answer_url(task):
    return f"/api/v1/tasks/{task.uuid}/answers"


def gold_url(task):
    return f"/api/v1/tasks/{task.uuid}/gold"


def _form_fields(html: str) -> dict:
    return dict(re.findall(r'name="(task|idempotency_key)" value="([^"]+)"', html))


def _picks(html: str) -> list[str]:
    """The pick buttons' values, product uuids masked: ["product:<id>", ..., "none", ...]."""
    return [_normalise(value) for value in re.findall(r'name="pick" value="([^"]+)"', html)]


_IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")


def _normalise(text: str) -> str:
    """Mask what legitimately differs between two tasks: uuids and hex keys, media paths, numbers."""
    text = _IDS.sub("<id>", text)
    text = re.sub(r"/media/\S+", "<media>", text)
    text = re.sub(r"\d+", "0", text)
    return " ".join(text.split())


class _Skeleton(HTMLParser):
    """The page as a list of tags with their (masked) attributes and text: two tasks that look alike
    to a person give equal skeletons."""

    def __init__(self):
        super().__init__()
        self.items: list[tuple] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        masked = {}
        for name, value in attrs.items():
            if name == "hx-headers" or (name == "value" and attrs.get("name") == "csrfmiddlewaretoken"):
                value = "<csrf>"
            masked[name] = _normalise(value or "")
        self.items.append(("start", tag, tuple(sorted(masked.items()))))

    def handle_endtag(self, tag):
        self.items.append(("end", tag))

    def handle_data(self, data):
        if data.strip():
            self.items.append(("text", _normalise(data)))


def _skeleton(html: str) -> list[tuple]:
    parser = _Skeleton()
    parser.feed(html)
    parser.close()
    return parser.items


def _anonymise(html: str) -> str:
    """The page with the signed-in person's name in the top bar masked."""
    return re.sub(r'(<span class="who">)[^<]*(</span>)', r"\1NAME\2", html)


def _shape(value):
    """The JSON value with every leaf replaced by its type name: equal shapes, equal keys at every depth."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__


def _keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in _keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in _keys(item)}
    return set()


def _strings(value, *, skip=("choices",)) -> set[str]:
    """Every string value in the JSON, outside the keys named in `skip`."""
    if isinstance(value, dict):
        return {s for key, item in value.items() if key not in skip for s in _strings(item, skip=skip)}
    if isinstance(value, list):
        return {s for item in value for s in _strings(item, skip=skip)}
    return {value} if isinstance(value, str) else set()


def _assert_no_telltale_text(text: str) -> None:
    lowered = text.lower()
    for word in TELLTALE_WORDS:
        assert word not in lowered, f"{word!r} reaches the annotator"


def _assert_no_telltale_json(data) -> None:
    assert not _keys(data) & TELLTALE_KEYS
    _assert_no_telltale_text(json.dumps(data))


def _gold_campaign(*, regular: int = 4, **fields) -> tuple[Campaign, Task, list[Task]]:
    """A campaign whose annotators get its one gold task first (gold_first_count=5 at gold_early_rate
    1), then only regular tasks (gold_rate=0)."""
    campaign = CampaignFactory(gold_first_count=5, gold_early_rate=1.0, gold_rate=0.0, **fields)
    gold = task_with_candidates(campaign, shuffle_key=1)
    services.gold_set(task=gold, label=GOLD_LABEL)
    tasks = [task_with_candidates(campaign, shuffle_key=10 + i) for i in range(regular)]
    gold.refresh_from_db()
    assert gold.is_gold
    return campaign, gold, tasks


def _answer(user, task, *, choice="none", duration_ms=1500, key=None):
    answer, created = services.answer_submit(
        user=user, task=task, choice=choice, duration_ms=duration_ms, idempotency_key=key or f"{user.pk}-{task.pk}"
    )
    assert created
    return answer


@pytest.fixture
def campaign(db):
    return CampaignFactory()


# -- gold answers never reach an annotator -------------------------------------------------------------


def test_gold_task_api_payload_and_answer_have_the_shape_of_a_regular_one(api, employee):
    campaign, gold, _ = _gold_campaign()
    api.force_authenticate(employee)

    gold_response = api.get(next_task_url(campaign))
    assert gold_response.status_code == 200
    gold_payload = gold_response.json()
    assert gold_payload["uuid"] == str(gold.uuid)  # the first task is the gold one
    gold_answer = api.post(
        api_answer_url(gold), {"choice": GOLD_LABEL, "duration_ms": 1500, "idempotency_key": "g"}, format="json"
    )

    regular_response = api.get(next_task_url(campaign))
    assert regular_response.status_code == 200
    regular_payload = regular_response.json()
    regular = Task.objects.get(uuid=regular_payload["uuid"])
    assert not regular.is_gold
    regular_answer = api.post(
        api_answer_url(regular), {"choice": GOLD_LABEL, "duration_ms": 1500, "idempotency_key": "r"}, format="json"
    )

    assert _shape(gold_payload) == _shape(regular_payload)
    assert (gold_answer.status_code, regular_answer.status_code) == (201, 201)
    assert _shape(gold_answer.json()) == _shape(regular_answer.json())
    assert set(gold_answer.json()) == {
        "uuid",
        "task",
        "choice",
        "product",
        "duration_ms",
        "idempotency_key",
        "created_at",
    }
    for response in (gold_response, gold_answer, regular_response, regular_answer):
        _assert_no_telltale_json(response.json())
        headers = " ".join(f"{name} {value}" for name, value in response.items())
        _assert_no_telltale_text(headers)
    # The known answer shows up nowhere as a value, except as one of the options every task offers.
    assert GOLD_LABEL not in _strings(gold_payload)
    assert GOLD_LABEL in gold_payload["choices"] and gold_payload["choices"] == regular_payload["choices"]


def test_gold_answer_by_api_with_a_product_looks_like_a_regular_one(api, employee):
    campaign, gold, _ = _gold_campaign()
    api.force_authenticate(employee)
    assert api.get(next_task_url(campaign)).json()["uuid"] == str(gold.uuid)
    product = gold.candidates.get(rank=2).product
    body = {"choice": "product", "product": str(product.uuid), "duration_ms": 900, "idempotency_key": "g"}
    gold_answer = api.post(api_answer_url(gold), body, format="json")
    regular = Task.objects.get(uuid=api.get(next_task_url(campaign)).json()["uuid"])
    product = regular.candidates.get(rank=2).product
    body = {"choice": "product", "product": str(product.uuid), "duration_ms": 900, "idempotency_key": "r"}
    regular_answer = api.post(api_answer_url(regular), body, format="json")
    assert (gold_answer.status_code, regular_answer.status_code) == (201, 201)
    assert _shape(gold_answer.json()) == _shape(regular_answer.json())
    _assert_no_telltale_json(gold_answer.json())


def test_gold_task_page_and_partial_look_like_a_regular_task(client, employee):
    campaign, gold, regular_tasks = _gold_campaign()
    client.force_login(employee)

    gold_page = client.get(verify_url(campaign)).content.decode()
    assert _form_fields(gold_page)["task"] == str(gold.uuid)
    gold_partial = client.get(verify_url(campaign), **HTMX).content.decode()
    assert _form_fields(gold_partial)["task"] == str(gold.uuid)
    gold_product = gold.candidates.get(rank=2).product
    after_gold = client.post(
        answer_url(campaign),
        {**_form_fields(gold_partial), "pick": f"product:{gold_product.uuid}", "duration_ms": "1500"},
        **HTMX,
    )
    assert Answer.objects.filter(task=gold, annotator=employee).count() == 1

    regular_page = client.get(verify_url(campaign)).content.decode()
    regular_uuid = _form_fields(regular_page)["task"]
    assert regular_uuid in {str(t.uuid) for t in regular_tasks}
    regular_partial = client.get(verify_url(campaign), **HTMX).content.decode()
    assert _form_fields(regular_partial)["task"] == regular_uuid
    regular_product = Task.objects.get(uuid=regular_uuid).candidates.get(rank=2).product
    after_regular = client.post(
        answer_url(campaign),
        {**_form_fields(regular_partial), "pick": f"product:{regular_product.uuid}", "duration_ms": "1500"},
        **HTMX,
    )
    assert Answer.objects.filter(task__uuid=regular_uuid, annotator=employee).count() == 1

    assert _picks(gold_page) == _picks(regular_page) == ["product:<id>"] * 3 + ["none", "not_a_product", "unfit"]
    assert _skeleton(gold_page) == _skeleton(regular_page)
    assert _skeleton(gold_partial) == _skeleton(regular_partial)
    # The answer to a gold task: the same trigger, no notice, the next task in the same shape.
    assert after_gold.status_code == after_regular.status_code == 200
    assert after_gold["HX-Trigger"] == after_regular["HX-Trigger"] == "answer-saved"
    after_gold_html, after_regular_html = after_gold.content.decode(), after_regular.content.decode()
    assert 'class="notice' not in after_gold_html and 'class="notice' not in after_regular_html
    assert _skeleton(after_gold_html) == _skeleton(after_regular_html)
    for html in (gold_page, gold_partial, after_gold_html):
        _assert_no_telltale_text(html)


def test_gold_answer_without_htmx_redirects_like_a_regular_one(client, employee):
    campaign, gold, _ = _gold_campaign()
    client.force_login(employee)
    fields = _form_fields(client.get(verify_url(campaign)).content.decode())
    assert fields["task"] == str(gold.uuid)
    response = client.post(answer_url(campaign), {**fields, "pick": GOLD_LABEL, "duration_ms": "1500"})
    assert response.status_code == 302 and response["Location"] == verify_url(campaign)
    assert Answer.objects.get(annotator=employee).task == gold


def _prefetched(html: str) -> str:
    return html[html.index('class="prefetch"') :] if 'class="prefetch"' in html else ""


def test_a_gold_task_was_prefetched_like_a_regular_one(client, employee):
    campaign, gold, _ = _gold_campaign()
    second_gold = task_with_candidates(campaign, shuffle_key=2)
    services.gold_set(task=second_gold, label="1")
    client.force_login(employee)
    page = client.get(verify_url(campaign)).content.decode()
    assert _form_fields(page)["task"] == str(gold.uuid)
    after = client.post(answer_url(campaign), {**_form_fields(page), "pick": "none", "duration_ms": "1500"}, **HTMX)
    assert _form_fields(after.content.decode())["task"] == str(second_gold.uuid)
    assert second_gold.photo.image.url in _prefetched(page)


def test_my_stats_moves_only_after_five_checks_past_the_undo_window(client, api, employee, employee2):
    # gold_min_answers=1: one gold answer would be enough to show a gold accuracy, if it were shown.
    campaign, gold, regular = _gold_campaign(gold_min_answers=1, regular=2)
    checks = [gold]
    for i in range(5):
        task = task_with_candidates(campaign, shuffle_key=2 + i)
        services.gold_set(task=task, label=GOLD_LABEL)
        checks.append(task)
    Campaign.objects.filter(pk=campaign.pk).update(gold_first_count=10)
    api.force_authenticate(employee)
    served = api.get(next_task_url(campaign)).json()["uuid"]
    assert served in {str(t.uuid) for t in checks}
    right = {"choice": GOLD_LABEL, "duration_ms": 1500, "idempotency_key": "g"}
    assert api.post(f"/api/v1/tasks/{served}/answers", right, format="json").status_code == 201
    # Someone who answered one regular task, for comparison.
    _answer(employee2, regular[0], choice=GOLD_LABEL)

    def pages():
        client.force_login(employee)
        after_gold = client.get(reverse("annotate:my-stats")).content.decode()
        client.force_login(employee2)
        return after_gold, client.get(reverse("annotate:my-stats")).content.decode()

    # The full recompute counts the check (admins see it), but the person's page does not move: it
    # looks exactly like the page of someone who answered a regular task.
    consensus_recompute(campaign_id=campaign.pk)
    stats = AnnotatorStats.objects.get(campaign=campaign, annotator=employee)
    assert (stats.gold_answer_count, stats.gold_correct_count) == (1, 1)
    assert (stats.gold_shown_answer_count, stats.gold_shown_through) == (0, None)
    after_gold, after_regular = pages()
    assert "after 1 checks" in after_gold
    assert _skeleton(_anonymise(after_gold)) == _skeleton(_anonymise(after_regular))

    # Five checks, all still undoable: nothing shown yet.
    for task in checks:
        if not Answer.objects.filter(task=task, annotator=employee).exists():
            if Answer.objects.filter(task__campaign=campaign, annotator=employee, task__is_gold=True).count() < 5:
                _answer(employee, task, choice=GOLD_LABEL)
    consensus_recompute(campaign_id=campaign.pk)
    stats.refresh_from_db()
    assert (stats.gold_answer_count, stats.gold_shown_answer_count) == (5, 0)
    assert "after 1 checks" in pages()[0]

    # Past the undo window, the five are revealed together.
    Answer.objects.update(created_at=F("created_at") - timedelta(minutes=11))
    Campaign.objects.filter(pk=campaign.pk).update(consensus_dirty=True)
    consensus_recompute(campaign_id=campaign.pk)
    stats.refresh_from_db()
    assert (stats.gold_shown_answer_count, stats.gold_shown_correct_count) == (5, 5)
    shown = pages()[0]
    assert "after 1 checks" not in shown
    assert "0.92" in shown and "of 5" in shown  # (0.5 + 5) / (1 + 5)

    # One more check, even past the undo window, waits for four more.
    last = next(t for t in checks if not Answer.objects.filter(task=t, annotator=employee).exists())
    _answer(employee, last, choice="none")
    Answer.objects.filter(task=last).update(created_at=F("created_at") - timedelta(minutes=11))
    consensus_recompute(campaign_id=campaign.pk)
    stats.refresh_from_db()
    assert (stats.gold_answer_count, stats.gold_shown_answer_count) == (6, 5)


# -- a paused annotator gets no tasks ----------------------------------------------------------------


def test_pausing_releases_leases_and_stops_routing_until_resumed(campaign, employee):
    task_with_candidates(campaign)
    assert services.task_next_for(user=employee, campaign=campaign, seed=0) is not None
    assert Lease.objects.filter(annotator=employee).count() == 1

    stats = services.annotator_pause(campaign=campaign, annotator=employee, paused=True)
    assert stats.is_paused and stats.paused_at is not None
    assert not Lease.objects.filter(annotator=employee).exists()
    with pytest.raises(services.AnnotatorPaused):
        services.task_next_for(user=employee, campaign=campaign, seed=0)
    assert not Lease.objects.filter(annotator=employee).exists()

    services.annotator_pause(campaign=campaign, annotator=employee, paused=False)
    assert services.task_next_for(user=employee, campaign=campaign, seed=0) is not None
    assert Lease.objects.filter(annotator=employee).count() == 1


def test_pausing_someone_in_one_campaign_leaves_their_other_campaigns_alone(campaign, employee):
    other = CampaignFactory(slug="dinner")
    task_with_candidates(campaign)
    task_with_candidates(other)
    services.annotator_pause(campaign=campaign, annotator=employee, paused=True)
    with pytest.raises(services.AnnotatorPaused):
        services.task_next_for(user=employee, campaign=campaign, seed=0)
    assert services.task_next_for(user=employee, campaign=other, seed=0) is not None


def test_paused_annotator_api_gets_403_and_nothing_is_stored(api, campaign, employee):
    task = task_with_candidates(campaign)
    services.annotator_pause(campaign=campaign, annotator=employee, paused=True)
    api.force_authenticate(employee)

    response = api.get(next_task_url(campaign))
    assert response.status_code == 403
    assert response.json()["code"] == "annotator_paused"
    answer = api.post(
        api_answer_url(task), {"choice": "none", "duration_ms": 900, "idempotency_key": "k"}, format="json"
    )
    assert answer.status_code == 403
    assert answer.json()["code"] == "annotator_paused"
    assert not Answer.objects.exists()
    task.refresh_from_db()
    assert task.answer_count == 0
    assert AnnotatorStats.objects.get(campaign=campaign, annotator=employee).answer_count == 0

    services.annotator_pause(campaign=campaign, annotator=employee, paused=False)
    assert api.get(next_task_url(campaign)).json()["uuid"] == str(task.uuid)
    answer = api.post(
        api_answer_url(task), {"choice": "none", "duration_ms": 900, "idempotency_key": "k"}, format="json"
    )
    assert answer.status_code == 201
    assert Answer.objects.filter(annotator=employee).count() == 1


def test_paused_annotator_verify_page_shows_the_message_and_no_task(client, campaign, employee):
    task = task_with_candidates(campaign)
    services.annotator_pause(campaign=campaign, annotator=employee, paused=True)
    client.force_login(employee)
    for html in (
        client.get(verify_url(campaign)).content.decode(),
        client.get(verify_url(campaign), **HTMX).content.decode(),
    ):
        assert 'data-state="paused"' in html
        assert "Your work here is paused" in html
        assert 'name="pick"' not in html and 'name="task"' not in html
        assert str(task.uuid) not in html and task.photo.image.url not in html

    response = client.post(answer_url(campaign), {"task": task.uuid, "pick": "none", "idempotency_key": "k"}, **HTMX)
    html = response.content.decode()
    assert "paused" in html and 'name="pick"' not in html
    assert "HX-Trigger" not in response
    response = client.post(answer_url(campaign), {"task": task.uuid, "pick": "unfit", "idempotency_key": "k2"})
    assert response.status_code == 302
    assert not Answer.objects.exists()
    assert not Lease.objects.exists()


def test_admin_pause_and_resume_views(client, as_role, campaign, employee):
    task_with_candidates(campaign)
    services.task_next_for(user=employee, campaign=campaign, seed=0)
    assert Lease.objects.filter(annotator=employee).exists()
    admin = as_role("admin")

    response = client.post(pause_url(campaign, employee), {"paused": "1"})
    assert response.status_code == 302 and response["Location"] == annotators_url(campaign)
    stats = AnnotatorStats.objects.get(campaign=campaign, annotator=employee)
    assert stats.is_paused and stats.paused_by == admin
    assert not Lease.objects.filter(annotator=employee).exists()
    with pytest.raises(services.AnnotatorPaused):
        services.task_next_for(user=employee, campaign=campaign, seed=0)
    page = client.get(annotators_url(campaign)).content.decode()
    assert 'class="paused"' in page and 'name="paused" value="0"' in page  # a Resume button

    response = client.post(pause_url(campaign, employee), {"paused": "0"})
    assert response.status_code == 302
    stats.refresh_from_db()
    assert not stats.is_paused and stats.paused_by is None and stats.paused_at is None
    assert services.task_next_for(user=employee, campaign=campaign, seed=0) is not None


def test_pausing_an_unknown_annotator_is_404(client, as_role, campaign):
    as_role("admin")
    response = client.post(reverse("annotate:annotator-pause", args=[campaign.slug, "nobody"]), {"paused": "1"})
    assert response.status_code == 404
    assert not AnnotatorStats.objects.exists()


# -- permission matrix -------------------------------------------------------------------------------


def _login_redirect(response) -> bool:
    return response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_my_stats_permission_matrix(client, as_role, campaign, role):
    user = as_role(role)
    if user is not None:
        AnnotatorStats.objects.create(campaign=campaign, annotator=user, answer_count=7)
    response = client.get(reverse("annotate:my-stats"))
    if role == "anonymous":
        assert _login_redirect(response)
    else:
        assert response.status_code == 200
        assert campaign.name in response.content.decode()


def test_my_stats_shows_only_ones_own_rows(client, campaign, employee, employee2):
    other = CampaignFactory(slug="other", name="Other campaign")
    AnnotatorStats.objects.create(campaign=campaign, annotator=employee, answer_count=3)
    AnnotatorStats.objects.create(campaign=other, annotator=employee2, answer_count=4)
    client.force_login(employee)
    html = client.get(reverse("annotate:my-stats")).content.decode()
    assert campaign.name in html and "Other campaign" not in html


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_annotators_page_permission_matrix(client, as_role, campaign, employee, role):
    AnnotatorStats.objects.create(campaign=campaign, annotator=employee, answer_count=2)
    as_role(role)
    response = client.get(annotators_url(campaign))
    if role == "anonymous":
        assert _login_redirect(response)
    elif role == "admin":
        assert response.status_code == 200
        assert employee.username in response.content.decode()
    else:
        assert response.status_code == 403


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_pause_view_permission_matrix(client, as_role, campaign, employee, role):
    as_role(role)
    response = client.post(pause_url(campaign, employee), {"paused": "1"})
    if role == "anonymous":
        assert _login_redirect(response)
    elif role == "admin":
        assert response.status_code == 302 and response["Location"] == annotators_url(campaign)
    else:
        assert response.status_code == 403
    paused = AnnotatorStats.objects.filter(campaign=campaign, annotator=employee, is_paused=True).exists()
    assert paused == (role == "admin")


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_consensus_recompute_view_permission_matrix(
    client, as_role, campaign, employee, role, django_capture_on_commit_callbacks
):
    _answer(employee, task_with_candidates(campaign))
    as_role(role)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(recompute_url(campaign))
    campaign.refresh_from_db()
    if role == "anonymous":
        assert _login_redirect(response)
    elif role == "admin":
        assert response.status_code == 302 and response["Location"] == annotators_url(campaign)
    else:
        assert response.status_code == 403
    assert len(callbacks) == (1 if role == "admin" else 0)
    assert (campaign.consensus_computed_at is not None) == (role == "admin")
    stats = AnnotatorStats.objects.get(campaign=campaign, annotator=employee)
    assert (stats.computed_at is not None) == (role == "admin")


def test_recompute_view_on_a_campaign_without_answers(client, as_role, campaign, django_capture_on_commit_callbacks):
    as_role("admin")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(recompute_url(campaign))
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.consensus_computed_at is not None


def test_get_on_the_post_only_views_is_405(client, as_role, campaign, employee):
    as_role("admin")
    assert client.get(pause_url(campaign, employee)).status_code == 405
    assert client.get(recompute_url(campaign)).status_code == 405
    assert not AnnotatorStats.objects.exists()


def _api_login(api, role):
    if role == "anonymous":
        return None
    user = user_with_role(role, username=f"api-{role}")
    api.force_authenticate(user)
    return user


GOLD_EDITORS = {"ml", "admin"}


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_gold_put_permission_matrix(api, campaign, role):
    task = task_with_candidates(campaign)
    user = _api_login(api, role)
    response = api.put(gold_url(task), {"choice": "none"}, format="json")
    task.refresh_from_db()
    if role in GOLD_EDITORS:
        assert response.status_code == 200
        assert response.json()["task"] == str(task.uuid)
        assert response.json()["label"] == "none"
        assert task.is_gold
        assert GoldLabel.objects.get(task=task).created_by == user
    else:
        assert response.status_code == (401 if role == "anonymous" else 403)
        assert not task.is_gold and not GoldLabel.objects.exists()


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_gold_delete_permission_matrix(api, campaign, role):
    task = task_with_candidates(campaign)
    services.gold_set(task=task, label="2")
    _api_login(api, role)
    response = api.delete(gold_url(task))
    task.refresh_from_db()
    if role in GOLD_EDITORS:
        assert response.status_code == 204
        assert not task.is_gold and not GoldLabel.objects.exists()
    else:
        assert response.status_code == (401 if role == "anonymous" else 403)
        assert task.is_gold and GoldLabel.objects.get(task=task).label == "2"


class TestGoldApi:
    @pytest.fixture
    def ml(self, api, db):
        return _api_login(api, "ml")

    def test_bad_choice_is_400(self, api, campaign, ml):
        task = task_with_candidates(campaign)
        response = api.put(gold_url(task), {"choice": "maybe"}, format="json")
        assert response.status_code == 400
        assert "choice" in response.json()
        assert not GoldLabel.objects.exists()
        task.refresh_from_db()
        assert not task.is_gold

    @pytest.mark.parametrize("product", ["other", None])
    def test_product_not_among_the_candidates_is_400(self, api, campaign, ml, product):
        task = task_with_candidates(campaign)
        body = {"choice": "product"}
        if product == "other":
            body["product"] = str(ProductFactory().uuid)
        response = api.put(gold_url(task), body, format="json")
        assert response.status_code == 400
        assert "product" in response.json()
        assert not GoldLabel.objects.exists()

    def test_product_with_a_rejection_is_400(self, api, campaign, ml):
        task = task_with_candidates(campaign)
        product = task.candidates.get(rank=1).product
        response = api.put(gold_url(task), {"choice": "none", "product": str(product.uuid)}, format="json")
        assert response.status_code == 400
        assert not GoldLabel.objects.exists()

    def test_product_choice_stores_the_candidates_rank(self, api, campaign, ml):
        task = task_with_candidates(campaign)
        product = task.candidates.get(rank=3).product
        response = api.put(gold_url(task), {"choice": "product", "product": str(product.uuid)}, format="json")
        assert response.status_code == 200
        assert response.json()["label"] == "3"
        gold = GoldLabel.objects.get(task=task)
        assert (gold.label, gold.source) == ("3", GoldLabel.Source.MANUAL)

    def test_repeated_put_keeps_one_gold_label_and_can_change_it(self, api, campaign, ml):
        task = task_with_candidates(campaign)
        first = api.put(gold_url(task), {"choice": "unfit"}, format="json")
        again = api.put(gold_url(task), {"choice": "unfit"}, format="json")
        assert (first.status_code, again.status_code) == (200, 200)
        assert first.json()["label"] == again.json()["label"] == "unfit"
        assert GoldLabel.objects.count() == 1
        changed = api.put(gold_url(task), {"choice": "not_a_product"}, format="json")
        assert changed.status_code == 200
        assert list(GoldLabel.objects.values_list("label", flat=True)) == ["not_a_product"]

    def test_put_takes_the_task_out_of_the_regular_queue_and_delete_brings_it_back(self, api, campaign, ml, employee):
        campaign.gold_first_count = 0
        campaign.gold_rate = 0.0
        campaign.save()
        task = task_with_candidates(campaign)
        assert api.put(gold_url(task), {"choice": "none"}, format="json").status_code == 200
        assert services.task_next_for(user=employee, campaign=campaign, seed=0) is None
        response = api.delete(gold_url(task))
        assert response.status_code == 204
        task.refresh_from_db()
        assert not task.is_gold and not GoldLabel.objects.exists()
        assert services.task_next_for(user=employee, campaign=campaign, seed=0) == task

    def test_delete_keeps_the_answers_and_is_204_on_a_regular_task(self, api, campaign, ml, employee):
        task = task_with_candidates(campaign)
        services.gold_set(task=task, label="1")
        _answer(employee, task)
        assert api.delete(gold_url(task)).status_code == 204
        assert api.delete(gold_url(task)).status_code == 204
        task.refresh_from_db()
        assert not task.is_gold
        assert task.answer_count == 1 and Answer.objects.filter(task=task).count() == 1

    def test_unknown_task_is_404(self, api, ml):
        response = api.put("/api/v1/tasks/00000000-0000-4000-8000-000000000000/gold", {"choice": "none"}, format="json")
        assert response.status_code == 404


# -- the annotators page -----------------------------------------------------------------------------


def _rows(html: str) -> dict[str, list[str]]:
    """The annotators table as {username: [cell texts]}, in page order."""
    body = html[html.index("<tbody>") : html.index("</tbody>")]
    rows = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, flags=re.S):
        cells = [
            " ".join(re.sub(r"<[^>]+>", " ", cell).split()) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        ]
        rows[cells[0]] = cells
    return rows


def test_annotators_page_lists_numbers_and_flags_after_a_full_recompute(client, as_role, employee, employee2):
    campaign = CampaignFactory(min_duration_ms=700, gold_first_count=0)
    for _ in range(5):
        _answer(employee, task_with_candidates(campaign), duration_ms=120)
    for _ in range(2):
        _answer(employee2, task_with_candidates(campaign), duration_ms=2400)
    # Before the recompute the counters are current but nobody is flagged yet.
    assert AnnotatorStats.objects.get(annotator=employee).flags == []

    consensus_recompute(campaign_id=campaign.pk)
    fast = AnnotatorStats.objects.get(campaign=campaign, annotator=employee)
    careful = AnnotatorStats.objects.get(campaign=campaign, annotator=employee2)
    assert "too_fast" in fast.flags and fast.too_fast_count == 5
    assert careful.flags == [] and careful.too_fast_count == 0

    as_role("admin")
    response = client.get(annotators_url(campaign))
    assert response.status_code == 200
    html = response.content.decode()
    rows = _rows(html)
    assert list(rows) == [employee.username, employee2.username]  # flagged people first
    assert rows[employee.username][1] == "5"  # answers
    assert rows[employee.username][6] == "120"  # median ms
    assert rows[employee.username][7] == "5"  # too fast
    assert "too_fast" in rows[employee.username][9]
    assert rows[employee2.username][1] == "2"
    assert rows[employee2.username][6] == "2400"
    assert rows[employee2.username][7] == "0"
    assert rows[employee2.username][9] == "—"
    assert 'class="flagged"' in html
    assert "never" not in html  # the last recompute is shown


def _annotator_answers(campaign, count: int, *, start: int) -> None:
    for i in range(start, start + count):
        _answer(user_with_role("employee", username=f"annotator-{i}"), task_with_candidates(campaign))


def test_annotators_page_query_count_does_not_grow_with_annotators(
    client, as_role, campaign, django_assert_max_num_queries
):
    _annotator_answers(campaign, 2, start=0)
    consensus_recompute(campaign_id=campaign.pk)
    as_role("admin")
    client.get(annotators_url(campaign))  # warm the session
    # Session, user, roles, campaign, stats with their users, the task summary.
    with django_assert_max_num_queries(6) as captured:
        response = client.get(annotators_url(campaign))
    assert len(_rows(response.content.decode())) == 2
    first_count = len(captured.captured_queries)

    _annotator_answers(campaign, 4, start=2)
    consensus_recompute(campaign_id=campaign.pk)
    with django_assert_max_num_queries(first_count) as captured_again:
        response = client.get(annotators_url(campaign))
    assert len(_rows(response.content.decode())) == 6
    assert len(captured_again.captured_queries) == first_count


def test_a_taggers_stats_promise_no_checks_in_a_campaign_without_gold(client, db):
    # Issue 16, bug 11: "Gold accuracy: after 5 checks" in an attributes campaign, which has no gold.
    tagging = CampaignFactory(slug="tagging", kind=Campaign.Kind.ATTRIBUTES)
    tagger = user_with_role("tagger", username="tess")
    AnnotatorStats.objects.create(campaign=tagging, annotator=tagger, answer_count=3)
    client.force_login(tagger)
    html = client.get(reverse("annotate:my-stats")).content.decode()
    assert "checks</span>" not in html and "This campaign has no checks with a known answer." in html
