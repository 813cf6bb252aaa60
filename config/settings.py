"""fitcheck settings. Every deployment-specific value comes from the environment (django-environ).

The defaults are the embedded setup used by `make demo`: SQLite for data and a SQLite file as the
Celery broker (kombu's SQLAlchemy transport), both under `var/`. Set DATABASE_URL and
CELERY_BROKER_URL to run the same code on PostgreSQL and Redis.
"""

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")  # optional; silently absent

VAR_DIR = Path(env("FITCHECK_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env("DJANGO_SECRET_KEY", default="insecure-local-only-key-set-DJANGO_SECRET_KEY-in-production")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "catalog",
    "mlcore",
    "annotate",
    "gamify",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

# Outages: a database or broker that is down answers 503 (JSON with Retry-After on /api/, a plain
# page elsewhere), never a traceback. Last, so it is the first to see a view's exception.
MIDDLEWARE += ["config.middleware.OutageMiddleware"]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "annotate.context_processors.user_roles",
                "gamify.context_processors.nav",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'fitcheck.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the Celery worker write to the same file: WAL lets readers run beside one
    # writer, IMMEDIATE takes the write lock at BEGIN so two writers queue instead of deadlocking.
    # "timeout" is how long a writer waits for that lock (SQLite's busy timeout): every write
    # transaction in the app is short (a chunk of at most 500 rows), so 5 s is plenty for the web and
    # the demo's two workers to queue behind each other, and a lock held longer (a stuck process)
    # answers 503 in 5 s (config.middleware) instead of hanging a request for 30.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": env.float("FITCHECK_SQLITE_TIMEOUT_S", default=5.0),
    }
    # A file, not :memory:, so a real Celery worker started by a test sees the test database; one per
    # test process, so two test runs in one checkout do not delete each other's database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-fitcheck-{os.getpid()}.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
    # A database that does not answer fails a request in 5 s (503, config.middleware), not libpq's
    # default of waiting for the TCP timeout.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("FITCHECK_DB_CONNECT_TIMEOUT_S", default=5)
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(VAR_DIR / "staticfiles")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns on every request without it
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(VAR_DIR / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True  # serve static/ without collectstatic in the demo

DATA_UPLOAD_MAX_MEMORY_SIZE = 30 * 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first, so an anonymous client gets 401 with a WWW-Authenticate header, not 403.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "fitcheck API",
    "DESCRIPTION": "Verify model-suggested product matches, tag attributes and export gold datasets.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",  # served from static files, never a CDN
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "MatchChoiceEnum": "annotate.models.Answer.MATCH_CHOICES",
        "AnswerChoiceEnum": "annotate.models.Answer.Choice",
    },
}

# Celery. Embedded default: a SQLite file as broker, polled by a real worker process.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=f"sqla+sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}")
# kombu's SQLAlchemy transport hands every transport option to create_engine(), so only engine
# arguments are set for it below; it polls the SQLite file once a second.
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A dead broker fails a publish in about 1.5 s (then the row stays PENDING and the beat sweep sends
# it again, mlcore.jobs), not 2.7-15 s or forever: one connect/read timeout of
# FITCHECK_BROKER_TIMEOUT_S and one retry. Workers keep reconnecting as before (the socket timeout
# does not apply to their event loop).
FITCHECK_BROKER_TIMEOUT_S = env.float("FITCHECK_BROKER_TIMEOUT_S", default=1.0)
CELERY_BROKER_CONNECTION_TIMEOUT = FITCHECK_BROKER_TIMEOUT_S
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "socket_timeout": FITCHECK_BROKER_TIMEOUT_S,
        "socket_connect_timeout": FITCHECK_BROKER_TIMEOUT_S,
    }
elif CELERY_BROKER_URL.startswith("sqla+sqlite"):
    # Passed to create_engine(): how long a publish waits for the broker file's lock (pysqlite: 5 s).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"connect_args": {"timeout": 2 * FITCHECK_BROKER_TIMEOUT_S}}
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "mlcore.embed": {"queue": "gpu"},
    "mlcore.train*": {"queue": "gpu"},
    "annotate.learning_apply": {"queue": "gpu"},  # runs the model over the open tasks
    "annotate.matching_apply": {"queue": "gpu"},
    "annotate.backbone_apply": {"queue": "gpu"},
    "mlcore.matching_pretrain": {"queue": "gpu"},
    "mlcore.training_runs_recover": {"queue": "default"},
    "annotate.jobs_recover": {"queue": "default"},
}
CELERY_TASK_IGNORE_RESULT = True
# Full consensus recompute of campaigns whose answers changed (annotate.consensus). Each answer
# already updates its own task; this re-fits annotator reliability over the whole campaign.
CELERY_BEAT_SCHEDULE = {
    # Jobs that finish: re-send the jobs of training runs, exports and campaign preparations whose
    # message was lost to a killed worker or a broker outage (annotate.recovery).
    "jobs-recover": {
        "task": "annotate.jobs_recover",
        "schedule": env.float("FITCHECK_JOBS_RECOVER_S", default=120.0),
        "options": {"expires": 110},
    },
    "consensus-recompute-dirty": {
        "task": "annotate.consensus_recompute_dirty",
        "schedule": env.float("FITCHECK_CONSENSUS_RECOMPUTE_S", default=60.0),
        "options": {"expires": 55},
    },
    # The learning loop: retrain attribute campaigns with enough new labels (annotate.learning).
    "learning-due": {
        "task": "annotate.learning_due",
        "schedule": env.float("FITCHECK_LEARNING_CHECK_S", default=600.0),
        "options": {"expires": 550},
    },
}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = False  # opted into per task, only where the task is idempotent
# Eager mode exists for the test suite only (tests/conftest.py); never set it in a deployment.
CELERY_TASK_ALWAYS_EAGER = False

# fitcheck
FITCHECK_DEVICE = env("FITCHECK_DEVICE", default="auto")  # "auto", "cpu", "cuda", "cuda:1"
FITCHECK_MAX_IMAGE_PIXELS = env.int("FITCHECK_MAX_IMAGE_PIXELS", default=40_000_000)
FITCHECK_MAX_IMAGE_BYTES = env.int("FITCHECK_MAX_IMAGE_BYTES", default=25 * 1024 * 1024)
FITCHECK_FETCH_TIMEOUT_S = env.float("FITCHECK_FETCH_TIMEOUT_S", default=20.0)
# Importers (catalog_import, photos_import, label_studio_import) read image files only inside these
# folders (comma-separated; realpath-checked) and download only from public addresses unless
# FITCHECK_IMPORT_ALLOW_PRIVATE_URLS is set (catalog.images.image_read).
FITCHECK_IMPORT_ROOTS = [Path(p) for p in env.list("FITCHECK_IMPORT_ROOTS", default=[str(VAR_DIR / "import")])]
FITCHECK_IMPORT_ALLOW_PRIVATE_URLS = env.bool("FITCHECK_IMPORT_ALLOW_PRIVATE_URLS", default=False)
# Gold-dataset exports (annotate.exports): built by the worker, downloaded through permission-checked
# views only, so never under MEDIA_ROOT (which any logged-in user may read).
# Model checkpoints of the learning loop (mlcore.training); like exports, not under MEDIA_ROOT.
# Stage 1 of the matching CNN (mlcore.matching_pretrain), queued when a match campaign is prepared.
# Off with FITCHECK_MATCH_PRETRAIN=0; the config fields are mlcore.nn.match_cnn.MatchCNNConfig's.
FITCHECK_MATCH_PRETRAIN = env.bool("FITCHECK_MATCH_PRETRAIN", default=True)
FITCHECK_MATCH_PRETRAIN_CONFIG = {"epochs": env.int("FITCHECK_MATCH_PRETRAIN_EPOCHS", default=12)}
FITCHECK_MODELS_ROOT = Path(env("FITCHECK_MODELS_ROOT", default=str(VAR_DIR / "models")))
FITCHECK_EXPORTS_ROOT = Path(env("FITCHECK_EXPORTS_ROOT", default=str(VAR_DIR / "exports")))
# Where image URLs in exports point: the public address of this server (MEDIA_URL is appended).
FITCHECK_PUBLIC_URL = env("FITCHECK_PUBLIC_URL", default="http://localhost:8000")
FITCHECK_SERVE_MEDIA = env.bool("FITCHECK_SERVE_MEDIA", default=True)
FASHION_MNIST_DIR = env("FASHION_MNIST_DIR", default=None)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
