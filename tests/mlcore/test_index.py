"""mlcore.nn.index (FAISS exact / HNSW / IVF-PQ) and its use by product_index_get."""

import numpy as np
import pytest

from catalog.models import Product
from mlcore import services
from mlcore.models import PhotoEmbedding, ProductEmbedding
from mlcore.nn.index import IndexFileError, index_build, index_load
from mlcore.nn.infer import ExactIndex
from tests.factories import ModelVersionFactory, PhotoFactory, ProductFactory


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clustered(n, dim=16, centres=20, spread=0.5, seed=0):
    """n unit vectors around `centres` random unit centres, and ids that are not row numbers."""
    rng = np.random.default_rng(seed)
    mu = _unit(rng.normal(size=(centres, dim)))
    x = _unit(mu[rng.integers(0, centres, n)] + spread / np.sqrt(dim) * rng.normal(size=(n, dim)))
    return np.arange(n, dtype=np.int64) * 3 + 100, x


def _brute(ids, x, queries, k, allowed=None):
    rows = np.arange(len(ids)) if allowed is None else np.flatnonzero(np.isin(ids, allowed))
    scores = queries @ x[rows].T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[rows][top], np.take_along_axis(scores, top, axis=1)


def _recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist(), strict=True)])


def test_exact_kind_matches_the_hand_computed_top_k():
    vectors = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    index = index_build([10, 20, 30], vectors, kind="exact")
    ids, scores = index.search(np.array([[0.8, 0.6]], np.float32), k=2)
    # cosines: id10 0.8, id20 0.6, id30 0.48 + 0.48 = 0.96
    assert ids.tolist() == [[30, 10]] and ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_allclose(scores, [[0.96, 0.8]], rtol=1e-6)


def test_exact_kind_matches_brute_force_and_the_torch_exact_index():
    ids, x = _clustered(500)
    queries = x[:40]
    index = index_build(ids, x)  # auto: 500 < exact_below
    assert index.kind == "exact"
    found, scores = index.search(queries, 7)
    truth, truth_scores = _brute(ids, x, queries, 7)
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)
    assert _recall(found, truth) == 1.0
    torch_ids, _ = ExactIndex(ids, x).search(queries, 7)
    assert _recall(found, torch_ids) == 1.0


def test_auto_picks_hnsw_above_exact_below_and_hnsw_recall_is_high():
    ids, x = _clustered(3000, dim=16, centres=30)
    index = index_build(ids, x, exact_below=1000)
    assert index.kind == "hnsw" and len(index) == 3000
    queries = _unit(x[:200] + 0.05 * np.random.default_rng(1).normal(size=(200, 16)))
    found, scores = index.search(queries, 10)
    assert _recall(found, _brute(ids, x, queries, 10)[0]) >= 0.95
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_ivfpq_kind_returns_well_formed_results():
    ids, x = _clustered(2000, dim=16)
    index = index_build(ids, x, kind="ivfpq", pq_m=4, ivf_nlist=16)
    found, scores = index.search(x[:5], 4)
    assert found.shape == scores.shape == (5, 4)
    assert np.isin(found, ids).all()


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
@pytest.mark.parametrize("share", [0.02, 0.5])
def test_filtering_never_returns_an_id_outside_allowed_ids(kind, share):
    ids, x = _clustered(2000)
    rng = np.random.default_rng(2)
    allowed = rng.choice(ids, int(2000 * share), replace=False)
    # exact_below=10 sends the 50% subset through faiss's IDSelectorBatch; the 2% one (40 ids) too.
    index = index_build(ids, x, kind=kind, exact_below=10)
    queries = x[:50]
    found, _ = index.search(queries, 10, allowed_ids=allowed)
    assert found.shape == (50, 10)
    assert np.isin(found, allowed).all()
    assert _recall(found, _brute(ids, x, queries, 10, allowed)[0]) >= 0.95
    # The small-subset path: an exact flat scan of the allowed rows.
    exact_subset = index_build(ids, x, kind=kind, exact_below=5000)
    found, scores = exact_subset.search(queries, 10, allowed_ids=allowed)
    truth, truth_scores = _brute(ids, x, queries, 10, allowed)
    assert np.isin(found, allowed).all() and _recall(found, truth) == 1.0
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)


@pytest.mark.parametrize("scale", [1, 10**9])  # dense ids (a lookup table) and sparse ones (bisection)
def test_filtering_maps_ids_to_rows_whatever_their_spread(scale):
    _, x = _clustered(400)
    ids = np.random.default_rng(3).permutation(400).astype(np.int64) * scale + 5
    index = index_build(ids, x, kind="hnsw", exact_below=50)
    for allowed in (ids[::2], ids[::20]):  # 200 ids through HNSW's selector, 20 exactly
        found, _ = index.search(x[:30], 5, allowed_ids=np.concatenate([allowed, [ids.max() + 1, 0]]))
        assert np.isin(found, allowed).all()
        assert _recall(found, _brute(ids, x, x[:30], 5, allowed)[0]) >= 0.95


def test_filtering_with_fewer_allowed_than_k_and_unknown_ids():
    ids, x = _clustered(300)
    index = index_build(ids, x, kind="hnsw", exact_below=0)
    found, scores = index.search(x[:3], 10, allowed_ids=[ids[5], ids[9], 999_999])
    assert found.shape == (3, 2) and set(found.ravel().tolist()) == {ids[5], ids[9]}
    found, _ = index.search(x[:3], 10, allowed_ids=np.array([], np.int64))
    assert found.shape == (3, 0)


def test_fewer_items_than_k_and_empty_index():
    index = index_build([1], np.array([[1.0, 0.0]], np.float32))
    ids, _ = index.search(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), k=3)
    assert ids.shape == (2, 1) and ids[:, 0].tolist() == [1, 1]
    empty = index_build(np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
    assert len(empty) == 0
    ids, scores = empty.search(np.eye(4, dtype=np.float32)[:2], 5)
    assert ids.shape == scores.shape == (2, 0)
    ids, _ = index.search(np.zeros((0, 2), np.float32), 3)
    assert ids.shape == (0, 0)  # as ExactIndex: no queries, no columns


def test_vectors_that_are_not_normalised_are_normalised():
    index = index_build([1, 2], np.array([[3.0, 0.0], [1.0, 1.0]], np.float32))
    ids, scores = index.search(np.array([[0.0, 5.0]], np.float32), 2)
    assert ids.tolist() == [[2, 1]]
    np.testing.assert_allclose(scores, [[np.sqrt(0.5), 0.0]], atol=1e-6)
    caller = np.array([[3.0, 0.0]], np.float32)
    index.search(caller, 1)
    assert caller.tolist() == [[3.0, 0.0]]  # normalised in a copy, not in place


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivfpq"])
def test_save_and_load_round_trip(tmp_path, kind):
    ids, x = _clustered(1000, dim=16)
    index = index_build(ids, x, kind=kind, pq_m=4, ivf_nlist=8, meta={"key": [1000, 7]})
    path = tmp_path / "sub" / "v.index"
    index.save(path)
    loaded = index_load(path)
    assert loaded.kind == kind and len(loaded) == 1000 and loaded.config == index.config
    assert loaded.config.meta == {"key": [1000, 7]}
    for allowed in (None, ids[::3]):
        a = index.search(x[:20], 5, allowed_ids=allowed)
        b = loaded.search(x[:20], 5, allowed_ids=allowed)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1])
    assert not list(path.parent.glob(".*.tmp"))


def test_a_corrupt_or_foreign_file_raises_index_file_error(tmp_path):
    ids, x = _clustered(200)
    path = tmp_path / "v.index"
    index_build(ids, x).save(path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # a flipped byte in faiss's payload
    (tmp_path / "flipped.index").write_bytes(bytes(data))
    (tmp_path / "truncated.index").write_bytes(bytes(data[: len(data) // 2]))
    (tmp_path / "foreign.index").write_bytes(b"not an index at all")
    for name in ("flipped", "truncated", "foreign"):
        with pytest.raises(IndexFileError):
            index_load(tmp_path / f"{name}.index")
    assert issubclass(IndexFileError, ValueError)
    with pytest.raises(FileNotFoundError):
        index_load(tmp_path / "missing.index")


@pytest.mark.parametrize(
    ("ids", "vectors", "kwargs", "match"),
    [
        ([1, 2], np.eye(3, dtype=np.float32), {}, "2 ids for 3 vectors"),
        ([1.5, 2.0, 3.0], np.eye(3, dtype=np.float32), {}, "ids must be integers"),
        (["a", "b", "c"], np.eye(3, dtype=np.float32), {}, "ids must be integers"),
        ([1, 1, 2], np.eye(3, dtype=np.float32), {}, "ids must be distinct"),
        ([-1, 1, 2], np.eye(3, dtype=np.float32), {}, "ids must be ≥ 0"),
        ([1, 2, 3], np.full((3, 3), np.nan, np.float32), {}, "vectors contain NaN"),
        ([1, 2, 3], np.zeros((3, 3), np.float32), {}, "vectors row 0 is all zeros"),
        ([1, 2, 3], np.ones(3, np.float32), {}, "vectors must be 2-D"),
        ([1, 2, 3], np.eye(3, dtype=np.float32), {"kind": "lsh"}, "kind must be"),
        ([1, 2, 3], np.eye(3, dtype=np.float32), {"kind": "ivfpq"}, "pq_m=16 must divide"),
    ],
)
def test_bad_build_input_raises_value_error_naming_it(ids, vectors, kwargs, match):
    with pytest.raises(ValueError, match=match):
        index_build(ids, vectors, **kwargs)


def test_bad_search_input_raises_value_error_naming_it():
    index = index_build([1, 2, 3], np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.eye(3, dtype=np.float32), 0)
    with pytest.raises(ValueError, match="queries have dimension 2"):
        index.search(np.eye(2, dtype=np.float32), 1)
    with pytest.raises(ValueError, match="queries contain NaN"):
        index.search(np.full((1, 3), np.nan, np.float32), 1)
    with pytest.raises(ValueError, match="allowed_ids must be integers"):
        index.search(np.eye(3, dtype=np.float32), 1, allowed_ids=[1.5])


# -- services ------------------------------------------------------------------------------------------


@pytest.fixture
def embedded(db):
    """40 active products and one inactive, embedded (8-d) under one version; 5 photos near products."""
    version = ModelVersionFactory(name="idx-8d", embedding_dim=8)
    rng = np.random.default_rng(0)
    vectors = _unit(rng.normal(size=(41, 8)))
    products = [ProductFactory(image=False) for _ in range(41)]
    Product.objects.filter(pk=products[-1].pk).update(is_active=False)
    for product, vector in zip(products, vectors, strict=True):
        ProductEmbedding.objects.create(product=product, model_version=version, vector=vector.tobytes())
    photos = []
    for i in range(5):
        photo = PhotoFactory()
        near = vectors[i * 7] if i < 4 else vectors[-1]  # the last photo is its inactive product's
        PhotoEmbedding.objects.create(photo=photo, model_version=version, vector=_unit(near + 0.01).tobytes())
        photos.append(photo)
    return version, products, vectors, photos


def test_photos_topk_products_returns_the_brute_force_top_k(embedded):
    version, products, vectors, photos = embedded
    services._index_cache.clear()
    top = services.photos_topk_products(version=version, photo_ids=[p.pk for p in photos], k=3)
    pks = np.array([p.pk for p in products[:40]], np.int64)
    for i, photo in enumerate(photos):
        q = _unit(vectors[i * 7] + 0.01 if i < 4 else vectors[-1] + 0.01)[None]
        truth, truth_scores = _brute(pks, vectors[:40], q, 3)
        assert [p for p, _ in top[photo.pk]] == truth[0].tolist()
        np.testing.assert_allclose([s for _, s in top[photo.pk]], truth_scores[0], atol=1e-5)
    assert products[-1].pk not in {p for pairs in top.values() for p, _ in pairs}  # inactive


def test_photos_topk_products_restricted_to_product_ids(embedded):
    version, products, _, photos = embedded
    services._index_cache.clear()
    allowed = [p.pk for p in products[10:20]] + [products[-1].pk]  # the inactive one stays out
    top = services.photos_topk_products(version=version, photo_ids=[p.pk for p in photos], k=4, product_ids=allowed)
    for pairs in top.values():
        assert len(pairs) == 4 and {p for p, _ in pairs} <= set(allowed[:-1])


def test_product_index_is_saved_reloaded_and_rebuilt_when_the_key_changes(embedded):
    version, products, vectors, _ = embedded
    services._index_cache.clear()
    index = services.product_index_get(version=version)
    path = services.product_index_path(version)
    assert path.exists() and len(index) == 40 and index.kind == "exact"
    # A new process (empty cache) loads the file instead of rebuilding.
    services._index_cache.clear()
    written = path.stat().st_mtime_ns
    again = services.product_index_get(version=version)
    assert path.stat().st_mtime_ns == written
    np.testing.assert_array_equal(np.sort(again.ids), np.sort(index.ids))
    # A new embedding changes the key: rebuilt and rewritten.
    newcomer = ProductFactory(image=False)
    ProductEmbedding.objects.create(product=newcomer, model_version=version, vector=vectors[0].tobytes())
    rebuilt = services.product_index_get(version=version)
    assert len(rebuilt) == 41 and newcomer.pk in rebuilt.ids
    services._index_cache.clear()
    assert newcomer.pk in services.product_index_get(version=version).ids


def test_a_corrupt_index_file_is_rebuilt_over(embedded):
    version, *_ = embedded
    services._index_cache.clear()
    path = services.product_index_path(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"garbage")
    assert len(services.product_index_get(version=version)) == 40
    services._index_cache.clear()
    assert len(index_load(path)) == 40
