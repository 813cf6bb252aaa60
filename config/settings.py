"""fitcheck settings. Every deployment-specific value comes from the environment (django-environ).

The defaults are the embedded setup used by `make demo`: SQLite for data and a SQLite file as the
Celery broker (kombu's SQLAlchemy transport), both under `var/`. Set DATABASE_URL and
CELERY_BROKER_URL to run the same code on PostgreSQL and Redis. Secrets have no default: see
FITCHECK_ENV below, and docs/operations.md for every variable of a production install.
"""

import os
import secrets
import sys
import time
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")  # optional; silently absent

VAR_DIR = Path(env("FITCHECK_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DJANGO_DEBUG", default=False)

# Secrets. FITCHECK_ENV says what kind of install this is: "production" (the default) refuses to
# start without DJANGO_SECRET_KEY and FITCHECK_PSEUDONYM_KEY; "demo" (bin/demo) and "test" (the test
# suite, set by default under pytest) generate both once and keep them in var/ (mode 0600), so a
# fresh clone runs with no environment while a deployment can never fall back to a public key.
# DJANGO_DEBUG=true allows the same local keys. docs/operations.md lists every variable.
FITCHECK_ENV = env("FITCHECK_ENV", default="test" if "pytest" in sys.modules else "production")
if FITCHECK_ENV not in ("production", "demo", "test"):
    raise ImproperlyConfigured(f"FITCHECK_ENV={FITCHECK_ENV!r}: use production, demo or test")
FITCHECK_LOCAL_KEYS = DEBUG or FITCHECK_ENV != "production"
# The key this file shipped with before issue 14: public, so never accepted.
_PUBLIC_KEYS = {"insecure-local-only-key-set-DJANGO_SECRET_KEY-in-production"}
# manage.py commands that only read the code and sign nothing (`makemigrations --check` in a fresh
# checkout, say) run without keys: they get a random key for this process only, never stored and
# never seen by a server. `check --deploy` is not among them: it must judge the real keys.
_MANAGE_ARGS = sys.argv[1:] if Path(sys.argv[0]).name == "manage.py" else None
_KEYLESS_COMMANDS = {"help", "makemigrations", "showmigrations", "sqlmigrate", "check"}
FITCHECK_KEYLESS_COMMAND = _MANAGE_ARGS is not None and (
    not _MANAGE_ARGS or (_MANAGE_ARGS[0] in _KEYLESS_COMMANDS and "--deploy" not in _MANAGE_ARGS)
)


def _local_key(name: str) -> str:
    """A random key generated once and kept in VAR_DIR/<name> (0600), for demo and test installs.
    O_EXCL makes two processes starting together (web server and worker) agree on one key."""
    path = VAR_DIR / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # the creator may not have written it yet
            key = path.read_text().strip()
            if key:
                return key
            time.sleep(0.02)
        raise ImproperlyConfigured(f"{path} is empty: delete it and start again") from None
    key = secrets.token_urlsafe(50)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


def _secret(var: str, local_file: str, purpose: str) -> str:
    """The secret in environment variable `var`, or a local one kept in var/ for demo and test
    installs. Raises ImproperlyConfigured in production when it is missing, public or short."""
    value = env(var, default="")
    if value and value not in _PUBLIC_KEYS and not value.startswith("django-insecure-") and len(value) >= 50:
        return value
    if FITCHECK_LOCAL_KEYS and not value:
        return _local_key(local_file)
    if FITCHECK_KEYLESS_COMMAND and not value:
        return secrets.token_urlsafe(50)
    problem = "is not set" if not value else "is a public or short key (it needs 50 random characters or more)"
    raise ImproperlyConfigured(
        f"{var} {problem}. It {purpose}. Set {var} to a random string, e.g. the output of "
        "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`; for a local demo set "
        "FITCHECK_ENV=demo instead (keys are then generated in var/). See docs/operations.md."
    )


SECRET_KEY = _secret("DJANGO_SECRET_KEY", "secret_key", "signs sessions, CSRF tokens and password reset links")
# Annotator pseudonyms in exports are HMAC-SHA256 under this key (annotate.exports.records), kept
# apart from SECRET_KEY so that rotating one does not change or reveal the other.
FITCHECK_PSEUDONYM_KEY = _secret(
    "FITCHECK_PSEUDONYM_KEY", "pseudonym_key", "keys the annotator pseudonyms in gold-dataset exports"
)
if FITCHECK_PSEUDONYM_KEY == SECRET_KEY:
    raise ImproperlyConfigured("FITCHECK_PSEUDONYM_KEY must differ from DJANGO_SECRET_KEY")

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
    "knox",
    "axes",
    "csp",
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
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout response.
    "axes.middleware.AxesMiddleware",
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

# Security (issue 14). Every switch comes from the environment; the defaults suit `make demo` on
# http://localhost, docker-compose.yml sets the production values (docs/operations.md).
# Reverse proxies in front of the app (nginx, a load balancer): how many, and whether they set
# X-Forwarded-Proto / X-Forwarded-Host. 0 proxies: the client address is REMOTE_ADDR.
FITCHECK_PROXY_COUNT = env.int("FITCHECK_PROXY_COUNT", default=0)
if env.bool("DJANGO_SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
USE_X_FORWARDED_HOST = env.bool("DJANGO_USE_X_FORWARDED_HOST", default=False)
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=False)
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # the container health check speaks plain HTTP
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)

# Login lockout (django-axes): FITCHECK_LOGIN_FAILURE_LIMIT wrong passwords for one username from one
# address lock that pair out for FITCHECK_LOGIN_COOLOFF_MINUTES; a right password resets the count.
# It covers the login page, the admin and the API's token endpoint (they all call authenticate()).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("FITCHECK_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("FITCHECK_LOGIN_COOLOFF_MINUTES", default=15.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The client address, behind FITCHECK_PROXY_COUNT proxies, by the same rule as the API throttle.
AXES_CLIENT_IP_CALLABLE = "annotate.auth.client_ip"

# API tokens (django-rest-knox): stored as SHA-512 digests, valid FITCHECK_TOKEN_TTL_HOURS from
# creation. Clients send `Authorization: Token <token>` as before.
REST_KNOX = {
    "TOKEN_TTL": timedelta(hours=env.float("FITCHECK_TOKEN_TTL_HOURS", default=24.0 * 30)),
    "AUTH_HEADER_PREFIX": "Token",
    "TOKEN_LIMIT_PER_USER": env.int("FITCHECK_TOKEN_LIMIT_PER_USER", default=20),
    "AUTO_REFRESH": False,
}

# Content-Security-Policy (django-csp 4): scripts and styles only from our own static files (htmx
# and the fitcheck scripts); no inline script, style or event handler, no framing, no plugins.
# Images may also come from FITCHECK_CSP_IMG_SRC (a CDN in front of MEDIA_ROOT, say).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:", *env.list("FITCHECK_CSP_IMG_SRC", default=[])],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

# The cache holds the API throttle counters: set CACHE_URL (redis://...) when several processes
# serve the API, or each keeps its own count. The default is per process.
CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}

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
        "knox.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Per client: anonymous by IP, signed in by user; "token" is the stricter scope of the endpoint
    # that trades a password for a token (annotate.api.TokenCreateView).
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env("FITCHECK_THROTTLE_ANON", default="60/minute"),
        "user": env("FITCHECK_THROTTLE_USER", default="1200/minute"),
        "token": env("FITCHECK_THROTTLE_TOKEN", default="10/minute"),
    },
    # X-Forwarded-For is trusted only as far as FITCHECK_PROXY_COUNT proxies (0: REMOTE_ADDR).
    "NUM_PROXIES": FITCHECK_PROXY_COUNT,
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
    "mlcore.matching_finetune": {"queue": "gpu"},
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
# Each view set is trained on for FITCHECK_MATCH_PRETRAIN_ECHO epochs (data echoing; on a CPU the
# generated views, not the network, bound the run): 24 epochs with echo 4 take about the time that
# 12 epochs of fresh views took, with twice the steps (docs/matching.md).
FITCHECK_MATCH_PRETRAIN_CONFIG = {
    "epochs": env.int("FITCHECK_MATCH_PRETRAIN_EPOCHS", default=24),
    "echo": env.int("FITCHECK_MATCH_PRETRAIN_ECHO", default=4),
}
# After stage 1, the product localiser (mlcore.nn.localise) is trained on FITCHECK_MATCH_LOCALISER_VIEWS
# generated views per set (3 sets, each trained on for 4 epochs): about 5 min on 2 CPU cores. Photos are
# then embedded cut to the product. Off with FITCHECK_MATCH_LOCALISE=0 (photos embedded whole).
FITCHECK_MATCH_LOCALISE = env.bool("FITCHECK_MATCH_LOCALISE", default=True)
FITCHECK_MATCH_LOCALISER_CONFIG = {"views": env.int("FITCHECK_MATCH_LOCALISER_VIEWS", default=6000)}
# Then the matte (mlcore.nn.verify) is trained on FITCHECK_MATCH_MATTE_VIEWS views per set, and each
# photo's shortlist of the CNN's top candidates is re-ranked by geometric verification (the product
# silhouettes aligned to the photo). Off with FITCHECK_MATCH_VERIFY=0 (the CNN's ranking as it is).
FITCHECK_MATCH_VERIFY = env.bool("FITCHECK_MATCH_VERIFY", default=True)
FITCHECK_MATCH_MATTE_CONFIG = {"views": env.int("FITCHECK_MATCH_MATTE_VIEWS", default=6000)}
# Then the pair verifier (mlcore.nn.verify.PairVerifier), the re-ranking's fourth, learned term: trained
# on FITCHECK_MATCH_PAIR_VIEWS generated views, each with the CNN's top 20, for FITCHECK_MATCH_PAIR_EPOCHS
# epochs (about 15-20 min on 2 CPU cores at the defaults). Off with FITCHECK_MATCH_PAIR_VERIFY=0 (three terms).
FITCHECK_MATCH_PAIR_VERIFY = env.bool("FITCHECK_MATCH_PAIR_VERIFY", default=True)
FITCHECK_MATCH_PAIR_CONFIG = {
    "views": env.int("FITCHECK_MATCH_PAIR_VIEWS", default=3000),
    "epochs": env.int("FITCHECK_MATCH_PAIR_EPOCHS", default=12),
}
# Stage 2 (mlcore.matching_finetune): the learning loop fine-tunes a campaign's serving matching CNN
# once this many new verified matches have settled since its last CNN run (0: never by itself; the
# Models page's Retrain still does).
FITCHECK_MATCH_FINETUNE_MIN_NEW = env.int("FITCHECK_MATCH_FINETUNE_MIN_NEW", default=200)
FITCHECK_MATCH_FINETUNE_CONFIG = {"epochs": env.int("FITCHECK_MATCH_FINETUNE_EPOCHS", default=4)}
FITCHECK_MODELS_ROOT = Path(env("FITCHECK_MODELS_ROOT", default=str(VAR_DIR / "models")))
# Embeddings by (model content, image sha256), kept across restarts and databases (mlcore.services
# embedding cache): `make demo` points it at ~/.cache/fitcheck so a fresh clone reuses the last one's.
FITCHECK_CACHE_DIR = Path(env("FITCHECK_CACHE_DIR", default=str(VAR_DIR / "cache")))
FITCHECK_EXPORTS_ROOT = Path(env("FITCHECK_EXPORTS_ROOT", default=str(VAR_DIR / "exports")))
# Where image URLs in exports point: the public address of this server (MEDIA_URL is appended).
FITCHECK_PUBLIC_URL = env("FITCHECK_PUBLIC_URL", default="http://localhost:8000")
FITCHECK_SERVE_MEDIA = env.bool("FITCHECK_SERVE_MEDIA", default=True)
FASHION_MNIST_DIR = env("FASHION_MNIST_DIR", default=None)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"client_error_without_traceback": {"()": "config.errors.ClientErrorWithoutTraceback"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["client_error_without_traceback"],
        }
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    # django-axes logs every login and every start at INFO; lockouts are WARNING and still show.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
