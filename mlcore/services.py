"""mlcore services: model versions, embedding runs, and top-k product suggestions for photos.

Turns rows into tensors and back; the networks themselves live in mlcore.nn (no Django there).
"""

import hashlib
import json
import logging
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone
from PIL import Image

from catalog.models import Photo, Product, ProductImage

from .models import EmbeddingRun, ModelVersion, PhotoEmbedding, ProductEmbedding
from .nn.config import EmbedConfig

if TYPE_CHECKING:
    from .nn.index import VectorIndex

# torch and torchvision are imported inside the functions that use them: every web process imports
# this module (through annotate), and torch would add ~13 s and ~800 MB to each gunicorn worker.

logger = logging.getLogger(__name__)

STALE_RUN_AFTER = timedelta(minutes=10)  # a RUNNING run with no heartbeat this long may be re-claimed
# Keyed by ModelVersion.uuid: primary keys can be reused (a rolled-back insert), uuids are not.
_model_cache: dict = {}
_index_cache: dict = {}
_cache_lock = threading.Lock()


class EmbeddingsMissing(RuntimeError):
    """Suggestions were asked for before the products were embedded."""


def model_version_ensure(*, config: EmbedConfig, name: str | None = None) -> ModelVersion:
    """Return the pretrained embedding ModelVersion for `config`, creating it once. Idempotent.
    Imports the backbones (torch) only to create it: a restart of the demo finds it."""
    name = name or f"{config.backbone}-{config.image_size_px}px-pretrained"
    existing = ModelVersion.objects.filter(name=name).first()
    if existing is not None:
        return existing
    from .nn.backbones import BACKBONES

    spec = BACKBONES[config.backbone]
    version, _ = ModelVersion.objects.get_or_create(
        name=name,
        defaults={
            "kind": ModelVersion.Kind.EMBEDDING,
            "backbone": config.backbone,
            "image_size_px": config.image_size_px,
            "embedding_dim": spec.embedding_dim,
            "weights_path": config.weights_path,
            "config": config.to_dict(),
        },
    )
    return version


def _embed_config(version: ModelVersion) -> EmbedConfig:
    return EmbedConfig(
        backbone=version.backbone,
        image_size_px=version.image_size_px,
        batch_size=version.config.get("batch_size", EmbedConfig.batch_size),
        weights_path=version.weights_path,
    )


def _model_for(version: ModelVersion):
    """(model on device, transform, device), loaded once per process and model version."""
    from .nn.backbones import backbone_build
    from .nn.data import eval_transform
    from .nn.infer import device_resolve, model_prepare

    with _cache_lock:
        if version.uuid not in _model_cache:
            config = _embed_config(version)
            device = device_resolve(settings.FITCHECK_DEVICE)
            if version.backbone == "match_cnn":  # trained by mlcore.matching_pretrain
                model, transform = _match_cnn_for(version, device)
            else:
                model, spec = backbone_build(config.backbone, weights_path=config.weights_path)
                transform = eval_transform(image_size_px=config.image_size_px, mean=spec.mean, std=spec.std)
            _model_cache[version.uuid] = (model_prepare(model, device), transform, device)
        return _model_cache[version.uuid]


def _match_cnn_for(version: ModelVersion, device):
    """(MatchNet, PIL image → (3, S, S) float32 network input) for a trained matching CNN; the
    checkpoint's sha256 is checked against the registry's."""

    from .nn.match_cnn import match_cnn_load
    from .nn.views import eval_batch
    from .training import TrainingError, file_sha256

    if version.checkpoint_sha256 and file_sha256(version.weights_path) != version.checkpoint_sha256:
        raise TrainingError(f"{version.weights_path} does not match the sha256 registered for {version.name}")
    model, config, rejection, _ = match_cnn_load(version.weights_path)
    return model, _MatchTransform(config, eval_batch, rejection)


class _MatchTransform:
    """PIL image → (3, S, S) float32 network input of a matching CNN; `.config` is its MatchCNNConfig,
    `.rejection` its rejection model (mlcore.nn.match_cnn.Rejection, or None)."""

    def __init__(self, config, eval_batch, rejection=None):
        self.config, self._eval_batch, self.rejection = config, eval_batch, rejection

    def __call__(self, image: Image.Image):
        return self._eval_batch(_uint8_chw(image)[None], self.config.image_size_px, grayscale=self.config.grayscale)[0]


def _uint8_chw(image: Image.Image):
    import torch

    return torch.from_numpy(np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy())  # (3, H, W) uint8


def images_embed(*, version: ModelVersion, images: list[Image.Image], photos: bool = False) -> np.ndarray:
    """Embed PIL images with `version`'s network. Returns (N, D) float32, L2-normalised rows.

    photos: the images are customer photos, not catalog images. A trained matching CNN then embeds
    each with its test-time crops (mlcore.nn.match_cnn.photos_embed: the mean over the whole photo
    and 10 crops); other backbones embed photos and catalog images alike.
    """
    from .nn.infer import embed_images

    model, transform, device = _model_for(version)
    if photos and isinstance(transform, _MatchTransform):
        from .nn.match_cnn import photos_embed

        if not images:
            return np.zeros((0, version.embedding_dim), dtype=np.float32)
        z = photos_embed(model, [_uint8_chw(image) for image in images], transform.config, device=device)
        return z.numpy().astype(np.float32, copy=False)
    return embed_images(model, images, transform=transform, batch_size=_embed_config(version).batch_size, device=device)


def embedding_run_create(*, version: ModelVersion, target: str) -> EmbeddingRun:
    """A PENDING run for (version, target): an existing one that never started (its message was lost,
    say, because the broker was down) is reused rather than piling up a second. The caller enqueues
    mlcore.embed for it, after commit."""
    run = (
        EmbeddingRun.objects.filter(model_version=version, target=target, status=EmbeddingRun.Status.PENDING)
        .order_by("created_at")
        .first()
    )
    return run or EmbeddingRun.objects.create(model_version=version, target=target)


def products_embed_start(*, version: ModelVersion) -> EmbeddingRun:
    """Queue an embedding run of the catalog's products for `version` (queue gpu), after commit: the
    demo starts it while the photos are still being generated. The campaign's own pipeline
    (annotate.services.campaign_prepare) then finds them embedded. Reuses a PENDING run.

    With one gpu worker (the demo's) the pipeline's own products step runs after this run and finds
    nothing left; with several, prepare the campaign once this run is DONE, or its photos could be
    matched against a catalog still being embedded."""
    from .jobs import send_on_commit
    from .tasks import embed_run_task

    run = embedding_run_create(version=version, target=EmbeddingRun.Target.PRODUCTS)
    send_on_commit(embed_run_task.si(run.pk))
    return run


def _targets(run: EmbeddingRun):
    """(queryset of rows lacking an embedding, embedding model, FK field name, all targets count)."""
    if run.target == EmbeddingRun.Target.PRODUCTS:
        done = ProductEmbedding.objects.filter(model_version=run.model_version).values("product_id")
        base = Product.objects.filter(is_active=True, images__isnull=False).distinct()
        pending = base.exclude(pk__in=done).prefetch_related("images")
        return pending, ProductEmbedding, "product", base.count()
    done = PhotoEmbedding.objects.filter(model_version=run.model_version).values("photo_id")
    base = Photo.objects.all()
    return base.exclude(pk__in=done), PhotoEmbedding, "photo", base.count()


def _open_image(field_file) -> Image.Image:
    with field_file.open("rb") as fh:
        image = Image.open(fh)
        image.load()
    return image


def embedding_run_execute(*, run_id: int, chunk_size: int = 256) -> EmbeddingRun | None:
    """Embed every target of the run that has no embedding yet for its model version.

    Claims the run with a conditional update (PENDING, or RUNNING with a stale heartbeat), so two
    workers never run it at once. Progress (done_count, heartbeat_at) is written after each chunk.
    Idempotent: embeddings are upserts on (model_version, target); a DONE run returns at once.
    An image that cannot be opened is skipped and counted in skipped_count.

    Returns the run, or None when the row is gone. On an unexpected error the run is left FAILED
    with the error text, and the error is re-raised.
    """
    now = timezone.now()
    claimed = EmbeddingRun.objects.filter(
        Q(status=EmbeddingRun.Status.PENDING)
        | Q(status=EmbeddingRun.Status.RUNNING, heartbeat_at__lt=now - STALE_RUN_AFTER),
        pk=run_id,
    ).update(status=EmbeddingRun.Status.RUNNING, started_at=now, heartbeat_at=now, error="")
    run = EmbeddingRun.objects.select_related("model_version").filter(pk=run_id).first()
    if run is None:
        logger.warning("embedding run %s no longer exists", run_id)
        return None
    if not claimed:
        logger.info("embedding run %s is %s; nothing to do", run.uuid, run.status)
        return run
    try:
        _embedding_run_body(run, chunk_size)
    except Exception as exc:
        EmbeddingRun.objects.filter(pk=run.pk).update(
            status=EmbeddingRun.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now()
        )
        raise
    run.refresh_from_db()
    return run


def embedding_cache_key(version: ModelVersion, *, photos: bool = False) -> str:
    """The embedding cache's name for what `version` computes: a sha256 (first 24 hex digits) of its
    backbone, input size, dimension, weights file and checkpoint sha256, config, the torch version
    and the device type. Not its uuid: another database's (a fresh clone's) version of the same
    pretrained network shares the key, while a retrained network (a new checkpoint) gets a new one.
    CUDA runs in bf16, so its embeddings are kept apart from the CPU's float32 ones. A trained
    matching CNN embeds photos with test-time crops (images_embed), so with photos=True its key also
    names the crops: the same image as a catalog image and as a photo gets two vectors."""
    import torch

    from .nn.infer import device_resolve

    content = {
        "backbone": version.backbone,
        "image_size_px": version.image_size_px,
        "embedding_dim": version.embedding_dim,
        "weights_path": version.weights_path,
        "checkpoint_sha256": version.checkpoint_sha256,
        "config": version.config,
        "torch": torch.__version__.split("+")[0],
        "device": device_resolve(settings.FITCHECK_DEVICE).type,
    }
    if photos and version.backbone == "match_cnn":
        from .nn.match_cnn import PHOTO_CROPS

        content["photo_crops"] = list(PHOTO_CROPS)
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:24]


class EmbeddingCache:
    """Embeddings by image sha256 for one embedding_cache_key, in one SQLite file under
    FITCHECK_CACHE_DIR/embeddings/ (float32 blobs, as ProductEmbedding.vector stores them).

    It outlives the database: a `make demo` restart, or a fresh clone pointed at the same cache
    (bin/demo uses ~/.cache/fitcheck), embeds nothing it embedded before. A cache that cannot be
    read or written is logged and skipped, never an error: the network computes what it lacks.
    """

    def __init__(self, key: str, dim: int):
        self.dim = dim
        self.path = Path(settings.FITCHECK_CACHE_DIR) / "embeddings" / f"{key}.sqlite3"
        self._conn = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("CREATE TABLE IF NOT EXISTS vectors (sha256 TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        except (OSError, sqlite3.Error) as exc:
            logger.warning("embedding cache %s unusable, embedding without it: %s", self.path, exc)
            self._conn = None

    def get(self, sha256s: list[str]) -> dict[str, bytes]:
        """{sha256: float32 bytes} for those of `sha256s` in the cache (of the right length)."""
        if self._conn is None or not sha256s:
            return {}
        out = {}
        try:
            for start in range(0, len(sha256s), 500):
                part = sha256s[start : start + 500]
                rows = self._conn.execute(
                    f"SELECT sha256, vector FROM vectors WHERE sha256 IN ({','.join('?' * len(part))})", part
                )
                out.update({sha: bytes(vec) for sha, vec in rows if len(vec) == 4 * self.dim})
        except sqlite3.Error as exc:
            logger.warning("embedding cache %s unreadable: %s", self.path, exc)
            return {}
        return out

    def put(self, items: dict[str, bytes]) -> None:
        """Store {sha256: float32 bytes}; an existing entry is kept (same key, same content)."""
        if self._conn is None or not items:
            return
        try:
            with self._conn:
                self._conn.execute("BEGIN")
                self._conn.executemany("INSERT OR IGNORE INTO vectors VALUES (?, ?)", list(items.items()))
        except sqlite3.Error as exc:
            logger.warning("embedding cache %s not written: %s", self.path, exc)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _embedding_run_body(run: EmbeddingRun, chunk_size: int) -> None:
    version = run.model_version
    pending, embedding_model, fk, total = _targets(run)
    EmbeddingRun.objects.filter(pk=run.pk).update(total_count=total, done_count=total - pending.count())
    cache = EmbeddingCache(embedding_cache_key(version, photos=fk == "photo"), version.embedding_dim)
    try:
        _embedding_chunks(run, version, pending, embedding_model, fk, cache, chunk_size)
    finally:
        cache.close()
    EmbeddingRun.objects.filter(pk=run.pk).update(status=EmbeddingRun.Status.DONE, finished_at=timezone.now())


def _embedding_chunks(run, version, pending, embedding_model, fk, cache: EmbeddingCache, chunk_size: int) -> None:
    """Embed `pending` chunk by chunk: vectors found in `cache` by image sha256 are reused, the rest
    computed by the network (loaded only when some are missing) and added to the cache."""
    started, embedded = None, 0
    skipped_ids: set[int] = set()
    threads = None  # torch's thread count per chunk on a CPU, from the cores left idle (CpuThreads)
    try:
        while True:
            rows = list(pending.exclude(pk__in=skipped_ids).order_by("pk")[:chunk_size])
            if not rows:
                break
            images, keep, vectors = [], [], {}
            located = []
            for row in rows:
                try:
                    located.append((row, *_image_of(row)))
                except ProductImage.DoesNotExist as exc:
                    logger.warning("embedding run %s: skipping %s %s: %s", run.uuid, fk, row.pk, exc)
                    skipped_ids.add(row.pk)
            cached = cache.get([sha for _, _, sha in located])
            for row, field_file, sha in located:
                if sha in cached:
                    vectors[row.pk] = cached[sha]
                    continue
                try:
                    images.append(_open_image(field_file))
                    keep.append((row, sha))
                except (OSError, ValueError) as exc:
                    logger.warning("embedding run %s: skipping %s %s: %s", run.uuid, fk, row.pk, exc)
                    skipped_ids.add(row.pk)
            if keep:
                if started is None:
                    from .nn.infer import CpuThreads, device_resolve

                    if device_resolve(settings.FITCHECK_DEVICE).type == "cpu":
                        threads = CpuThreads()  # its first reading spans the network's loading
                    _model_for(version)  # loaded before the clock starts: images_per_s is embedding only
                    started = time.perf_counter()
                if threads is not None:
                    threads.apply()
                computed = images_embed(version=version, images=images, photos=fk == "photo")
                fresh = {sha: vec.tobytes() for (_, sha), vec in zip(keep, computed, strict=True)}
                cache.put(fresh)
                vectors.update({row.pk: fresh[sha] for row, sha in keep})
                embedded += len(keep)
            done = [row for row, _, _ in located if row.pk in vectors]
            if done:
                embedding_model.objects.bulk_create(
                    [embedding_model(**{fk: row, "model_version": version, "vector": vectors[row.pk]}) for row in done],
                    ignore_conflicts=True,
                )
            EmbeddingRun.objects.filter(pk=run.pk).update(
                done_count=F("done_count") + len(done),
                skipped_count=len(skipped_ids),
                heartbeat_at=timezone.now(),
                images_per_s=embedded / max(time.perf_counter() - started, 1e-9) if started is not None else None,
            )
    finally:
        if threads is not None:
            threads.restore()


def _image_of(row) -> tuple:
    """(the image file of a Photo or Product row, its sha256). Raises ProductImage.DoesNotExist for
    a product without an image."""
    if isinstance(row, Photo):
        return row.image, row.sha256
    images = sorted(row.images.all(), key=lambda image: (image.position, image.pk))  # prefetched
    first = images[0] if images else None
    if first is None:
        raise ProductImage.DoesNotExist(f"product {row.pk} has no image")
    return first.image, first.sha256


def _image_field(row):
    """The image file of a Photo or Product row (see _image_of)."""
    return _image_of(row)[0]


def _vectors(blobs, dim: int) -> np.ndarray:
    """Stored float32 blobs → (N, dim) float32."""
    if not blobs:
        return np.zeros((0, dim), np.float32)
    return np.frombuffer(b"".join(bytes(b) for b in blobs), dtype=np.float32).reshape(-1, dim)


def product_index_path(version: ModelVersion) -> Path:
    """Where the product index of `version` is saved: FITCHECK_MODELS_ROOT/indexes/<uuid>.index,
    beside the checkpoints (not under MEDIA_ROOT)."""
    return Path(settings.FITCHECK_MODELS_ROOT) / "indexes" / f"{version.uuid}.index"


def product_index_get(*, version: ModelVersion) -> "VectorIndex":
    """The cosine index (mlcore.nn.index) over embeddings of active products for `version`.

    Exact below 50k products, HNSW above (index_build's "auto"). Cached per process and saved to
    product_index_path(version), both keyed by (embedding count, newest embedding pk): a matching
    file is loaded instead of rebuilt (an HNSW build over 1M vectors takes minutes); otherwise the
    index is rebuilt from the rows (10k × 1280 float32 read in ~0.2 s on SQLite) and the file
    replaced (atomically). An unreadable file is logged and rebuilt over. Not locked across
    processes: two that rebuild at once both write the same index, the last rename wins.
    """
    embeddings = ProductEmbedding.objects.filter(model_version=version, product__is_active=True)
    key = [embeddings.count(), embeddings.order_by("-pk").values_list("pk", flat=True).first()]
    with _cache_lock:
        cached = _index_cache.get(version.uuid)
        if cached and cached[0] == key:
            return cached[1]
    from .nn.index import IndexFileError, index_build, index_load

    path = product_index_path(version)
    index = None
    if path.exists():
        try:
            index = index_load(path)
        except IndexFileError as exc:
            logger.warning("rebuilding the product index of %s: %s", version.name, exc)
        if index is not None and (index.config.meta.get("key") != key or index.config.dim != version.embedding_dim):
            index = None
    if index is None:
        ids, blobs = [], []
        rows = embeddings.order_by("pk").values_list("product_id", "vector").iterator(chunk_size=2000)
        for product_id, vector in rows:
            ids.append(product_id)
            blobs.append(vector)
        index = index_build(np.asarray(ids, np.int64), _vectors(blobs, version.embedding_dim), meta={"key": key})
        index.save(path)
    with _cache_lock:
        _index_cache[version.uuid] = (key, index)
    return index


_silhouette_cache: dict = {}  # (version uuid, product pk) → float16 (2, 48, 48), mlcore.nn.verify.silhouettes
SILHOUETTE_CACHE_MAX = 200_000  # about 1.8 GB at most; cleared whole when full


def _verifying_model(version: ModelVersion):
    """The matching CNN of `version` when it re-ranks its shortlists by geometric verification (it
    carries a localiser and a matte, mlcore.nn.verify), else None."""
    if version.backbone != "match_cnn":
        return None
    model, transform, _ = _model_for(version)
    if getattr(model, "matte", None) is None or getattr(model, "localiser", None) is None:
        return None
    return model


def _silhouettes_of(version: ModelVersion, product_ids, *, grayscale: bool):
    """float16 (len(product_ids), 2, 48, 48) catalog silhouettes (mlcore.nn.verify.silhouettes) of
    each product's first image, computed once per process and model version."""
    import torch

    from .nn.verify import silhouettes

    missing = sorted({int(p) for p in product_ids if (version.uuid, int(p)) not in _silhouette_cache})
    if missing:
        first = {}
        for image in ProductImage.objects.filter(product_id__in=missing).order_by("product_id", "position", "pk"):
            first.setdefault(image.product_id, image)
        images = [_uint8_chw(_open_image(first[p].image)) for p in missing if p in first]
        shown = [p for p in missing if p in first]
        if images:
            sizes = {tuple(im.shape[-2:]) for im in images}
            batch = (
                torch.stack(images)
                if len(sizes) == 1
                else torch.stack(
                    [
                        torch.nn.functional.interpolate(
                            im[None].float(), size=(96, 96), mode="bilinear", antialias=True
                        )[0]
                        .round()
                        .clamp(0, 255)
                        .to(torch.uint8)
                        for im in images
                    ]
                )
            )
            with _cache_lock:
                if len(_silhouette_cache) + len(shown) > SILHOUETTE_CACHE_MAX:
                    _silhouette_cache.clear()
                for p, row in zip(shown, silhouettes(batch, grayscale=grayscale), strict=True):
                    _silhouette_cache[(version.uuid, p)] = row
    blank = torch.zeros((2, 48, 48), dtype=torch.float16)
    return torch.stack([_silhouette_cache.get((version.uuid, int(p)), blank) for p in product_ids])


def _shortlists_verify(version: ModelVersion, model, photo_ids: list[int], ids: np.ndarray, scores: np.ndarray):
    """Re-rank each photo's shortlist (ids (Q, K) int64 product pks best first, scores (Q, K) cosines)
    by mlcore.nn.verify.shortlists_rerank. Returns (ids, scores) (Q, K) in the new order; the scores
    stay the CNN's cosines. A photo whose image cannot be read keeps its shortlist as it was."""
    import torch

    from .nn.verify import shortlists_rerank

    if ids.size == 0:
        return ids, scores
    grayscale = _model_for(version)[1].config.grayscale
    photos = {p.pk: p for p in Photo.objects.filter(pk__in=photo_ids)}
    readable, images = [], []
    for row, photo_id in enumerate(photo_ids):
        try:
            images.append(_uint8_chw(_open_image(photos[photo_id].image)))
            readable.append(row)
        except (KeyError, OSError, ValueError) as exc:
            logger.warning("photo %s: not verified, its image cannot be read (%s)", photo_id, exc)
    if not readable:
        return ids, scores
    flat = ids[readable].reshape(-1)
    rows = {int(p): i for i, p in enumerate(dict.fromkeys(flat.tolist()))}
    catalog = _silhouettes_of(version, list(rows), grayscale=grayscale)
    local = torch.tensor([[rows[int(p)] for p in r] for r in ids[readable]], dtype=torch.int64)
    new_local, new_scores = shortlists_rerank(
        model, images, local, torch.from_numpy(scores[readable]), catalog, grayscale=grayscale
    )
    back = np.asarray(list(rows), np.int64)
    ids, scores = ids.copy(), scores.copy()
    ids[readable] = back[new_local.numpy()]
    scores[readable] = new_scores.numpy()
    return ids, scores


def photos_topk_products(
    *, version: ModelVersion, photo_ids: list[int], k: int = 3, product_ids: list[int] | None = None
) -> dict[int, list[tuple[int, float]]]:
    """Top-k catalog products for each photo by cosine similarity of their embeddings.

    Args:
        version: the embedding ModelVersion both sides were embedded with.
        photo_ids: Photo primary keys; photos without an embedding are left out of the result.
        k: products per photo.
        product_ids: only suggest among these Product pks (one retailer's, say); inactive or
            unembedded ones are never suggested. None (the default): every active product.

    A trained matching CNN that carries a matte (mlcore.nn.verify) takes its top SHORTLIST (60)
    products and re-ranks them by geometric verification before keeping k: the order is then the
    fused one, and the scores, still the CNN's cosines, need not be sorted.

    Returns:
        {photo_id: [(product_id, cosine similarity in [-1, 1]), ...]} best first, up to k each.

    Raises:
        EmbeddingsMissing: no product embeddings exist for `version`.
    """
    ranked, ids, scores, _ = _photos_ranked(version=version, photo_ids=photo_ids, k=k, product_ids=product_ids)
    return {
        photo_id: [(int(p), float(s)) for p, s in zip(ids[i], scores[i], strict=True)]
        for i, photo_id in enumerate(ranked)
    }


def photos_suggest(
    *, version: ModelVersion, photo_ids: list[int], k: int = 3, product_ids: list[int] | None = None
) -> dict[int, list[tuple[int, float]] | None]:
    """What a match task shows for each photo under a matching CNN: photos_topk_products's top k (the
    shortlist re-ranked by geometric verification when the CNN carries a matte), or None where the
    CNN's rejection model (mlcore.nn.match_cnn.Rejection, fitted at training) puts P(in catalog),
    read from the CNN's sorted top-10 cosines, under its conformal threshold: "this photo shows no
    catalog product". A version without a rejection model (the pretrained embedding) rejects nothing.

    Same arguments as photos_topk_products; photos without an embedding are left out.

    Raises:
        EmbeddingsMissing: no product embeddings exist for `version`.
    """
    import torch

    from .nn.match_cnn import ranking_features

    ranked, ids, scores, cosines = _photos_ranked(version=version, photo_ids=photo_ids, k=k, product_ids=product_ids)
    rejection = getattr(_model_for(version)[1], "rejection", None) if version.backbone == "match_cnn" else None
    keep = np.ones(len(ranked), dtype=bool)
    if rejection is not None and rejection.threshold is not None and cosines.shape[1] >= 2:
        probability = rejection.probability(ranking_features(torch.from_numpy(cosines[:, :10].copy())))
        keep = (probability >= rejection.threshold).numpy()
    return {
        photo_id: [(int(p), float(s)) for p, s in zip(ids[i], scores[i], strict=True)] if keep[i] else None
        for i, photo_id in enumerate(ranked)
    }


def _photos_ranked(*, version: ModelVersion, photo_ids: list[int], k: int, product_ids: list[int] | None):
    """(photo ids that have an embedding, ids (Q, k) product pks best first, scores (Q, k) their
    cosines, cosines (Q, ≥ 10 where the catalog allows) the CNN's own top cosines sorted, before any
    re-ranking). See photos_topk_products."""
    index = product_index_get(version=version)
    if not len(index):
        raise EmbeddingsMissing(f"no product embeddings for model version {version.name}")
    rows = list(
        PhotoEmbedding.objects.filter(model_version=version, photo_id__in=photo_ids).values_list("photo_id", "vector")
    )
    ranked = [photo_id for photo_id, _ in rows]
    if not rows or k < 1:  # k = 0: what the exact index this replaced returned
        empty = np.zeros((len(rows), 0))
        return ranked, empty.astype(np.int64), empty, empty
    queries = _vectors([vector for _, vector in rows], version.embedding_dim)
    allowed = None if product_ids is None else np.asarray(product_ids, np.int64)
    model = _verifying_model(version)
    if model is None:
        ids, scores = index.search(queries, max(k, 10), allowed_ids=allowed)
        cosines = scores
    else:  # the CNN's shortlist, re-ranked by geometric verification (mlcore.nn.verify)
        from .nn.verify import SHORTLIST

        ids, cosines = index.search(queries, max(k, 10, SHORTLIST), allowed_ids=allowed)
        ids, scores = _shortlists_verify(version, model, ranked, ids, cosines)
    return ranked, ids[:, :k], scores[:, :k], cosines
