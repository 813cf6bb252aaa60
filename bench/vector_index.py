"""How accurate and fast is the FAISS vector index (mlcore.nn.index) against exact search?

Pure numpy + faiss, no database. Draws `--n` clustered embeddings: a Gaussian mixture of
`--centres` centres uniform on the unit sphere, each point its centre plus isotropic noise of norm
about `--spread`, L2-normalised (so neighbours are as crowded as in a catalog of similar products);
and `--queries` queries drawn like the data: random data points perturbed by noise of norm about
`--spread`/2, normalised. The truth is a brute-force numpy top-k (chunked matrix products), so the
"exact" kind is checked too.

Prints, for the exact kind and each ANN kind asked for (--kinds):
- build time (s), index memory: bytes of the saved file and RSS growth while building (MB);
- recall@k against exact search (the share of the true top-k ids found), over all queries;
- single-query latency p50/p99 (ms) at --threads OpenMP threads, and batch throughput;
- the same with a filter: `--filter-fraction` (10%) of the ids, drawn at random, passed as
  allowed_ids; plus the exact-over-the-subset path for comparison;
- the machine's load average before and after (other jobs share the CPUs).

Run (1M × 128, the defaults: about 10 minutes on a 2-core CPU, most of it the HNSW build):

    .venv/bin/python bench/vector_index.py
    .venv/bin/python bench/vector_index.py --n 100000 --kinds hnsw,ivfpq --ef-search 32,64,128
    .venv/bin/python bench/vector_index.py --dim 1280 --n 200000

1M × 1280 float32 is 5.1 GB, and the HNSW index holds another copy: the bench prints the sizes it
needs first and refuses (--force to try anyway) when data + index would not fit in available memory.
Timings are figures to read, never asserted anywhere. Saved index files go to var/bench/vector_index/.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (bench/ is not a package)

sys.path.insert(0, str(_common.ROOT))  # no Django here, so no _common.bench_environment to do it

EF_LIST = _common.int_list(low=1, high=4096, what="efSearch values")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Recall@k, latency, build time and memory of mlcore.nn.index.")
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the index (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=128, help="dimension D (default: %(default)s; try 1280)")
    parser.add_argument("--queries", type=int, default=1_000, help="queries (default: %(default)s)")
    parser.add_argument("--centres", type=int, default=4_000, help="mixture centres (default: %(default)s)")
    parser.add_argument("--spread", type=float, default=0.6,
                        help="norm of a point's noise around its centre (default: %(default)s)")
    parser.add_argument("--k", type=int, default=10, help="the k of recall@k (default: %(default)s)")
    parser.add_argument("--kinds", default="hnsw,ivfpq",
                        help="ANN kinds, comma-separated: hnsw, ivfpq (default: %(default)s)")
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW M (default: %(default)s)")
    parser.add_argument("--ef-construction", type=int, default=80, help="HNSW efConstruction (default: %(default)s)")
    parser.add_argument("--ef-search", type=EF_LIST, default=[64], metavar="EF[,EF...]",
                        help="HNSW efSearch values to compare on one build (default: 64)")
    parser.add_argument("--nprobe", type=EF_LIST, default=[32], metavar="P[,P...]",
                        help="IVF-PQ nprobe values to compare on one build (default: 32)")
    parser.add_argument("--pq-m", type=int, default=16, help="IVF-PQ bytes a vector (default: %(default)s)")
    parser.add_argument("--filter-fraction", type=float, default=0.1,
                        help="share of ids allowed in the filtered search (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenMP threads for the latency loops (default: 1; 2 threads on 2 busy cores "
                        "made single queries 10x slower)")
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1,
                        help="OpenMP threads for building and batch search (default: all cores)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="run even if the memory estimate does not fit")
    return parser.parse_args(argv)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _malloc_trim() -> None:
    """Hand freed heap back to the OS (glibc), so RSS growth counts the index, not reused temporaries."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _unit(x):
    import numpy as np

    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def clustered(n: int, dim: int, *, centres: int, spread: float, seed: int, chunk: int = 100_000):
    """(n, dim) float32 unit vectors of a Gaussian mixture on the sphere, with their centre labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mu = _unit(rng.standard_normal((centres, dim), dtype=np.float32))
    label = rng.integers(0, centres, n)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        x[start:stop] = _unit(mu[label[start:stop]] + noise)
    return x, label


def exact_topk(data, queries, k: int, rows=None, chunk: int = 100_000):
    """Brute-force top-k ids (row numbers) of each query over `data` (or its `rows`), numpy only."""
    import numpy as np

    rows = np.arange(len(data)) if rows is None else rows
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        s = queries @ data[part].T
        s = np.concatenate([best_s, s], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(part, (len(queries), len(part)))], axis=1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if s.shape[1] > k else np.argsort(-s, axis=1)
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


def recall(found, truth) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (recall@k against exact search)."""
    return sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)) / truth.size


def latency_ms(fn, queries) -> tuple[float, float]:
    """p50, p99 in ms of fn(one query) over every query, one at a time."""
    times = []
    for i in range(len(queries)):
        q = queries[i:i + 1]
        t = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - t) * 1000)
    return _common.percentile(times, 50), _common.percentile(times, 99)


def main(argv=None) -> int:
    args = parse_args(argv)
    import faiss
    import numpy as np

    from mlcore.nn.index import index_build

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    out = _common.BENCH_VAR / "vector_index"
    out.mkdir(parents=True, exist_ok=True)
    data_mb = args.n * args.dim * 4 / 1e6
    graph_mb = args.n * args.hnsw_m * 2 * 4 / 1e6 * 1.1 if "hnsw" in kinds else 0
    need_mb = 2 * data_mb + graph_mb + 500  # data, the index's own copy, the graph, numpy temporaries
    print(f"vectors: {args.n:,} x {args.dim} float32 = {data_mb:,.0f} MB; queries {args.queries:,}; "
          f"centres {args.centres:,}, spread {args.spread}; k={args.k}")
    print(f"memory: about {need_mb:,.0f} MB needed, {_available_mb():,.0f} MB available")
    if need_mb > _available_mb() and not args.force:
        print("not enough memory for this size: shrink --n (or --dim), or pass --force")
        return 2
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores; "
          f"faiss {faiss.__version__}, query threads {args.threads}, build threads {args.build_threads}")

    with _common.Stopwatch() as sw:
        data, _ = clustered(args.n, args.dim, centres=args.centres, spread=args.spread, seed=args.seed)
        rng = np.random.default_rng(args.seed + 1)
        picks = rng.integers(0, args.n, args.queries)
        noise = rng.standard_normal((args.queries, args.dim), dtype=np.float32) * (args.spread / 2 / np.sqrt(args.dim))
        queries = _unit(data[picks] + noise)
        ids = np.arange(args.n, dtype=np.int64) * 7 + 3  # not row numbers, to catch id mix-ups
        allowed_rows = np.sort(rng.choice(args.n, max(1, int(args.n * args.filter_fraction)), replace=False))
        allowed = ids[allowed_rows]
    print(f"data drawn in {sw.seconds:.1f} s")
    faiss.omp_set_num_threads(args.build_threads)
    with _common.Stopwatch() as sw:
        truth = ids[exact_topk(data, queries, args.k)]
        truth_f = ids[exact_topk(data, queries, args.k, rows=allowed_rows)]
    print(f"numpy brute-force truth (all, and {args.filter_fraction:.0%} subset) in {sw.seconds:.1f} s\n")

    rows = []

    def measure(label, index, set_param=None, values=(None,)):
        for value in values:
            if set_param:
                set_param(index, value)
            faiss.omp_set_num_threads(args.build_threads)
            with _common.Stopwatch() as batch:
                found, _ = index.search(queries, args.k)
            with _common.Stopwatch() as batch_f:
                found_f, _ = index.search(queries, args.k, allowed_ids=allowed)
            outside = int((~np.isin(found_f, allowed)).sum())
            faiss.omp_set_num_threads(args.threads)
            p50, p99 = latency_ms(lambda q: index.search(q, args.k), queries)
            f50, f99 = latency_ms(lambda q: index.search(q, args.k, allowed_ids=allowed), queries)
            name = label if value is None else f"{label} {value}"
            rows.append([
                name, f"{recall(found, truth):.4f}", f"{p50:.2f}", f"{p99:.2f}",
                f"{args.queries / batch.seconds:,.0f}",
                f"{recall(found_f, truth_f):.4f}", f"{f50:.2f}", f"{f99:.2f}",
                f"{args.queries / batch_f.seconds:,.0f}", outside,
            ])
            print("  " + "  ".join(str(c) for c in rows[-1]), flush=True)

    def build(kind, **kw):
        faiss.omp_set_num_threads(args.build_threads)
        _malloc_trim()
        rss = _rss_mb()
        with _common.Stopwatch() as sw:
            index = index_build(ids, data, kind=kind, **kw)
        grown = _rss_mb() - rss
        path = out / f"{kind}.index"
        with _common.Stopwatch() as save:
            index.save(path)
        size_mb = path.stat().st_size / 1e6
        print(f"{kind}: built in {sw.seconds:.1f} s, RSS +{grown:,.0f} MB, file {size_mb:,.1f} MB "
              f"(saved in {save.seconds:.1f} s) {kw or ''}", flush=True)
        return index, dict(kind=kind, build_s=sw.seconds, rss_mb=grown, file_mb=size_mb)

    builds = []
    exact, info = build("exact")
    builds.append(info)
    measure("exact", exact)
    # Exact over the filtered subset (the path taken when a subset holds ≤ exact_below vectors).
    faiss.omp_set_num_threads(args.threads)
    allowed_mask = exact._mask_of(allowed)
    s50, s99 = latency_ms(lambda q: exact._exact_rows(q, args.k, allowed_mask), queries[:200])
    print(f"  exact over the {len(allowed):,}-vector subset (flat scan, IDSelectorBitmap): "
          f"p50 {s50:.2f} ms, p99 {s99:.2f} ms "
          "(200 queries)")
    exact = None  # free its copy of the data before the next build

    for kind in kinds:
        if kind == "hnsw":
            index, info = build("hnsw", hnsw_m=args.hnsw_m, hnsw_ef_construction=args.ef_construction,
                                exact_below=0)

            def set_ef(ix, ef):
                from dataclasses import replace

                ix.config = replace(ix.config, hnsw_ef_search=ef)

            measure(f"hnsw M={args.hnsw_m} efC={args.ef_construction} efS=", index, set_ef, args.ef_search)
        elif kind == "ivfpq":
            index, info = build("ivfpq", pq_m=args.pq_m, exact_below=0)

            def set_nprobe(ix, p):
                from dataclasses import replace

                ix.config = replace(ix.config, ivf_nprobe=p)

            measure(f"ivfpq m={args.pq_m} nprobe=", index, set_nprobe, args.nprobe)
        else:
            print(f"unknown kind {kind!r}, skipped")
            continue
        builds.append(info)
        del index

    print()
    print(_common.table(
        ["index", f"recall@{args.k}", "p50 ms", "p99 ms", "batch q/s",
         f"filtered recall@{args.k}", "p50 ms", "p99 ms", "batch q/s", "outside"],
        rows,
    ))
    print()
    print(_common.table(["kind", "build s", "RSS growth MB", "file MB"],
                        [[b["kind"], f"{b['build_s']:.1f}", f"{b['rss_mb']:,.0f}", f"{b['file_mb']:,.1f}"]
                         for b in builds]))
    print(f"\nfiltered: {len(allowed):,} allowed ids ({args.filter_fraction:.0%}), drawn at random; "
          "'outside' counts returned ids not in the allowed set (must be 0)")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"peak RSS {_common.peak_rss_mb():,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
