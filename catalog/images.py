"""Checking, fetching and storing untrusted images (product images and customer photos)."""

import hashlib
import http.client
import io
import ipaddress
import os
import socket
import ssl
import stat
import time
import urllib.parse
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


class ImageRejected(ValueError):
    """An image that fitcheck will not store; the message says why, in words a person can act on."""


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    width_px: int
    height_px: int
    format: str  # Pillow format name, one of ALLOWED_FORMATS

    @property
    def extension(self) -> str:
        return ALLOWED_FORMATS[self.format]


def image_inspect(data: bytes, *, max_pixels: int | None = None, max_bytes: int | None = None) -> ImageInfo:
    """Check that `data` is a whole, decodable image of an allowed format and size.

    The pixel count is checked from the header before any pixel is decoded, so a decompression bomb
    (a small file that claims 20000×20000 px) costs nothing. The image is then fully decoded once
    to catch truncated or corrupt files.

    Args:
        data: the file's bytes.
        max_pixels: largest width×height accepted; default settings.FITCHECK_MAX_IMAGE_PIXELS.
        max_bytes: largest file size accepted; default settings.FITCHECK_MAX_IMAGE_BYTES.

    Returns:
        ImageInfo with the sha256 of `data` (hex), the size in pixels and the format.

    Raises:
        ImageRejected: empty, too large in bytes or pixels, not an image, an unsupported format,
            or corrupt/truncated.
    """
    max_pixels = max_pixels or settings.FITCHECK_MAX_IMAGE_PIXELS
    max_bytes = max_bytes or settings.FITCHECK_MAX_IMAGE_BYTES
    if not data:
        raise ImageRejected("the image file is empty")
    if len(data) > max_bytes:
        raise ImageRejected(f"the image is {_size_text(len(data))}; the limit is {_size_text(max_bytes)}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                fmt = im.format
                if width * height > max_pixels:
                    raise ImageRejected(_too_many_pixels(width, height, max_pixels))
                if fmt not in ALLOWED_FORMATS:
                    raise ImageRejected(f"image format {fmt} is not accepted; use JPEG, PNG or WebP")
                im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # Pillow's own bomb check fires inside Image.open, before the size can be read here.
            raise ImageRejected(
                f"the image is too large to decode safely ({exc}); the limit is "
                f"{max_pixels / 1e6:.0f} megapixels"
            ) from exc
        except UnidentifiedImageError as exc:
            raise ImageRejected("the file is not an image that can be read (JPEG, PNG or WebP expected)") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, ImageRejected):
                raise
            raise ImageRejected(f"the image is corrupt or truncated ({exc})") from exc
    return ImageInfo(sha256=hashlib.sha256(data).hexdigest(), width_px=width, height_px=height, format=fmt)


def _too_many_pixels(width: int, height: int, max_pixels: int) -> str:
    return (
        f"the image is {width}×{height} px ({width * height / 1e6:.0f} megapixels); "
        f"the limit is {max_pixels / 1e6:.0f} megapixels"
    )


def _size_text(size_bytes: int) -> str:
    """A byte count in words: "312 bytes", "48.2 kB", "25.0 MB"."""
    if size_bytes < 1000:
        return f"{size_bytes} bytes"
    if size_bytes < 1_000_000:
        return f"{size_bytes / 1e3:.1f} kB"
    return f"{size_bytes / 1e6:.1f} MB"


# -- reading from import roots and public URLs ------------------------------------------------------

LOCAL_REFUSED = "it does not exist or is outside FITCHECK_IMPORT_ROOTS"
URL_REFUSED = "not reachable, or not allowed (private addresses need FITCHECK_IMPORT_ALLOW_PRIVATE_URLS)"
MAX_REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_READ_CHUNK = 64 * 1024


def image_read(ref: str, *, base_dir: Path | None = None, roots: Iterable[Path] | None = None) -> bytes:
    """Read an image given as an http(s) URL or a file path, from an allowed place only.

    A path (relative ones resolve from `base_dir`) is resolved with realpath (symlinks, "..", "//")
    and must then lie inside one of `roots` (default settings.FITCHECK_IMPORT_ROOTS), and be a
    regular file. A URL is fetched by `url_fetch`: public addresses only, every redirect checked.
    A file that is missing and one that is not allowed give the same message, and so do a closed
    port and a refused address: the error says nothing about what exists outside the roots.

    Reads at most settings.FITCHECK_MAX_IMAGE_BYTES + 1 bytes; a URL download as a whole takes at
    most settings.FITCHECK_FETCH_TIMEOUT_S seconds.

    Raises:
        ImageRejected: missing or not allowed file, unreachable or not allowed URL, HTTP error,
            unsupported scheme, too many redirects, or too big.
    """
    ref = (ref or "").strip()
    if not ref:
        raise ImageRejected("no image given")
    limit = settings.FITCHECK_MAX_IMAGE_BYTES
    if "://" in ref:
        data = url_fetch(ref, max_bytes=limit + 1)
    else:
        path = Path(ref)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        data = _local_read(path, roots=settings.FITCHECK_IMPORT_ROOTS if roots is None else roots, ref=ref,
                           max_bytes=limit + 1)
    if len(data) > limit:
        raise ImageRejected(f"the image is larger than the {_size_text(limit)} limit")
    return data


def path_within(path: Path | str, roots: Iterable[Path | str]) -> str | None:
    """The realpath of `path` when it lies inside (or is) the realpath of one of `roots`, else None.

    Symlinks, ".." and repeated slashes are resolved first on both sides, so no spelling of a path
    leaves a root. The file need not exist.
    """
    real = os.path.realpath(path)
    for root in roots:
        real_root = os.path.realpath(root)
        if os.path.commonpath([real, real_root]) == real_root:
            return real
    return None


def _local_read(path: Path, *, roots: Iterable[Path], ref: str, max_bytes: int) -> bytes:
    refused = ImageRejected(f"could not read image file {ref}: {LOCAL_REFUSED}")
    real = path_within(path, roots)
    if real is None:
        raise refused
    try:
        # O_NOFOLLOW: the checked realpath has no symlink left, so one put there since is refused;
        # O_NONBLOCK: a FIFO does not hang the import (it is refused below, as is anything irregular).
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise refused from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise refused
        with os.fdopen(fd, "rb") as fh:
            fd = None
            return fh.read(max_bytes)
    except OSError:
        raise refused from None
    finally:
        if fd is not None:
            os.close(fd)


def _address_is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether `ip` is a globally routable unicast address: not loopback, private (RFC 1918, ULA),
    shared (100.64/10), link-local, multicast, reserved or unspecified. An IPv4-mapped IPv6 address
    is judged by its IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (
        ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local or ip.is_private
        or ip.is_unspecified
    )


def _resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IP literals in any form inet_aton accepts, e.g. the decimal
    2130706433, come back as their dotted address). Raises OSError when it does not resolve."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to an address checked beforehand; the Host header keeps the name. The name
    is never resolved again, so DNS cannot answer a public address to the check and a private one
    to the connection (DNS rebinding)."""

    def __init__(self, host, port, *, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """The TLS twin of _PinnedHTTPConnection: connects to the checked address, verifies the
    certificate against the host name (SNI too)."""

    def __init__(self, host, port, *, address, timeout, context):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def url_fetch(url: str, *, max_bytes: int, timeout_s: float | None = None,
              allow_private: bool | None = None) -> bytes:
    """Download `url` (http or https) with the address check at every hop.

    Each hop's host is resolved once; every address it resolves to must be public (see
    `_address_is_public`) unless `allow_private` (default settings.FITCHECK_IMPORT_ALLOW_PRIVATE_URLS);
    the connection then goes to that checked address. Redirects (301, 302, 303, 307, 308) are followed
    by hand, at most MAX_REDIRECTS, each to http(s) only and checked the same way. No proxy is used.

    Args:
        max_bytes: read at most this many bytes of the body (the caller compares against its limit).
        timeout_s: the whole download, redirects included; default settings.FITCHECK_FETCH_TIMEOUT_S.

    Returns:
        The body's first `max_bytes` bytes.

    Raises:
        ImageRejected: an unsupported scheme, credentials in the URL, a refused, unresolvable or
            unreachable address or a timeout (all with the same text), an HTTP status other than 200,
            or too many redirects.
    """
    if timeout_s is None:
        timeout_s = settings.FITCHECK_FETCH_TIMEOUT_S
    if allow_private is None:
        allow_private = settings.FITCHECK_IMPORT_ALLOW_PRIVATE_URLS
    deadline = time.monotonic() + timeout_s
    unreachable = ImageRejected(f"could not download {url}: {URL_REFUSED}")
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(current)
        scheme = parts.scheme.lower()  # URL schemes are case-insensitive
        if scheme not in ("http", "https"):
            raise ImageRejected(f"image URL scheme not supported: {parts.scheme or current.split(':')[0]}")
        if parts.username is not None or parts.password is not None:
            raise ImageRejected(f"image URL {url}: a user name or password in the URL is not supported")
        try:
            host, port = parts.hostname, parts.port or (443 if scheme == "https" else 80)
        except ValueError:  # a port that is not a number or out of range
            raise unreachable from None
        if not host:
            raise unreachable
        try:
            addresses = _resolve(host, port)
        except (OSError, UnicodeError):
            raise unreachable from None
        try:
            checked = [ipaddress.ip_address(a.split("%", 1)[0]) for a in addresses]
        except ValueError:
            raise unreachable from None
        if not checked or not (allow_private or all(_address_is_public(ip) for ip in checked)):
            raise unreachable
        target = urllib.parse.quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
        if parts.query:
            target += "?" + urllib.parse.quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
        response, conn = _request(scheme, host, port, [str(ip) for ip in checked], target, deadline, unreachable)
        try:
            if response.status in REDIRECT_STATUSES:
                location = response.getheader("Location")
                if not location:
                    raise ImageRejected(f"could not download {url}: HTTP {response.status} without a Location")
                current = urllib.parse.urljoin(current, location.strip())
                continue
            if response.status != 200:
                raise ImageRejected(f"could not download {url}: HTTP {response.status}")
            return _read_body(response, conn, max_bytes=max_bytes, deadline=deadline, unreachable=unreachable)
        finally:
            conn.close()
    raise ImageRejected(f"could not download {url}: too many redirects (more than {MAX_REDIRECTS})")


def _remaining(deadline: float, unreachable: ImageRejected) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise unreachable
    return left


def _request(scheme, host, port, addresses, target, deadline, unreachable):
    """GET `target` from the first of `addresses` that connects; returns (response, connection)."""
    for address in addresses:
        timeout = _remaining(deadline, unreachable)
        if scheme == "https":
            conn = _PinnedHTTPSConnection(
                host, port, address=address, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            conn = _PinnedHTTPConnection(host, port, address=address, timeout=timeout)
        try:
            conn.request("GET", target, headers={"User-Agent": "fitcheck-importer", "Accept": "image/*"})
            return conn.getresponse(), conn
        except (OSError, http.client.HTTPException):
            conn.close()
    raise unreachable


def _read_body(response, conn, *, max_bytes, deadline, unreachable) -> bytes:
    chunks, size = [], 0
    try:
        while size < max_bytes:
            if conn.sock is not None:
                conn.sock.settimeout(_remaining(deadline, unreachable))
            chunk = response.read(min(_READ_CHUNK, max_bytes - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (OSError, http.client.HTTPException):
        raise unreachable from None
    return b"".join(chunks)


def image_store(data: bytes, info: ImageInfo, *, prefix: str) -> str:
    """Store `data` under a content-addressed name and return that storage name.

    Idempotent: the same bytes always map to `<prefix>/<sha[:2]>/<sha>.<ext>` and are written once.
    A file written for a row whose database transaction later fails stays in storage, unreferenced;
    a retry reuses it.
    """
    name = f"{prefix}/{info.sha256[:2]}/{info.sha256}.{info.extension}"
    if default_storage.exists(name):
        return name
    saved = default_storage.save(name, ContentFile(data))
    if saved != name:  # another process stored the same bytes between exists() and save()
        default_storage.delete(saved)
    return name
