# One image for every fitcheck process: web (gunicorn), Celery workers (CPU and GPU) and beat.
# The PyPI torch wheel for linux x86_64 carries its CUDA libraries, so the same image runs on the
# GPU worker under the NVIDIA container runtime and on CPU everywhere else (FITCHECK_DEVICE).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install --no-cache-dir uv

WORKDIR /app

# Dependencies first, so that a code change does not reinstall torch.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-cache

COPY . .

# Code stays root-owned and read-only to the app; it writes only to var/ (collectstatic, beat's
# schedule) and to /data: media, exports and models, volumes shared by web and workers (created
# here so that a fresh named volume starts owned by the app user).
RUN useradd --system --create-home --home-dir /home/app --uid 10001 app \
    && mkdir -p /app/var /data/media /data/exports /data/models \
    && chown app:app /app/var /data/media /data/exports /data/models

# No FITCHECK_ENV: production, which refuses to start without DJANGO_SECRET_KEY and
# FITCHECK_PSEUDONYM_KEY (docs/operations.md).
ENV PATH=/app/.venv/bin:$PATH \
    FITCHECK_VAR_DIR=/app/var \
    MEDIA_ROOT=/data/media \
    FITCHECK_EXPORTS_ROOT=/data/exports \
    FITCHECK_MODELS_ROOT=/data/models

USER app
EXPOSE 8000
CMD ["gunicorn", "config.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
