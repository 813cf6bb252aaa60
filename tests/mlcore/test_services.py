"""Embedding runs and top-k suggestions (mlcore.services), with the tiny CNN on CPU."""

import numpy as np
import pytest

from catalog.models import ProductImage
from mlcore import services
from mlcore.models import EmbeddingRun, PhotoEmbedding, ProductEmbedding
from mlcore.tasks import embed_run_task

from ..factories import ModelVersionFactory, PhotoFactory, ProductFactory


@pytest.fixture
def version(db):
    return ModelVersionFactory()


def test_products_run_embeds_every_active_product_once(version):
    products = [ProductFactory() for _ in range(5)]
    ProductFactory(is_active=False)
    run = services.embedding_run_create(version=version, target=EmbeddingRun.Target.PRODUCTS)
    run = services.embedding_run_execute(run_id=run.pk, chunk_size=2)
    assert run.status == EmbeddingRun.Status.DONE
    assert (run.done_count, run.total_count, run.skipped_count) == (5, 5, 0)
    assert run.images_per_s > 0
    stored = ProductEmbedding.objects.filter(model_version=version)
    assert sorted(stored.values_list("product_id", flat=True)) == sorted(p.pk for p in products)
    vector = np.frombuffer(stored.first().vector, dtype=np.float32)
    assert vector.shape == (32,) and abs(np.linalg.norm(vector) - 1) < 1e-5


def test_running_a_done_run_again_does_nothing(version):
    ProductFactory()
    run = services.embedding_run_create(version=version, target=EmbeddingRun.Target.PRODUCTS)
    embed_run_task(run.pk)
    embed_run_task(run.pk)  # a redelivered message
    assert ProductEmbedding.objects.count() == 1
    assert EmbeddingRun.objects.get(pk=run.pk).status == EmbeddingRun.Status.DONE


def test_a_second_run_embeds_only_what_is_missing(version):
    ProductFactory()
    first = services.embedding_run_create(version=version, target=EmbeddingRun.Target.PRODUCTS)
    services.embedding_run_execute(run_id=first.pk)
    ProductFactory()
    second = services.embedding_run_create(version=version, target=EmbeddingRun.Target.PRODUCTS)
    second = services.embedding_run_execute(run_id=second.pk)
    assert (second.done_count, second.total_count) == (2, 2)
    assert ProductEmbedding.objects.count() == 2


def test_an_unreadable_image_is_skipped_and_counted(version, settings):
    ProductFactory()
    broken = ProductFactory()
    image = ProductImage.objects.get(product=broken)
    (settings.MEDIA_ROOT / image.image.name).write_bytes(b"garbage, not a png")
    run = services.embedding_run_create(version=version, target=EmbeddingRun.Target.PRODUCTS)
    run = services.embedding_run_execute(run_id=run.pk)
    assert run.status == EmbeddingRun.Status.DONE
    assert (run.done_count, run.skipped_count) == (1, 1)
    assert not ProductEmbedding.objects.filter(product=broken).exists()


def test_a_missing_run_is_logged_and_ignored(db):
    assert services.embedding_run_execute(run_id=987654) is None


def test_an_unexpected_error_leaves_the_run_failed_with_the_reason(db):
    bad = ModelVersionFactory(name="broken", backbone="no-such-net")
    ProductFactory()
    run = services.embedding_run_create(version=bad, target=EmbeddingRun.Target.PRODUCTS)
    with pytest.raises(Exception, match="unknown backbone"):
        services.embedding_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == EmbeddingRun.Status.FAILED and "unknown backbone" in run.error


def test_pending_runs_are_reused(version):
    first = services.embedding_run_create(version=version, target=EmbeddingRun.Target.PHOTOS)
    assert services.embedding_run_create(version=version, target=EmbeddingRun.Target.PHOTOS) == first


def test_a_photo_of_a_catalog_image_finds_that_product_first(version, settings):
    products = [ProductFactory() for _ in range(6)]
    target = products[3]
    # The customer photo is the product's own image file.
    image = ProductImage.objects.get(product=target)
    photo = PhotoFactory(image=image.image.name, sha256="f" * 64)
    for kind in (EmbeddingRun.Target.PRODUCTS, EmbeddingRun.Target.PHOTOS):
        services.embedding_run_execute(run_id=services.embedding_run_create(version=version, target=kind).pk)
    assert PhotoEmbedding.objects.count() == 1
    top = services.photos_topk_products(version=version, photo_ids=[photo.pk], k=3)[photo.pk]
    assert len(top) == 3
    assert top[0][0] == target.pk and top[0][1] == pytest.approx(1.0, abs=1e-4)
    assert top[0][1] >= top[1][1] >= top[2][1]


def test_suggestions_before_products_are_embedded_raise(version):
    photo = PhotoFactory()
    with pytest.raises(services.EmbeddingsMissing):
        services.photos_topk_products(version=version, photo_ids=[photo.pk], k=3)


def test_embeddings_are_reused_from_the_cache_by_image_sha256_in_a_new_database(version, monkeypatch):
    """Issue 16: a restart or a fresh clone on the same cache embeds nothing it embedded before."""
    ProductFactory()
    ProductFactory()
    run = services.embedding_run_create(version=version, target=EmbeddingRun.Target.PRODUCTS)
    services.embedding_run_execute(run_id=run.pk)
    first = dict(ProductEmbedding.objects.values_list("product__images__sha256", "vector"))
    # Another database's copy of the same pretrained network: a new row and uuid, the same content.
    key = services.embedding_cache_key(version)
    version.delete()
    again = ModelVersionFactory()
    assert services.embedding_cache_key(again) == key

    def no_network(**kwargs):
        raise AssertionError("the network ran for a cached image")

    monkeypatch.setattr(services, "images_embed", no_network)
    run = services.embedding_run_execute(
        run_id=services.embedding_run_create(version=again, target=EmbeddingRun.Target.PRODUCTS).pk
    )
    assert (run.status, run.done_count) == (EmbeddingRun.Status.DONE, 2)
    assert dict(ProductEmbedding.objects.values_list("product__images__sha256", "vector")) == first


def test_another_checkpoint_gets_its_own_cache_key(version):
    retrained = ModelVersionFactory(name="retrained", checkpoint_sha256="a" * 64)
    assert services.embedding_cache_key(retrained) != services.embedding_cache_key(version)


def test_an_unreadable_cache_file_is_skipped_and_the_network_embeds(version, settings):
    ProductFactory()
    path = settings.FITCHECK_CACHE_DIR / "embeddings" / f"{services.embedding_cache_key(version)}.sqlite3"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a sqlite file" * 100)
    run = services.embedding_run_execute(
        run_id=services.embedding_run_create(version=version, target=EmbeddingRun.Target.PRODUCTS).pk
    )
    assert (run.status, run.done_count) == (EmbeddingRun.Status.DONE, 1)
    assert ProductEmbedding.objects.filter(model_version=version).count() == 1


def test_an_embedding_run_on_a_busy_cpu_embeds_on_fewer_threads_and_gives_them_back(version, monkeypatch):
    import torch

    from mlcore.nn import infer

    ProductFactory()
    ProductFactory()
    seen = []
    monkeypatch.setattr(infer.CpuThreads, "__call__", lambda self: 1)
    original = services.images_embed
    monkeypatch.setattr(
        services, "images_embed", lambda **kwargs: (seen.append(torch.get_num_threads()), original(**kwargs))[1]
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run = services.embedding_run_create(version=version, target=EmbeddingRun.Target.PRODUCTS)
        run = services.embedding_run_execute(run_id=run.pk, chunk_size=1)
        assert run.status == EmbeddingRun.Status.DONE
        assert seen == [1, 1]
        assert torch.get_num_threads() == 2  # the worker's next job (training) gets its threads back
    finally:
        torch.set_num_threads(before)
