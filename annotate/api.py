"""JSON API for machines and the demo scripts (DRF). Session or token auth."""

import json
from urllib.parse import urlencode

from django.contrib.auth import authenticate
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from knox.auth import TokenAuthentication
from rest_framework import status
from rest_framework.exceptions import APIException, NotFound, PermissionDenied, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle, ScopedRateThrottle
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from . import auth, selectors, services
from .exports import services as export_services
from .exports.records import ExportInvalid
from .models import Campaign, GoldLabel, Lease
from .serializers import (
    AnswerInputSerializer,
    AnswerSerializer,
    ConflictSerializer,
    ErrorSerializer,
    ExportCreateSerializer,
    ExportSnapshotPageSerializer,
    ExportSnapshotSerializer,
    GoldInputSerializer,
    GoldSerializer,
    RawAnswerPageSerializer,
    SkipSerializer,
    TaskSerializer,
    TokenCreateInputSerializer,
    TokenSerializer,
)
from .views import export_file_response


def api_exception_handler(exc, context):
    """DRF's exception handler, with a `code` beside every `detail`: {"code": "permission_denied",
    "detail": "..."} (the code is DRF's, e.g. not_authenticated, not_found, parse_error,
    unsupported_media_type, method_not_allowed; wrong_campaign_kind, 404 from a getter and 400 from
    a service, for a task or campaign of the other kind). Per-field validation errors (400) stay
    {field: [reasons]}. Returns None for exceptions DRF does not handle (Django then answers)."""
    # A task or campaign of the other kind: 404 from a getter, 400 from a service, each with its code.
    if isinstance(exc, selectors.CampaignKindMismatch | services.WrongCampaignKind):
        kind_status = status.HTTP_404_NOT_FOUND if isinstance(exc, Http404) else status.HTTP_400_BAD_REQUEST
        return Response({"code": exc.code, "detail": str(exc)}, status=kind_status)
    # The conversion DRF's handler makes itself, done first so that the code is known.
    if isinstance(exc, Http404):
        exc = NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = PermissionDenied(*exc.args)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and set(response.data) == {"detail"}:
        code = exc.get_codes() if isinstance(exc, APIException) else "error"
        response.data = {"code": code if isinstance(code, str) else "error", "detail": response.data["detail"]}
    return response


class FitcheckAPIView(APIView):
    """APIView whose error bodies carry a `code` (api_exception_handler)."""

    def get_exception_handler(self):
        return api_exception_handler


def _errors(*statuses: int, **descriptions: str) -> dict:
    """Schema responses for the error statuses an operation can answer, all ErrorSerializer bodies;
    `descriptions` override the default text (keyword `e404="No such task."`)."""
    default = {
        401: "Not authenticated (code not_authenticated): send a token or log in.",
        403: "Not allowed for your role (code permission_denied).",
        404: "No such object, or not one you may see (code not_found).",
        415: "Not JSON (code unsupported_media_type).",
    }
    return {
        code: OpenApiResponse(ErrorSerializer, description=descriptions.get(f"e{code}", default[code]))
        for code in statuses
    }


class NextTaskView(FitcheckAPIView):
    @extend_schema(
        summary="Lease the next task",
        parameters=[OpenApiParameter("seed", int, description="Orders this client's queue; default: per user.")],
        responses={
            200: TaskSerializer,
            204: OpenApiResponse(description="No task left for you."),
            400: OpenApiResponse(description="seed is not an integer."),
            409: OpenApiResponse(
                ErrorSerializer,
                description="The campaign is still preparing its first tasks (code campaign_preparing); "
                "try again after Retry-After seconds.",
            ),
            **_errors(401, 404, e404="No such campaign, or not one you verify."),
            403: OpenApiResponse(
                ErrorSerializer, description="Not allowed (code permission_denied), or paused (code annotator_paused)."
            ),
        },
    )
    def get(self, request, slug):
        """Lease and return the caller's next task in the campaign (the same one while its lease lives)."""
        campaign = selectors.get_campaign_for_user(request.user, slug)
        try:
            seed = int(request.query_params.get("seed", request.user.pk * 2654435761))
        except ValueError:
            return Response({"seed": ["must be an integer"]}, status=status.HTTP_400_BAD_REQUEST)
        try:
            task = services.task_next_for(user=request.user, campaign=campaign, seed=seed)
        except services.AnnotatorPaused as exc:
            return Response({"code": exc.code, "detail": exc.message}, status=status.HTTP_403_FORBIDDEN)
        if task is None:
            if campaign.status == Campaign.Status.PREPARING:
                # "Nothing left" would be wrong: the first tasks are still being built.
                return Response(
                    {"code": "campaign_preparing", "detail": "The campaign is still preparing its tasks."},
                    status=status.HTTP_409_CONFLICT,
                    headers={"Retry-After": "15"},
                )
            return Response(status=status.HTTP_204_NO_CONTENT)
        task = selectors.task_with_candidates(task.pk)
        lease = Lease.objects.filter(task=task, annotator=request.user, expires_at__gt=timezone.now()).first()
        task.lease_expires_at = lease.expires_at if lease else None
        return Response(TaskSerializer(task, context={"request": request}).data)


class AnswerCreateView(FitcheckAPIView):
    @extend_schema(
        summary="Answer a task",
        request=AnswerInputSerializer,
        parameters=[OpenApiParameter("Idempotency-Key", str, location=OpenApiParameter.HEADER, required=False)],
        responses={
            201: AnswerSerializer,
            200: OpenApiResponse(AnswerSerializer, description="Replay of an idempotency key: the first answer."),
            400: OpenApiResponse(description="Invalid fields, with reasons per field; or not JSON (code parse_error)."),
            **_errors(401, 404, e404="No such task, or not one you may answer."),
            403: OpenApiResponse(
                ErrorSerializer, description="Not allowed (code permission_denied), or paused (code annotator_paused)."
            ),
            409: ConflictSerializer,
        },
    )
    def post(self, request, uuid):
        """Record the caller's answer. 201 on creation; 200 with the same answer when the idempotency key
        was seen before; 409 when the caller already answered, the task is complete, or every free slot is
        leased to other people."""
        task = selectors.get_task_for_user(request.user, uuid)
        data = AnswerInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = data.validated_data.get("idempotency_key") or request.headers.get("Idempotency-Key", "")
        if not key:
            return Response(
                {"idempotency_key": ["required, in the body or the Idempotency-Key header"]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        try:
            answer, created = services.answer_submit(
                user=request.user,
                task=task,
                choice=data.validated_data["choice"],
                product_uuid=data.validated_data.get("product"),
                duration_ms=data.validated_data["duration_ms"],
                idempotency_key=key,
            )
        except services.AnswerInvalid as exc:
            return Response(exc.errors, status=status.HTTP_400_BAD_REQUEST)
        except services.AnnotatorPaused as exc:
            return Response({"code": exc.code, "detail": exc.message}, status=status.HTTP_403_FORBIDDEN)
        except services.AnswerConflict as exc:
            return Response({"code": exc.code, "detail": exc.message}, status=status.HTTP_409_CONFLICT)
        answer.task = task
        return Response(
            AnswerSerializer(answer).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class SkipView(FitcheckAPIView):
    @extend_schema(
        summary="Skip a task",
        request=None,
        responses={
            200: SkipSerializer,
            **_errors(401, 403, 404, e404="No such task, or not one you may answer."),
            409: OpenApiResponse(
                ConflictSerializer,
                description="You already answered this task (code already_answered): undo it instead.",
            ),
        },
    )
    def post(self, request, uuid):
        """Pass over a task without answering: your lease on it is released, so it goes back to the
        pool at once, and next-task hands it to you again only when nothing else is left for you. No
        answer is recorded. Idempotent (skipping again moves it to the back)."""
        task = selectors.get_task_for_user(request.user, uuid)
        try:
            skip = services.task_skip(user=request.user, task=task)
        except services.AnswerConflict as exc:
            return Response({"code": exc.code, "detail": exc.message}, status=status.HTTP_409_CONFLICT)
        skip.task = task
        return Response(SkipSerializer(skip).data)


class UndoView(FitcheckAPIView):
    @extend_schema(
        summary="Undo your last answer",
        request=None,
        responses={
            200: OpenApiResponse(
                TaskSerializer, description="The task of the undone answer, leased back to you: your next task."
            ),
            **_errors(401, 403, 404, e404="No such campaign, or an attributes campaign (code wrong_campaign_kind)."),
            409: OpenApiResponse(
                ErrorSerializer,
                description="Nothing to undo (code nothing_to_undo): no live answer of yours in the campaign "
                "within the undo window.",
            ),
        },
    )
    def post(self, request, slug):
        """Revoke your most recent answer in the campaign, as **z** does on the verify page: within
        the undo window (services.UNDO_WINDOW), the answer is kept but marked revoked, consensus is
        updated without it, and its task is leased back to you, so next-task returns it. Undoing
        again undoes the answer before it, while that one is still inside the window."""
        campaign = selectors.get_campaign_for_user(request.user, slug)
        task = services.answer_undo_last(user=request.user, campaign=campaign)
        if task is None:
            return Response(
                {"code": "nothing_to_undo", "detail": "You have no answer in this campaign that can still be undone."},
                status=status.HTTP_409_CONFLICT,
            )
        task = selectors.task_with_candidates(task.pk)
        lease = Lease.objects.filter(task=task, annotator=request.user, expires_at__gt=timezone.now()).first()
        task.lease_expires_at = lease.expires_at if lease else None
        return Response(TaskSerializer(task, context={"request": request}).data)


class GoldView(FitcheckAPIView):
    """Gold (known-answer) tasks, for the ML team and admins. An annotator never sees this."""

    @extend_schema(
        summary="Make a task gold, with its known answer",
        request=GoldInputSerializer,
        responses={
            200: GoldSerializer,
            400: OpenApiResponse(description="Invalid fields, per field."),
            **_errors(401, 403, 404, e404="No such task, or not one you may edit."),
        },
    )
    def put(self, request, uuid):
        """Set (or change) the task's known answer. The task leaves the regular queue and is mixed into
        people's queues as a gold task. Idempotent."""
        task = selectors.get_task_for_gold_editor(request.user, uuid)
        data = GoldInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            label = services.choice_label(
                task=task, choice=data.validated_data["choice"], product_uuid=data.validated_data.get("product")
            )
            gold = services.gold_set(task=task, label=label, source=GoldLabel.Source.MANUAL, created_by=request.user)
        except services.AnswerInvalid as exc:
            return Response(exc.errors, status=status.HTTP_400_BAD_REQUEST)
        except services.GoldInvalid as exc:
            return Response({"choice": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        gold.task = task
        return Response(GoldSerializer(gold).data)

    @extend_schema(
        summary="Make a gold task regular again",
        responses={204: None, **_errors(401, 403, 404, e404="No such task, or not one you may edit.")},
    )
    def delete(self, request, uuid):
        """Remove the task's known answer; its answers stay. 204 whether or not it was gold."""
        task = selectors.get_task_for_gold_editor(request.user, uuid)
        services.gold_clear(task=task)
        return Response(status=status.HTTP_204_NO_CONTENT)


# -- exports (ML team and admins) ----------------------------------------------------------------------


class ExportPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50


class ExportListCreateView(FitcheckAPIView):
    """Gold-dataset export snapshots. ML team and admins only; taggers and employees get 403.
    POST takes JSON only: a form or multipart body cannot carry the nested `filters` (DRF would drop
    them without a word), so it is refused with 415."""

    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="v1_exports_list",
        summary="List export snapshots, newest first (cursor-paginated, 50 a page)",
        parameters=[OpenApiParameter("cursor", str, description="From a page's `next` or `previous`.")],
        responses={
            200: ExportSnapshotPageSerializer,
            **_errors(401, 403, 404, e404="The cursor is not valid (code not_found)."),
        },
    )
    def get(self, request):
        paginator = ExportPagination()
        page = paginator.paginate_queryset(selectors.snapshots_for_user(request.user), request, view=self)
        return paginator.get_paginated_response(
            ExportSnapshotSerializer(page, many=True, context={"request": request}).data
        )

    @extend_schema(
        summary="Start an export snapshot",
        request=ExportCreateSerializer,
        responses={
            202: OpenApiResponse(ExportSnapshotSerializer, description="Queued; poll it until status is done."),
            400: OpenApiResponse(description="Invalid fields, with reasons per field; or not JSON (code parse_error)."),
            **_errors(401, 403, 415),
        },
    )
    def post(self, request):
        """Queue a new snapshot (version = last of this name + 1); the worker builds it. Poll the
        snapshot's URL for progress; download its files when status is done."""
        selectors.snapshots_for_user(request.user)  # the role check
        data = ExportCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            snapshot = export_services.export_create(**data.validated_data, created_by=request.user)
        except ExportInvalid as exc:
            return Response(exc.errors, status=status.HTTP_400_BAD_REQUEST)
        response = Response(
            ExportSnapshotSerializer(snapshot, context={"request": request}).data, status=status.HTTP_202_ACCEPTED
        )
        response["Location"] = reverse("api-export-detail", kwargs={"uuid": snapshot.uuid})
        return response


class ExportDetailView(FitcheckAPIView):
    @extend_schema(
        summary="One export snapshot, with progress and files",
        responses={200: ExportSnapshotSerializer, **_errors(401, 403, 404)},
    )
    def get(self, request, uuid):
        snapshot = selectors.get_snapshot_for_user(request.user, uuid)
        return Response(ExportSnapshotSerializer(snapshot, context={"request": request}).data)


class ExportFileView(FitcheckAPIView):
    @extend_schema(
        summary="Download one file of a finished snapshot",
        parameters=[
            OpenApiParameter(
                "X-Checksum-Sha256",
                str,
                location=OpenApiParameter.HEADER,
                response=[200],
                description="The file's sha256 (hex), as in the snapshot's files.",
            ),
        ],
        responses={
            # The type follows the file: application/json, text/csv, application/octet-stream, ...
            (200, "*/*"): OpenApiTypes.BINARY,
            **_errors(401, 403, 404, e404="No such snapshot or file."),
        },
    )
    def get(self, request, uuid, path):
        """Streams the file; its sha256 is in the X-Checksum-Sha256 header and the snapshot's files."""
        snapshot = selectors.get_snapshot_for_user(request.user, uuid)
        try:
            full = export_services.export_file_path(snapshot=snapshot, path=path)
        except FileNotFoundError:
            raise NotFound("No such file in this export.") from None
        return export_file_response(snapshot, path, full)


class RawAnswersView(FitcheckAPIView):
    @extend_schema(
        summary="Raw answers of a campaign, oldest first, cursor-paginated and streamed",
        parameters=[
            OpenApiParameter("cursor", str, description="From the previous page's `next`; none: the first page."),
            OpenApiParameter(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": export_services.ANSWERS_PAGE_MAX, "default": 1000},
                description=f"Rows per page, 1-{export_services.ANSWERS_PAGE_MAX} (1000).",
            ),
        ],
        responses={
            200: RawAnswerPageSerializer,
            400: OpenApiResponse(description="A bad cursor or limit."),
            **_errors(401, 403, 404, e404="No such campaign."),
        },
    )
    def get(self, request, slug):
        """Live (not undone) answers, annotators pseudonymised as in exports. The body is streamed
        as it is read; `next` comes last and is null on the last page. New answers appear on later
        pages, never shifting earlier ones."""
        campaign = selectors.get_campaign_for_exporter(request.user, slug)
        try:
            after = export_services.answers_cursor_decode(request.query_params.get("cursor"))
            limit = int(request.query_params.get("limit", 1000))
            if not 1 <= limit <= export_services.ANSWERS_PAGE_MAX:
                raise ValueError
        except ExportInvalid as exc:
            return Response(exc.errors, status=status.HTTP_400_BAD_REQUEST)
        except ValueError:
            return Response(
                {"limit": [f"must be an integer in 1..{export_services.ANSWERS_PAGE_MAX}"]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        rows = export_services.answers_page(campaign=campaign, after_pk=after, limit=limit)
        base = request.build_absolute_uri(request.path)

        def body():
            yield '{"results":['
            count, last, batch = 0, None, []
            for row in rows:
                last = row.pop("_pk")
                batch.append(json.dumps(row, separators=(",", ":")))
                count += 1
                if len(batch) == 500:
                    yield ("," if count > 500 else "") + ",".join(batch)
                    batch = []
            if batch:
                yield ("," if count > len(batch) else "") + ",".join(batch)
            following = None
            if count == limit:
                following = (
                    f"{base}?{urlencode({'cursor': export_services.answers_cursor_encode(last), 'limit': limit})}"
                )
            yield '],"next":' + json.dumps(following) + "}"

        return StreamingHttpResponse(body(), content_type="application/json")


# -- API tokens --------------------------------------------------------------------------------------


class TokenCreateView(FitcheckAPIView):
    """Trade a username and password for an API token (hashed, expiring: django-rest-knox)."""

    authentication_classes = []  # the password is the credential; no session, hence no CSRF
    permission_classes = [AllowAny]
    throttle_classes = [AnonRateThrottle, ScopedRateThrottle]
    throttle_scope = "token"

    @extend_schema(
        summary="Create an API token",
        request=TokenCreateInputSerializer,
        responses={
            200: TokenSerializer,
            400: OpenApiResponse(description="Wrong username or password (as DRF's own token view)."),
            **_errors(403, e403="Too many live tokens for this user (code permission_denied)."),
            429: OpenApiResponse(description="Too many attempts: throttled, or the login is locked out."),
        },
    )
    def post(self, request):
        """A new token for the user whose password this is. Wrong passwords count towards the login
        lockout (django-axes) like the login page's; the endpoint is throttled (scope "token")."""
        data = TokenCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # The Django request, so that django-axes records the failure and its middleware answers a
        # locked-out client.
        user = authenticate(request._request, **data.validated_data)
        if user is None:
            raise ValidationError({"non_field_errors": ["Wrong username or password."]})
        try:
            instance, token = auth.token_create(user=user)
        except auth.TokenLimitReached as exc:
            raise PermissionDenied(str(exc)) from exc
        return Response(TokenSerializer({"token": token, "expiry": instance.expiry}).data)


class TokenRevokeView(FitcheckAPIView):
    """Revoke the token this request is authenticated with."""

    authentication_classes = [TokenAuthentication]

    @extend_schema(
        summary="Revoke this API token",
        request=None,
        responses={204: None, **_errors(401, 403, e403="Not allowed (code permission_denied).")},
    )
    def post(self, request):
        """Delete the calling token; it is rejected from now on. Other tokens of the user stay."""
        request._auth.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)
