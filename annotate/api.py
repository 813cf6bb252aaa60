"""JSON API for machines and the demo scripts (DRF). Session or token auth."""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from . import selectors, services
from .models import GoldLabel, Lease
from .serializers import (
    AnswerInputSerializer,
    AnswerSerializer,
    ConflictSerializer,
    GoldInputSerializer,
    GoldSerializer,
    TaskSerializer,
)


def _verifier_only(fn):
    def wrapper(self, request, *args, **kwargs):
        try:
            return fn(self, request, *args, **kwargs)
        except DjangoPermissionDenied as exc:
            raise PermissionDenied(str(exc)) from exc

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


class NextTaskView(APIView):
    @extend_schema(
        summary="Lease the next task",
        parameters=[OpenApiParameter("seed", int, description="Orders this client's queue; default: per user.")],
        responses={
            200: TaskSerializer,
            204: OpenApiResponse(description="No task left for you."),
            403: OpenApiResponse(ConflictSerializer, description="Not allowed, or paused (code annotator_paused)."),
        },
    )
    @_verifier_only
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
            return Response(status=status.HTTP_204_NO_CONTENT)
        task = selectors.task_with_candidates(task.pk)
        lease = Lease.objects.filter(task=task, annotator=request.user, expires_at__gt=timezone.now()).first()
        task.lease_expires_at = lease.expires_at if lease else None
        return Response(TaskSerializer(task, context={"request": request}).data)


class AnswerCreateView(APIView):
    @extend_schema(
        summary="Answer a task",
        request=AnswerInputSerializer,
        parameters=[OpenApiParameter("Idempotency-Key", str, location=OpenApiParameter.HEADER, required=False)],
        responses={
            201: AnswerSerializer,
            200: OpenApiResponse(AnswerSerializer, description="Replay of an idempotency key: the first answer."),
            400: OpenApiResponse(description="Invalid fields, with reasons per field."),
            403: OpenApiResponse(ConflictSerializer, description="Not allowed, or paused (code annotator_paused)."),
            409: ConflictSerializer,
        },
    )
    @_verifier_only
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


class GoldView(APIView):
    """Gold (known-answer) tasks, for the ML team and admins. An annotator never sees this."""

    @extend_schema(
        summary="Make a task gold, with its known answer",
        request=GoldInputSerializer,
        responses={200: GoldSerializer, 400: OpenApiResponse(description="Invalid fields, per field.")},
    )
    @_verifier_only
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

    @extend_schema(summary="Make a gold task regular again", responses={204: None})
    @_verifier_only
    def delete(self, request, uuid):
        """Remove the task's known answer; its answers stay. 204 whether or not it was gold."""
        task = selectors.get_task_for_gold_editor(request.user, uuid)
        services.gold_clear(task=task)
        return Response(status=status.HTTP_204_NO_CONTENT)
