"""Importers read images only from FITCHECK_IMPORT_ROOTS and from public http(s) addresses (issue 14,
item 5): every bypass of the containment check and of the address check, and the uniform error text
that gives no oracle for whether a file or a port exists."""

import http.server
import os
import threading
from pathlib import Path

import pytest

from catalog import images
from catalog.images import ImageRejected, image_read
from catalog.models import Photo, Product
from catalog.services import catalog_import, photos_import
from tests.factories import png

from .test_import import HEADER, write

pytestmark = pytest.mark.django_db

LOCAL_REFUSED = "does not exist or is outside FITCHECK_IMPORT_ROOTS"
URL_REFUSED = "not reachable, or not allowed"


@pytest.fixture
def root(tmp_path, settings) -> Path:
    """The only import root, holding img/0.png; tmp_path/outside.png lies next to it, outside."""
    folder = tmp_path / "import-root"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "0.png").write_bytes(png(0))
    (tmp_path / "outside.png").write_bytes(png(1))
    settings.FITCHECK_IMPORT_ROOTS = [folder]
    return folder


# -- local paths ------------------------------------------------------------------------------------------


def test_a_path_inside_the_root_is_read(root):
    assert image_read("img/0.png", base_dir=root) == png(0)
    assert image_read(str(root / "img" / "0.png")) == png(0)


def test_an_absolute_path_outside_the_roots_is_refused(root, tmp_path):
    with pytest.raises(ImageRejected, match=LOCAL_REFUSED):
        image_read(str(tmp_path / "outside.png"))


@pytest.mark.parametrize("ref", ["../outside.png", "img/../../outside.png", "img//../../outside.png"])
def test_dot_dot_out_of_the_root_is_refused(root, ref):
    with pytest.raises(ImageRejected, match=LOCAL_REFUSED):
        image_read(ref, base_dir=root)


def test_a_symlink_out_of_the_root_is_refused_and_one_inside_it_is_followed(root, tmp_path):
    (root / "img" / "leak.png").symlink_to(tmp_path / "outside.png")
    (root / "img" / "alias.png").symlink_to(root / "img" / "0.png")
    with pytest.raises(ImageRejected, match=LOCAL_REFUSED):
        image_read("img/leak.png", base_dir=root)
    assert image_read("img/alias.png", base_dir=root) == png(0)


def test_a_missing_file_and_a_refused_file_give_the_same_text(root, tmp_path):
    """No oracle: the message for /etc/passwd (exists, outside), a missing file inside the root and a
    missing file outside it is the same, apart from the reference the manifest itself gave."""
    refs = [str(tmp_path / "outside.png"), str(root / "img" / "nope.png"), str(tmp_path / "nope.png"), "/etc/passwd"]
    messages = []
    for ref in refs:
        with pytest.raises(ImageRejected) as excinfo:
            image_read(ref)
        messages.append(str(excinfo.value).replace(ref, "<ref>"))
    assert len(set(messages)) == 1 and LOCAL_REFUSED in messages[0]


def test_a_directory_or_a_fifo_inside_the_root_is_refused_without_blocking(root):
    os.mkfifo(root / "img" / "pipe.png")
    for ref in ("img", "img/pipe.png"):
        with pytest.raises(ImageRejected, match=LOCAL_REFUSED):
            image_read(ref, base_dir=root)


def test_catalog_and_photo_manifests_cannot_reach_outside_the_roots(root, tmp_path):
    catalog = write(
        root, "catalog.csv", HEADER,
        f"Northwind,NW-1,Tee,,,,{tmp_path / 'outside.png'}",
        "Northwind,NW-2,Tee,,,,../outside.png",
        "Northwind,NW-3,Tee,,,,img/0.png",
    )
    report = catalog_import(path=catalog)
    assert [e.line for e in report.errors] == [2, 3]
    assert all(LOCAL_REFUSED in e.reason for e in report.errors)
    assert list(Product.objects.values_list("sku", flat=True)) == ["NW-3"]

    photos = write(root, "photos.csv", "source,image", f"x,{tmp_path / 'outside.png'}", "x,../outside.png")
    report = photos_import(path=photos)
    assert len(report.errors) == 2 and not Photo.objects.exists()


def test_a_manifest_outside_the_roots_cannot_read_its_own_folder(root, tmp_path):
    """The manifest's folder is not a root of its own: a manifest written anywhere does not open
    the files next to it."""
    path = write(tmp_path, "catalog.csv", HEADER, "Northwind,NW-1,Tee,,,,outside.png")
    report = catalog_import(path=path)
    assert len(report.errors) == 1 and LOCAL_REFUSED in report.errors[0].reason


def test_import_roots_default_to_var_import_and_come_from_the_environment(tmp_path):
    import subprocess
    import sys

    code = "from django.conf import settings; print(repr([str(p) for p in settings.FITCHECK_IMPORT_ROOTS]))"
    env = {k: v for k, v in os.environ.items() if k != "FITCHECK_IMPORT_ROOTS"}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", FITCHECK_VAR_DIR=str(tmp_path / "var"))
    run = [sys.executable, "-c", f"import django; django.setup(); {code}"]
    default = subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert default == repr([str(tmp_path / "var" / "import")])
    env["FITCHECK_IMPORT_ROOTS"] = f"{tmp_path / 'a'},{tmp_path / 'b'}"
    configured = subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert configured == repr([str(tmp_path / "a"), str(tmp_path / "b")])


# -- URLs ------------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """/img.png: a PNG; /big: more bytes than the limit; /redirect?<url>: 302 to <url>."""

    hosts: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).hosts.append(self.headers.get("Host", ""))
        if self.path == "/img.png":
            body = png(7)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/big":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\0" * 4096)
        elif self.path.startswith("/redirect?"):
            self.send_response(302)
            self.send_header("Location", self.path.split("?", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args):
        pass


def _serve(address: str):
    server = http.server.ThreadingHTTPServer((address, 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture
def loopback(monkeypatch):
    """A tiny HTTP server on 127.0.0.1 (private) and one on 127.0.0.2, which the address check is
    told to treat as public, so that a redirect from a "public" server to loopback can be tested."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    _Handler.hosts = []
    private, public = _serve("127.0.0.1"), _serve("127.0.0.2")
    real_check = getattr(images, "_address_is_public", lambda ip: False)
    monkeypatch.setattr(
        images, "_address_is_public", lambda ip: str(ip) == "127.0.0.2" or real_check(ip), raising=False
    )
    yield {"private": private.server_address[1], "public": public.server_address[1]}
    private.shutdown()
    public.shutdown()


def test_a_public_url_is_downloaded(loopback):
    assert image_read(f"http://127.0.0.2:{loopback['public']}/img.png") == png(7)


def test_a_private_ip_literal_is_refused(loopback, settings):
    settings.FITCHECK_IMPORT_ALLOW_PRIVATE_URLS = False
    with pytest.raises(ImageRejected, match=URL_REFUSED):
        image_read(f"http://127.0.0.1:{loopback['private']}/img.png")
    assert _Handler.hosts == []  # refused before connecting


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "0177.0.0.1", "0x7f.1", "127.1", "[::ffff:127.0.0.1]"])
def test_decimal_hex_octal_and_mapped_forms_of_loopback_are_refused(loopback, host):
    with pytest.raises(ImageRejected, match=URL_REFUSED):
        image_read(f"http://{host}:{loopback['private']}/img.png")
    assert _Handler.hosts == []


@pytest.mark.parametrize(
    "ip", ["10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",
           "240.0.0.1", "255.255.255.255", "::1", "fe80::1", "fc00::1", "ff02::1", "::ffff:10.0.0.1"],
)
def test_private_link_local_multicast_and_reserved_addresses_are_not_public(ip):
    import ipaddress

    assert not images._address_is_public(ipaddress.ip_address(ip))


def test_public_addresses_are_public():
    import ipaddress

    for ip in ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"):
        assert images._address_is_public(ipaddress.ip_address(ip))


def test_a_redirect_to_loopback_is_refused_at_that_hop(loopback, settings):
    settings.FITCHECK_IMPORT_ALLOW_PRIVATE_URLS = False
    target = f"http://127.0.0.1:{loopback['private']}/img.png"
    with pytest.raises(ImageRejected, match=URL_REFUSED):
        image_read(f"http://127.0.0.2:{loopback['public']}/redirect?{target}")
    assert len(_Handler.hosts) == 1  # the public server was asked; loopback never was
    # A redirect to another public address is followed.
    same = f"http://127.0.0.2:{loopback['public']}/img.png"
    assert image_read(f"http://127.0.0.2:{loopback['public']}/redirect?{same}") == png(7)


def test_a_redirect_loop_ends(loopback):
    url = f"http://127.0.0.2:{loopback['public']}/redirect?/redirect?/redirect?/redirect?/redirect?/redirect?/img.png"
    with pytest.raises(ImageRejected, match="too many redirects"):
        image_read(url)


def test_a_redirect_to_another_scheme_is_refused(loopback):
    with pytest.raises(ImageRejected, match="scheme not supported"):
        image_read(f"http://127.0.0.2:{loopback['public']}/redirect?file:///etc/passwd")


def test_private_urls_are_allowed_only_when_the_admin_says_so(loopback, settings):
    url = f"http://127.0.0.1:{loopback['private']}/img.png"
    settings.FITCHECK_IMPORT_ALLOW_PRIVATE_URLS = True
    assert image_read(url) == png(7)
    settings.FITCHECK_IMPORT_ALLOW_PRIVATE_URLS = False
    with pytest.raises(ImageRejected, match=URL_REFUSED):
        image_read(url)


def test_a_closed_port_and_a_refused_address_give_the_same_text(loopback, settings):
    """No oracle for open ports: refused (private), closed and unresolvable read alike."""
    settings.FITCHECK_IMPORT_ALLOW_PRIVATE_URLS = False
    refs = [
        f"http://127.0.0.1:{loopback['private']}/img.png",  # open port, private
        "http://127.0.0.1:9/img.png",  # closed port, private
        "http://127.0.0.2:9/img.png",  # closed port, "public"
        "http://no-such-host.invalid/img.png",  # does not resolve
    ]
    messages = []
    for ref in refs:
        with pytest.raises(ImageRejected) as excinfo:
            image_read(ref)
        messages.append(str(excinfo.value).replace(ref, "<ref>"))
    assert len(set(messages)) == 1 and URL_REFUSED in messages[0]


def test_the_checked_address_is_the_one_connected_to(loopback, monkeypatch):
    """The host name is resolved once; the connection goes to that checked address while the Host
    header keeps the name (a second, rebinding answer from DNS is never asked for)."""
    answers = iter(["127.0.0.2"])
    monkeypatch.setattr(images, "_resolve", lambda host, port: [next(answers)])
    assert image_read(f"http://images.test:{loopback['public']}/img.png") == png(7)
    assert _Handler.hosts == [f"images.test:{loopback['public']}"]


def test_the_download_is_capped_in_size(loopback, settings):
    settings.FITCHECK_MAX_IMAGE_BYTES = 1000
    with pytest.raises(ImageRejected, match="larger than the 1.0 kB limit"):
        image_read(f"http://127.0.0.2:{loopback['public']}/big")


def test_an_http_error_of_an_allowed_server_is_named(loopback):
    with pytest.raises(ImageRejected, match="HTTP 404"):
        image_read(f"http://127.0.0.2:{loopback['public']}/nope")


def test_credentials_in_a_url_are_refused():
    with pytest.raises(ImageRejected, match="user name or password"):
        image_read("http://user:pw@example.com/a.png")


@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    """An HTTPS server on 127.0.0.2 (treated as public) with a self-signed certificate for
    images.test, which the client context is told to trust."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=images.test",
         "-addext", "subjectAltName=DNS:images.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    _Handler.hosts = []
    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    real_check = images._address_is_public
    monkeypatch.setattr(images, "_address_is_public", lambda ip: str(ip) == "127.0.0.2" or real_check(ip))
    monkeypatch.setattr(images, "_resolve", lambda host, port: ["127.0.0.2"])
    default_context = ssl.create_default_context
    monkeypatch.setattr(images.ssl, "create_default_context", lambda: default_context(cafile=str(cert)))
    yield server.server_address[1]
    server.shutdown()


def test_https_goes_to_the_checked_address_and_verifies_the_host_name(tls_server):
    assert image_read(f"https://images.test:{tls_server}/img.png") == png(7)
    assert _Handler.hosts == [f"images.test:{tls_server}"]
    # The certificate names images.test: the same server under another name is not trusted.
    with pytest.raises(ImageRejected, match=URL_REFUSED):
        image_read(f"https://other.test:{tls_server}/img.png")
