"""Top-k cosine search over L2-normalised embeddings with FAISS: exact below a size, HNSW above it.

The index behind product suggestions (mlcore.services.product_index_get). Vectors are float32 and
L2-normalised, so cosine similarity is the inner product; ids are int64 row keys (product pks).

Kinds (chosen by `index_build(kind="auto")` from the number of vectors):
- "exact": faiss IndexFlatIP in an IndexIDMap, brute force. Below `exact_below` = 50,000 vectors:
  one query over 50k × 1280 float32 took ~11 ms single-threaded on this project's 2-core CPU
  (50k × 128: ~1.4 ms), recall is 1 and there is nothing to build. At 1M × 128 one query takes
  24 ms (p50), past the 20 ms target.
- "hnsw": IndexHNSWFlat (Malkov & Yashunin 2016, "Efficient and robust approximate nearest neighbor
  search using Hierarchical Navigable Small World graphs") with METRIC_INNER_PRODUCT, M=32,
  efConstruction=80, efSearch=64: the default above `exact_below`. On bench/vector_index.py (1M
  clustered 128-d vectors, machine load ~5 on 2 cores) recall@10 against exact search was 0.962 at
  efSearch 32, 0.9945 at 64 and 0.9997 at 128, single queries p50 0.29 / p99 0.62 ms at 64; the
  build took 343 s and the file is 792 MB (vectors 512 MB + graph). M and efConstruction are
  faiss's usual values, not swept (a build at 1M is 6 minutes here); efSearch was.
- "ivfpq": IndexIVFPQ (Jégou, Douze & Schmid 2011, "Product quantization for nearest neighbor
  search"), sqrt(N) cells, 16 bytes a vector: a 33 MB file and a 29 s build at 1M × 128, but
  recall@10 0.25 at nprobe 16 or 64 (the PQ error, not the cells, loses the neighbours of these
  crowded clusters), far below the 0.98 target. Only for memory-bound deployments that re-rank.

Filtering (`search(..., allowed_ids=...)`, retailer or is_active subsets): a subset of at most
`exact_below` vectors is searched exactly (a flat scan of the raw vectors with an IDSelectorBitmap:
recall 1, and no more work than the exact kind); a larger one goes through the index with a faiss IDSelectorBitmap over
the allowed rows in SearchParametersHNSW / SearchParametersIVF, with efSearch (nprobe) widened by
1/(allowed share), at most 16×, because HNSW walks through excluded vectors too and needs a wider
beam to collect k allowed ones. With 10% of 1M allowed: recall@10 0.9996, p50 8.2 ms / p99 14.9 ms
a single query (the 10× beam, plus mapping the 100k ids to rows on every call), 523 queries/s
batched. Rows the ANN search leaves short of k are redone exactly. Searches pass their beam in SearchParameters rather
than setting index fields, so concurrent searches on one index are safe.

No Django here; mlcore.services turns rows into arrays and back.
"""

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

KINDS = ("exact", "hnsw", "ivfpq")
FILE_MAGIC = b"FITCHECK-VECTOR-INDEX\n"
FILE_FORMAT = 1
HEADER_BYTES = 4096  # the JSON header's fixed slot after FILE_MAGIC
NORM_TOLERANCE = 1e-4  # rows whose norm is further than this from 1 are normalised (embeddings are ~1e-7 off)


class IndexFileError(ValueError):
    """An index file cannot be loaded: not an index file, truncated, corrupt, or another format."""


@dataclass(frozen=True)
class IndexConfig:
    """How an index was built; saved with it.

    kind: "exact" | "hnsw" | "ivfpq". dim: vector dimension D. exact_below: vector counts at most
    this are searched exactly (the auto kind, and filtered searches over small subsets).
    hnsw_*: graph degree M, beam widths at build and search time. ivf_nlist: coarse cells
    (0: sqrt(N)); ivf_nprobe: cells visited a query; pq_m: sub-quantisers (bytes a vector, 8 bits each).
    meta: the caller's own JSON-able data (mlcore.services keeps its cache key here).
    """

    kind: str
    dim: int
    exact_below: int = 50_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64
    ivf_nlist: int = 0
    ivf_nprobe: int = 32
    pq_m: int = 16
    meta: dict = field(default_factory=dict)


def _ids_check(ids, name: str = "ids") -> np.ndarray:
    """Any integer array-like → (N,) int64. Raises ValueError naming `name` otherwise."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers (int64-able), got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds values above the int64 range")
    return arr.astype(np.int64, copy=False)


def _vectors_check(vectors, name: str, dim: int | None = None) -> np.ndarray:
    """(N, D) finite float rows → C-contiguous float32, each row L2-normalised (the input itself
    when it already is all that, else a copy).

    Rows are normalised rather than rejected when they are not unit length: the contract is cosine
    similarity, which is the inner product of the normalised rows whatever the input, and some
    stored embeddings (tests, hand-made data) are not normalised. Embeddings from
    mlcore.nn.infer.embed_images already are, so this changes their scores by float rounding only.
    A zero row has no direction (its cosine is undefined) and is rejected, as are NaN and infinity.
    """
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} have dimension {arr.shape[1]}, the index holds {dim}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be floating point, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)  # no copy when it already is (5 GB at 1M × 1280)
    if arr.size:
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contain NaN or infinite values")
        norms = np.linalg.norm(arr, axis=1)
        zero = np.flatnonzero(norms == 0)
        if zero.size:
            raise ValueError(f"{name} row {zero[0]} is all zeros: no direction to compare ({zero.size} such rows)")
        off = np.abs(norms - 1.0) > NORM_TOLERANCE
        if off.any():
            arr = arr.copy()  # never normalise the caller's array in place
            arr[off] /= norms[off, None]
    return arr


def _empty(q: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((q, 0), np.int64), np.zeros((q, 0), np.float32)


class VectorIndex:
    """A built index: `search`, `save`, `len()`. Make one with index_build or index_load."""

    def __init__(self, index: faiss.IndexIDMap, config: IndexConfig):
        self.index = index  # ids in index.id_map; the inner index numbers its vectors 0..N-1 (rows)
        self.config = config
        self.ids = faiss.vector_to_array(index.id_map).astype(np.int64)  # (N,), id of each row
        # id → row: a dense table when ids are small (product pks are), else a sorted copy to bisect.
        # Both answer 100k ids in well under a millisecond or a few ms; np.unique or an
        # IDSelectorBatch over them took 50-130 ms on the bench machine.
        n = len(self.ids)
        top = int(self.ids.max()) + 1 if n else 0
        self._lookup = self._order = self._sorted = None
        if top <= 4 * n + 1024:
            self._lookup = np.full(top, -1, np.int64)
            self._lookup[self.ids] = np.arange(n)
        else:
            self._order = np.argsort(self.ids, kind="stable")
            self._sorted = self.ids[self._order]

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def kind(self) -> str:
        return self.config.kind

    def _flat(self) -> faiss.IndexFlat | None:
        """The index holding the raw vectors in row order (the exact kind itself, HNSW's storage);
        None for IVF-PQ, which keeps codes only."""
        inner = faiss.downcast_index(self.index.index)
        if isinstance(inner, faiss.IndexHNSW):
            inner = faiss.downcast_index(inner.storage)
        return inner if isinstance(inner, faiss.IndexFlat) else None

    def _mask_of(self, ids: np.ndarray) -> np.ndarray:
        """(N,) bool: the rows holding `ids`; ids not in the index are ignored."""
        mask = np.zeros(len(self), bool)
        if not len(self) or not ids.size:
            return mask
        if self._lookup is not None:
            ids = ids[(ids >= 0) & (ids < len(self._lookup))]
            rows = self._lookup[ids]
            rows = rows[rows >= 0]
        else:
            pos = np.minimum(np.searchsorted(self._sorted, ids), len(self) - 1)
            rows = self._order[pos[self._sorted[pos] == ids]]
        mask[rows] = True
        return mask

    def _exact_rows(self, queries: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the raw vectors, restricted to the rows set in `mask` (all when None).
        k ≤ the number of those rows. A flat scan with an IDSelectorBitmap skips excluded rows
        without copying anything: gathering the allowed rows first cost 46 ms a query for 10k of
        100k × 1280 vectors (51 MB copied each time)."""
        params = None
        if mask is not None:
            bits = np.packbits(mask, bitorder="little")
            params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(len(self), faiss.swig_ptr(bits)))
        scores, rows = self._flat().search(queries, k, params=params)  # `bits` is alive until here
        return self.ids[rows], scores

    def search(self, queries, k: int, *, allowed_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine similarity, optionally among `allowed_ids` only.

        Args:
            queries: (Q, D) float32, L2-normalised (others are normalised; see _vectors_check).
            k: neighbours wanted, ≥ 1; fewer come back when fewer than k vectors are searchable.
            allowed_ids: optional int ids to search among (a retailer's products, say); ids not in
                the index are ignored. None searches everything.

        Returns:
            (ids (Q, k') int64, scores (Q, k') float32 in [-1, 1]), best first, k' = min(k, N) where
            N is the number of searchable vectors (all of them, or those in `allowed_ids`). Every
            returned id is in `allowed_ids` when it is given.

        Raises:
            ValueError: k < 1, queries of the wrong shape, NaN or all-zero, allowed_ids not integers.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an integer ≥ 1, got {k!r}")
        queries = _vectors_check(queries, "queries", self.config.dim)
        q = len(queries)
        mask = None
        if allowed_ids is not None:
            mask = self._mask_of(_ids_check(allowed_ids, "allowed_ids"))
            n_searchable = int(np.count_nonzero(mask))
            if n_searchable == len(self):
                mask = None  # everything is allowed: no filter
        else:
            n_searchable = len(self)
        k = min(int(k), n_searchable)
        if k == 0 or q == 0:
            return _empty(q)
        flat_ok = self._flat() is not None
        if mask is not None and n_searchable <= self.config.exact_below and flat_ok:
            return self._exact_rows(queries, k, mask)

        scores, ids = self._ann_search(queries, k, n_searchable, mask)
        short = np.flatnonzero((ids < 0).any(axis=1))
        if short.size:  # the beam found fewer than k (allowed) vectors: redo those rows exactly
            if flat_ok:
                ids[short], scores[short] = self._exact_rows(queries[short], k, mask)
            else:
                scores[short], ids[short] = self._ann_search(queries[short], k, n_searchable, mask, exhaustive=True)
        return ids, scores

    def _ann_search(self, queries, k: int, n_searchable: int, mask, *, exhaustive: bool = False):
        """Search the inner faiss index (rows 0..N-1) with this kind's beam and, when `mask` is
        given, a faiss IDSelectorBitmap over the allowed rows; returns (scores, ids), -1 for a miss.

        A bitmap rather than the IDMap's own id translation with an IDSelectorBatch: built from the
        mask in microseconds, and a membership test is one bit, not a hash lookup."""
        cfg = self.config
        kwargs = {}
        if mask is not None:
            bits = np.packbits(mask, bitorder="little")  # faiss reads bit (row & 7) of byte row >> 3
            kwargs["sel"] = faiss.IDSelectorBitmap(len(self), faiss.swig_ptr(bits))
        # A filter keeping a fraction f of the vectors leaves ~f of each beam usable: widen it by
        # 1/f, capped at 16× (sparser subsets of ≤ exact_below vectors take the exact path).
        widen = 1.0 if mask is None else min(16.0, len(self) / max(n_searchable, 1))
        if cfg.kind == "exact":
            params = faiss.SearchParameters(**kwargs)
        elif cfg.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(k, math.ceil(cfg.hnsw_ef_search * widen)), **kwargs)
        else:
            nlist = faiss.extract_index_ivf(self.index.index).nlist
            nprobe = nlist if exhaustive else min(nlist, math.ceil(cfg.ivf_nprobe * widen))
            params = faiss.SearchParametersIVF(nprobe=nprobe, **kwargs)
        scores, rows = self.index.index.search(queries, k, params=params)  # `bits` is alive until here
        return scores, np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)

    def save(self, path) -> None:
        """Write the index and its config to one file at `path`, atomically (a temporary file in the
        same folder, then a rename), streaming faiss's bytes so no second copy is held in memory.

        Format: FILE_MAGIC; a JSON header (format, config, count, sha256 and size of the rest)
        padded with spaces to HEADER_BYTES; then faiss.write_index's bytes. Read with index_load.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as fh:

                def write(chunk):
                    nonlocal size
                    digest.update(chunk)
                    size += len(chunk)
                    fh.write(chunk)
                    return len(chunk)

                fh.write(FILE_MAGIC + b" " * HEADER_BYTES)
                faiss.write_index(self.index, faiss.PyCallbackIOWriter(write))
                header = json.dumps(
                    {
                        "format": FILE_FORMAT,
                        "config": asdict(self.config),
                        "count": len(self),
                        "faiss_sha256": digest.hexdigest(),
                        "faiss_size_bytes": size,
                    }
                ).encode()
                if len(header) >= HEADER_BYTES:
                    raise ValueError(f"config.meta is too large to save ({len(header)} bytes of header)")
                fh.seek(len(FILE_MAGIC))
                fh.write(header)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def serialized_size_bytes(self) -> int:
        """Bytes faiss.write_index writes for this index (the file is that plus a short header)."""
        return int(faiss.serialize_index(self.index).nbytes)


def index_build(
    ids,
    vectors,
    *,
    kind: str = "auto",
    exact_below: int = 50_000,
    hnsw_m: int = 32,
    hnsw_ef_construction: int = 80,
    hnsw_ef_search: int = 64,
    ivf_nlist: int = 0,
    ivf_nprobe: int = 32,
    pq_m: int = 16,
    meta: dict | None = None,
    seed: int = 0,
) -> VectorIndex:
    """Build a cosine (inner-product) index over L2-normalised vectors.

    Args:
        ids: (N,) int64-able, distinct, ≥ 0 (faiss returns -1 for "no result").
        vectors: (N, D) float32, L2-normalised (others are normalised; zero rows, NaN and
            infinity raise; see _vectors_check).
        kind: "auto" (exact below `exact_below` vectors, else hnsw), "exact", "hnsw" or "ivfpq".
        exact_below, hnsw_*, ivf_*, pq_m: see IndexConfig; the defaults are bench/vector_index.py's.
        meta: JSON-able data saved with the index (mlcore.services keeps its cache key there).
        seed: k-means seed for ivfpq training.

    Returns:
        A VectorIndex. Building hnsw over 1M × 128 takes minutes on 2 cores (docs/benchmarks.md).

    Raises:
        ValueError: names the bad argument: ids/vectors length or shape mismatch, NaN or zero
            rows, non-integer, negative or duplicate ids, an unknown kind, ivfpq with fewer
            vectors than it needs to train or a D not divisible by pq_m.
    """
    ids = _ids_check(ids)
    vectors = _vectors_check(vectors, "vectors")
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
    dim = vectors.shape[1]
    if dim < 1:
        raise ValueError("vectors must have dimension ≥ 1 (an empty input still needs its (0, D) shape)")
    if ids.size and ids.min() < 0:
        raise ValueError("ids must be ≥ 0 (faiss uses -1 for a missing result)")
    if np.unique(ids).size != ids.size:
        raise ValueError("ids must be distinct")
    if kind == "auto":
        kind = "exact" if len(ids) <= exact_below else "hnsw"
    if kind not in KINDS:
        raise ValueError(f"kind must be 'auto' or one of {KINDS}, got {kind!r}")
    config = IndexConfig(
        kind=kind, dim=dim, exact_below=int(exact_below), hnsw_m=int(hnsw_m),
        hnsw_ef_construction=int(hnsw_ef_construction), hnsw_ef_search=int(hnsw_ef_search),
        ivf_nlist=int(ivf_nlist), ivf_nprobe=int(ivf_nprobe), pq_m=int(pq_m), meta=dict(meta or {}),
    )  # fmt: skip
    if kind == "exact":
        inner = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = config.hnsw_ef_construction
        inner.hnsw.efSearch = config.hnsw_ef_search
    else:
        if dim % config.pq_m:
            raise ValueError(f"pq_m={config.pq_m} must divide the dimension {dim}")
        nlist = config.ivf_nlist or max(1, min(65536, int(math.sqrt(len(ids)))))
        if len(ids) < max(nlist, 256):  # k-means needs ≥ nlist points, PQ's 8-bit codebooks 256
            raise ValueError(f"ivfpq needs at least {max(nlist, 256)} vectors to train, got {len(ids)}")
        quantizer = faiss.IndexFlatIP(dim)
        inner = faiss.IndexIVFPQ(quantizer, dim, nlist, config.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        inner.cp.seed = seed
        rng = np.random.default_rng(seed)
        # 64 points a cell: faiss warns below 39; more only slows k-means (1M × 128 trains in ~1 min).
        sample = vectors[rng.choice(len(vectors), min(len(vectors), 64 * max(nlist, 256)), replace=False)]
        inner.train(sample)
        inner.nprobe = config.ivf_nprobe
    index = faiss.IndexIDMap(inner)  # faiss's Python wrapper keeps `inner` (and the quantizer) alive
    if len(ids):
        index.add_with_ids(vectors, ids)
    return VectorIndex(index, config)


def index_load(path) -> VectorIndex:
    """Read an index written by VectorIndex.save.

    Raises:
        FileNotFoundError: no file at `path`.
        IndexFileError (a ValueError): not an index file, another format version, a checksum or
            count mismatch (truncated or corrupt), or faiss cannot read it.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        if fh.read(len(FILE_MAGIC)) != FILE_MAGIC:
            raise IndexFileError(f"{path} is not a fitcheck vector index file")
        try:
            header = json.loads(fh.read(HEADER_BYTES))
            config = IndexConfig(**header["config"])
            expected_sha, count, fmt = header["faiss_sha256"], int(header["count"]), header["format"]
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFileError(f"{path} has an unreadable header: {exc}") from exc
        if fmt != FILE_FORMAT:
            raise IndexFileError(f"{path} is format {fmt}, this code reads format {FILE_FORMAT}")
        start = fh.tell()
        digest = hashlib.sha256()
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
        if digest.hexdigest() != expected_sha:
            raise IndexFileError(f"{path} is corrupt or truncated (checksum mismatch)")
        fh.seek(start)
        try:  # streamed from the file: no second copy of a multi-GB index in memory
            index = faiss.read_index(faiss.PyCallbackIOReader(fh.read))
        except RuntimeError as exc:
            raise IndexFileError(f"faiss cannot read {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(index, faiss.IndexIDMap) or index.ntotal != count or index.d != config.dim:
        raise IndexFileError(f"{path}: the faiss index does not match its header (kind, count or dimension)")
    return VectorIndex(index, config)
