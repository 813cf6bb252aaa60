"""Issue 14 item 6: production-safe settings. Secrets are refused when missing or public, the export
pseudonyms have their own key, `check --deploy` is clean with docker-compose.yml's settings, and
compose shares every folder the settings keep data in between the processes that use it."""

import hashlib
import hmac
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from annotate.exports.records import annotator_pseudonym

ROOT = Path(__file__).resolve().parent.parent
GOOD_KEY = "k" * 20 + "0123456789abcdefghijklmnopqrstuvwxyz"  # 56 characters, 36 distinct
OTHER_KEY = "p" * 20 + "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

# Every variable the settings read about the kind of install; a test starts from none of them.
_INSTALL_VARS = ("FITCHECK_ENV", "DJANGO_DEBUG", "DJANGO_SECRET_KEY", "FITCHECK_PSEUDONYM_KEY")


def _django(tmp_path, code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` after django.setup() in a fresh interpreter (pytest not imported, so the settings
    see a production install unless told otherwise), with var/ in tmp_path."""
    clean = {k: v for k, v in os.environ.items() if k not in _INSTALL_VARS}
    clean |= {"DJANGO_SETTINGS_MODULE": "config.settings", "FITCHECK_VAR_DIR": str(tmp_path / "var")} | env
    script = f"import django\ndjango.setup()\nfrom django.conf import settings\n{code}"
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    result = _django(tmp_path, "print('started')")
    assert result.returncode != 0 and "started" not in result.stdout
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY is not set" in result.stderr


def _manage(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """`manage.py args` in a fresh interpreter with none of the install variables set."""
    clean = {k: v for k, v in os.environ.items() if k not in _INSTALL_VARS}
    clean |= {"FITCHECK_VAR_DIR": str(tmp_path / "var")}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


def test_commands_that_only_read_the_code_run_in_a_bare_checkout_and_keep_no_key(tmp_path):
    result = _manage(tmp_path, "makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "No changes detected" in result.stdout
    assert not (tmp_path / "var" / "secret_key").exists()


def test_check_deploy_and_the_server_commands_still_need_the_keys(tmp_path):
    for args in (("check", "--deploy"), ("migrate", "--plan")):
        result = _manage(tmp_path, *args)
        assert result.returncode != 0
        assert "DJANGO_SECRET_KEY is not set" in result.stderr


@pytest.mark.parametrize(
    "key",
    ["insecure-local-only-key-set-DJANGO_SECRET_KEY-in-production", "django-insecure-" + "x" * 50, "short-key"],
)
def test_production_refuses_a_public_or_short_secret_key(tmp_path, key):
    result = _django(tmp_path, "print('started')", DJANGO_SECRET_KEY=key, FITCHECK_PSEUDONYM_KEY=OTHER_KEY)
    assert result.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY is a public or short key" in result.stderr


def test_production_refuses_to_start_without_a_pseudonym_key(tmp_path):
    result = _django(tmp_path, "print('started')", DJANGO_SECRET_KEY=GOOD_KEY)
    assert result.returncode != 0
    assert "ImproperlyConfigured: FITCHECK_PSEUDONYM_KEY is not set" in result.stderr


def test_the_pseudonym_key_must_differ_from_the_secret_key(tmp_path):
    result = _django(tmp_path, "print('started')", DJANGO_SECRET_KEY=GOOD_KEY, FITCHECK_PSEUDONYM_KEY=GOOD_KEY)
    assert result.returncode != 0 and "must differ" in result.stderr


def test_production_starts_with_both_keys_and_uses_them(tmp_path):
    code = f"print(settings.SECRET_KEY == {GOOD_KEY!r}, settings.FITCHECK_PSEUDONYM_KEY == {OTHER_KEY!r})"
    result = _django(tmp_path, code, DJANGO_SECRET_KEY=GOOD_KEY, FITCHECK_PSEUDONYM_KEY=OTHER_KEY)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True"]
    assert not (tmp_path / "var" / "secret_key").exists()


@pytest.mark.parametrize("env", [{"FITCHECK_ENV": "demo"}, {"DJANGO_DEBUG": "true"}])
def test_a_demo_install_generates_its_keys_once_and_keeps_them_in_var(tmp_path, env):
    code = "print(settings.SECRET_KEY); print(settings.FITCHECK_PSEUDONYM_KEY)"
    first = _django(tmp_path, code, **env)
    assert first.returncode == 0, first.stderr[-2000:]
    secret, pseudonym = first.stdout.split()
    assert len(secret) >= 50 and len(pseudonym) >= 50 and secret != pseudonym
    assert (tmp_path / "var" / "secret_key").read_text().strip() == secret
    assert (tmp_path / "var" / "secret_key").stat().st_mode & 0o777 == 0o600
    assert _django(tmp_path, code, **env).stdout.split() == [secret, pseudonym]  # the same on a restart


def test_an_unknown_install_kind_is_refused(tmp_path):
    result = _django(tmp_path, "print('started')", FITCHECK_ENV="prod")
    assert result.returncode != 0 and "FITCHECK_ENV='prod'" in result.stderr


# -- export pseudonyms --------------------------------------------------------------------------------


def test_pseudonyms_are_keyed_by_their_own_key_not_the_secret_key(settings):
    settings.FITCHECK_PSEUDONYM_KEY = OTHER_KEY
    before = [annotator_pseudonym(i) for i in range(1, 37)]
    settings.SECRET_KEY = GOOD_KEY
    assert [annotator_pseudonym(i) for i in range(1, 37)] == before  # rotating SECRET_KEY changes nothing
    # Who knows SECRET_KEY (the old public default, say) cannot map a single pseudonym back to its id.
    by_secret_key = {
        "a-" + hmac.new(GOOD_KEY.encode(), f"fitcheck-annotator:{i}".encode(), hashlib.sha256).hexdigest()[:16]: i
        for i in range(1, 1000)
    }
    assert not set(before) & set(by_secret_key)
    settings.FITCHECK_PSEUDONYM_KEY = OTHER_KEY[::-1]
    assert not set(before) & {annotator_pseudonym(i) for i in range(1, 37)}


# -- docker-compose.yml -------------------------------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _interpolate(value: str, given: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} against `given` (the operator's .env)."""

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if given.get(name):
            return given[name]
        if op == ":?":
            raise AssertionError(f"compose requires {name}: {arg}")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def _service_env(service: dict, given: dict[str, str]) -> dict[str, str]:
    env = service.get("environment") or {}
    return {k: _interpolate(str(v), given) for k, v in env.items()}


def test_check_deploy_is_clean_with_the_compose_settings(tmp_path):
    """`manage.py check --deploy` with web's environment from docker-compose.yml and an operator's
    .env holding only the two required keys: no warning at all (not even drf-spectacular's)."""
    web = _compose()["services"]["web"]
    env = _service_env(web, {"DJANGO_SECRET_KEY": GOOD_KEY, "FITCHECK_PSEUDONYM_KEY": OTHER_KEY})
    env["FITCHECK_VAR_DIR"] = str(tmp_path / "var")  # the image's /app/var
    for name in ("MEDIA_ROOT", "FITCHECK_EXPORTS_ROOT", "FITCHECK_MODELS_ROOT"):
        env[name] = str(tmp_path / env[name].lstrip("/"))  # the volumes
    clean = {k: v for k, v in os.environ.items() if k not in _INSTALL_VARS and k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "System check identified no issues (0 silenced)." in result.stdout


# The settings that name a folder or file, and where each must live in docker-compose.yml. A new
# path setting fails test_every_path_setting_is_placed until it is added here.
SHARED_PATHS = {
    # Written by one process, read by another: on a volume every one of them mounts.
    "MEDIA_ROOT": ("web", "worker", "gpu-worker"),  # photos: imported by workers, served by web
    "FITCHECK_EXPORTS_ROOT": ("web", "worker", "gpu-worker"),  # built by worker, served by web, trained from
    "FITCHECK_MODELS_ROOT": ("web", "worker", "gpu-worker"),  # checkpoints and indexes of the gpu worker
}
LOCAL_PATHS = {
    "BASE_DIR": "the code, in the image",
    "VAR_DIR": "per container: beat's schedule; the SQLite files and local keys only outside production",
    "STATIC_ROOT": "per container: web's collectstatic output",
    "FITCHECK_CACHE_DIR": "per container: the embedding cache, a speed-up only (a miss recomputes)",
}


def _path_settings() -> set[str]:
    from django.conf import settings

    return {name for name in dir(settings) if name.isupper() and isinstance(getattr(settings, name), Path)}


def test_every_path_setting_is_placed():
    assert _path_settings() == set(SHARED_PATHS) | set(LOCAL_PATHS)


def _mounts(service: dict, named_volumes: set[str]) -> dict[str, str]:
    """{container path: named volume} of a service's volumes (short syntax)."""
    mounts = {}
    for entry in service.get("volumes") or []:
        source, target = str(entry).split(":")[:2]
        if source in named_volumes:
            mounts[target.rstrip("/")] = source
    return mounts


def test_compose_shares_every_data_folder_between_the_services_that_use_it():
    compose = _compose()
    named = set(compose.get("volumes") or {})
    services = compose["services"]
    given = {"DJANGO_SECRET_KEY": GOOD_KEY, "FITCHECK_PSEUDONYM_KEY": OTHER_KEY}
    for setting, users in SHARED_PATHS.items():
        volumes = set()
        for name in users:
            env = _service_env(services[name], given)
            assert env.get(setting, "").startswith("/"), f"{name} does not set {setting} to an absolute path"
            path = Path(env[setting])
            mounts = _mounts(services[name], named)
            under = [v for target, v in mounts.items() if path == Path(target) or Path(target) in path.parents]
            volume = under[0] if under else None
            assert volume, f"{setting}={path} of service {name} is not on a named volume ({mounts})"
            volumes.add((volume, env[setting]))
        assert len(volumes) == 1, f"{setting} is not the same folder on the same volume everywhere: {volumes}"


def test_the_image_creates_the_volume_folders_for_the_app_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    env = _service_env(_compose()["services"]["web"], {"DJANGO_SECRET_KEY": "x", "FITCHECK_PSEUDONYM_KEY": "y"})
    chown = re.search(r"chown app:app ([^\n]+)", dockerfile).group(1).split()
    for setting in SHARED_PATHS:
        assert env[setting] in chown, f"the Dockerfile does not create {env[setting]} owned by app"


# -- Content-Security-Policy ------------------------------------------------------------------------


def test_pages_are_sent_a_strict_content_security_policy(client, db):
    policy = client.get("/accounts/login/")["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


def test_templates_have_no_inline_script_style_or_event_handler():
    """What the policy refuses (tests/e2e/test_csp.py checks the pages in a browser): <script>
    without src, <style>, style="" and on*="" attributes."""
    found = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        html = path.read_text()
        for pattern in (r"<script(?![^>]*\bsrc=)[^>]*>", r"<style\b", r"\sstyle=", r"\son[a-z]+\s*="):
            found += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in re.finditer(pattern, html)]
    assert found == []


def test_docs_operations_lists_every_variable_the_settings_read():
    source = (ROOT / "config" / "settings.py").read_text()
    variables = set(re.findall(r'env(?:\.\w+)?\("([A-Z][A-Z0-9_]+)"', source))
    variables |= set(re.findall(r'_secret\(\s*"([A-Z][A-Z0-9_]+)"', source))
    assert {"DJANGO_SECRET_KEY", "FITCHECK_PSEUDONYM_KEY", "DATABASE_URL"} <= variables
    docs = (ROOT / "docs" / "operations.md").read_text()
    assert sorted(v for v in variables if f"`{v}`" not in docs) == []
