"""The trained matching CNN's part of bench/match_recall.py: stage 1 (the catalog alone) and stage 2
(people's verified matches), measured on the demo's photos and on a second, independent generator.

Data, all from the bench database that match_recall.py loaded with fashion_mnist_load:
- catalog: every active product's image (28×28 grayscale), its master category (a leaf, or an inner
  node such as Northwind's "Shoes", which becomes a partial label over that node's leaves);
- test photos: the demo's own photos (DemoPhotoTruth): in catalog, not in catalog, no product;
- stage-2 training answers, simulating people: `--train-matches` new demo-generator photos of
  catalog products that have no test photo (verified matches), with the two other products a
  pretrained model would have shown beside the true one as the candidates people turned down, and
  `--train-rejections` photos answered none / not a product: half of Fashion-MNIST training images
  that are not in the catalog, half scikit-image photos;
- the second generator (bench/_photos_alt.py, written without reading the demo's): one photo of
  each in-catalog test photo's product, and 300 photos of Fashion-MNIST training images that are not
  in the catalog (and not among the stage-2 rejections), so that recall@3 and the not-in-catalog
  AUROC can be compared across generators.

After the localiser, stage 1 trains the matte (mlcore.nn.verify, unless --no-verify) and the pair
verifier (its fourth term, unless --no-pair); from then on recall and category@1 are those of the
CNN's top SHORTLIST re-ranked by geometric verification, as the app suggests, and the CNN's own
ranking is reported beside them.
"""

import time

import _common
import numpy as np


def _u8(images) -> "torch.Tensor":  # noqa: F821
    import torch

    arrays = [np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im) for im in images]
    x = np.stack(arrays)
    if x.ndim == 3:
        x = x[:, None]
    else:
        x = x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


def data_collect(args, product_class: dict[int, int]) -> dict:
    """Everything the two stages train and are measured on, as uint8 tensors and index arrays."""
    import torch

    from catalog import demo_data
    from catalog.models import DemoPhotoTruth, Photo, Product
    from mlcore.matching_pretrain import category_masks
    from mlcore.services import _open_image

    products = list(
        Product.objects.filter(is_active=True)
        .order_by("pk")
        .prefetch_related("images")
        .select_related("master_category")
    )
    row_of = {p.pk: i for i, p in enumerate(products)}
    product_images = [_open_image(sorted(p.images.all(), key=lambda i: (i.position, i.pk))[0].image) for p in products]
    mask, leaves = category_masks([p.master_category.path if p.master_category else None for p in products])
    truths = {t.photo_id: t for t in DemoPhotoTruth.objects.all()}
    photos = list(Photo.objects.filter(pk__in=list(truths)).order_by("pk"))
    photo_images = [_open_image(p.image) for p in photos]
    kinds = np.array([truths[p.pk].kind for p in photos])
    photo_product = np.array([row_of.get(truths[p.pk].product_id, -1) for p in photos], np.int64)
    photo_label = np.array([-1 if truths[p.pk].source_label is None else truths[p.pk].source_label for p in photos])

    root = demo_data.fashion_mnist_locate(args.dataset_dir, allow_download=False)
    train_x, train_y = demo_data.fashion_mnist_read(root, "train")
    source = np.array([int(p.sku.rsplit("-", 1)[1]) for p in products])
    rng = np.random.default_rng([args.seed, 13])
    shown = set(photo_product[photo_product >= 0].tolist())
    unseen = np.array([i for i in range(len(products)) if i not in shown])
    match_rows = rng.choice(unseen, size=min(args.train_matches, len(unseen)), replace=False)
    outside = np.setdiff1d(np.arange(len(train_x)), source)
    n_out = args.train_rejections - args.train_rejections // 2
    out_src = rng.choice(outside, size=n_out + 300, replace=False)
    started = time.perf_counter()
    match_photos = [demo_data.customer_photo_render(train_x[source[r]], rng=rng) for r in match_rows]
    reject_photos = [demo_data.customer_photo_render(train_x[i], rng=rng) for i in out_src[:n_out]]
    reject_photos += [im for _, im in demo_data.non_product_photos(rng=rng, count=args.train_rejections // 2)]
    render_s = time.perf_counter() - started

    import _photos_alt

    in_rows = photo_product[kinds == DemoPhotoTruth.Kind.IN_CATALOG]
    alt_in = _photos_alt.photos_alt_for(train_x[source[in_rows]], seed=args.seed + 101, size_px=args.alt_size)
    alt_out = _photos_alt.photos_alt_for(train_x[out_src[n_out:]], seed=args.seed + 102, size_px=args.alt_size)
    return {
        "products": _u8(product_images),
        "category_mask": torch.from_numpy(mask),
        "leaves": leaves,
        "product_label": np.array([product_class[p.pk] for p in products]),
        "photos": _u8([im.convert("RGB") for im in photo_images]),
        "kinds": kinds,
        "photo_product": photo_product,
        "photo_label": photo_label,
        "train_photos": _u8([im.convert("RGB") for im in match_photos + reject_photos]),
        "train_product": np.concatenate([match_rows, -np.ones(len(reject_photos), np.int64)]).astype(np.int64),
        "alt_in": _u8(alt_in),
        "alt_in_product": in_rows,
        "alt_out": _u8(alt_out),
        "render_s": render_s,
    }


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def evaluate(model, config, data: dict, rejection, *, k: int, device) -> dict:
    """recall@1, recall@k, category@1 on the demo photos and the second generator's; rejection."""
    import torch

    from catalog.models import DemoPhotoTruth
    from mlcore.nn import match_cnn as mc
    from mlcore.nn import verify

    started = time.perf_counter()
    catalog = mc.images_embed(model, data["products"], config, device=device)
    embed_s = time.perf_counter() - started
    started = time.perf_counter()
    z = mc.photos_embed(model, data["photos"], config, device=device)
    photo_s = time.perf_counter() - started
    verified = getattr(model, "matte", None) is not None and getattr(model, "localiser", None) is not None
    shortlist = max(10, verify.SHORTLIST) if verified else 10
    idx, scores = mc.topk_search(z, catalog, k=shortlist)
    kinds, product = data["kinds"], torch.from_numpy(data["photo_product"])
    inc = torch.from_numpy(kinds == DemoPhotoTruth.Kind.IN_CATALOG)
    nic = kinds == DemoPhotoTruth.Kind.NOT_IN_CATALOG
    nonprod = kinds == DemoPhotoTruth.Kind.NOT_A_PRODUCT
    labels = torch.from_numpy(data["product_label"])
    out = {
        "n_in": int(inc.sum()),
        "hits1": int((idx[inc, 0] == product[inc]).sum()),
        "hitsk": int((idx[inc, :k] == product[inc, None]).any(1).sum()),
        "cat1": int((labels[idx[inc, 0]] == torch.from_numpy(data["photo_label"])[inc]).sum()),
        "catalog_images_per_s": len(catalog) / embed_s,
        "photo_images_per_s": len(z) / photo_s,
    }
    features = mc.ranking_features(scores[:, :10])
    p_in = rejection.probability(features).numpy() if rejection else features[:, 0].numpy()
    inc_np = inc.numpy()
    out["auroc_not_in_catalog"] = _auroc(p_in[inc_np], p_in[nic])
    out["auroc_top1"] = _auroc(features[inc_np, 0].numpy(), features[nic, 0].numpy())
    # The threshold: at most 5% of in-catalog photos rejected, set on the calibration (training) side.
    threshold = rejection.threshold if rejection and rejection.threshold is not None else None
    if threshold is not None:
        out["threshold"] = threshold
        out["rejected_in"] = float((p_in[inc_np] < threshold).mean())
        out["rejected_not_in_catalog"] = float((p_in[nic] < threshold).mean())
        out["rejected_non_product"] = float((p_in[nonprod] < threshold).mean()) if nonprod.any() else float("nan")
    za = mc.photos_embed(model, data["alt_in"], config, device=device)
    ia, sa = mc.topk_search(za, catalog, k=shortlist)
    alt_product = torch.from_numpy(data["alt_in_product"])
    out["alt_n"] = len(za)
    out["alt_hitsk"] = int((ia[:, :k] == alt_product[:, None]).any(1).sum())
    out["alt_hits1"] = int((ia[:, 0] == alt_product).sum())
    if verified:  # geometric verification (mlcore.nn.verify) re-ranks the shortlist: the figures above
        # become the CNN's alone, the main ones the re-ranked
        started = time.perf_counter()
        silhouettes = verify.silhouettes(data["products"], grayscale=config.grayscale)
        out["silhouettes_s"] = time.perf_counter() - started
        for key in ("hits1", "hitsk", "cat1", "alt_hits1", "alt_hitsk"):
            out["cnn_" + key] = out[key]
        started = time.perf_counter()
        vi, _ = verify.shortlists_rerank(
            model,
            [data["photos"][i] for i in inc.nonzero()[:, 0].tolist()],
            idx[inc],
            scores[inc],
            silhouettes,
            grayscale=config.grayscale,
        )
        out["verify_photos_per_s"] = len(vi) / (time.perf_counter() - started)
        out["hits1"] = int((vi[:, 0] == product[inc]).sum())
        out["hitsk"] = int((vi[:, :k] == product[inc, None]).any(1).sum())
        out["cat1"] = int((labels[vi[:, 0]] == torch.from_numpy(data["photo_label"])[inc]).sum())
        va, _ = verify.shortlists_rerank(model, data["alt_in"], ia, sa, silhouettes, grayscale=config.grayscale)
        out["alt_hitsk"] = int((va[:, :k] == alt_product[:, None]).any(1).sum())
        out["alt_hits1"] = int((va[:, 0] == alt_product).sum())
    sa = sa[:, :10]
    zo = mc.photos_embed(model, data["alt_out"], config, device=device)
    _, so = mc.topk_search(zo, catalog, k=10)
    fa, fo = mc.ranking_features(sa), mc.ranking_features(so)
    pa = rejection.probability(fa).numpy() if rejection else fa[:, 0].numpy()
    po = rejection.probability(fo).numpy() if rejection else fo[:, 0].numpy()
    out["alt_auroc"] = _auroc(pa, po)
    return out


def report(name: str, r: dict, *, k: int) -> str:
    def rate(h, n):
        lo, hi = _common.wilson_interval(h, n)
        return f"{h / n:.3f} ({h}/{n}; 95% CI {lo:.3f}-{hi:.3f})"

    lines = [
        f"== {name} ==",
        f"recall@1            {rate(r['hits1'], r['n_in'])}",
        f"recall@{k:<12} {rate(r['hitsk'], r['n_in'])}",
        f"category@1          {rate(r['cat1'], r['n_in'])}",
        f"second generator    recall@1 {rate(r['alt_hits1'], r['alt_n'])}, recall@{k} "
        f"{rate(r['alt_hitsk'], r['alt_n'])}  (difference from the demo photos' recall@{k}: "
        f"{r['alt_hitsk'] / r['alt_n'] - r['hitsk'] / r['n_in']:+.3f})",
    ]
    if "cnn_hits1" in r:
        lines.append(
            f"  (the CNN's ranking alone, before geometric verification: recall@1 {rate(r['cnn_hits1'], r['n_in'])}, "
            f"recall@{k} {rate(r['cnn_hitsk'], r['n_in'])}, category@1 {r['cnn_cat1'] / r['n_in']:.3f}; second "
            f"generator recall@{k} {r['cnn_alt_hitsk'] / r['alt_n']:.3f}; verification {r['verify_photos_per_s']:.1f} "
            f"photos/s, catalog silhouettes {r['silhouettes_s']:.0f} s)"
        )
    lines += [
        f"not-in-catalog AUROC {r['auroc_not_in_catalog']:.3f} (rejection model; top-1 cosine alone "
        f"{r['auroc_top1']:.3f}); second generator {r['alt_auroc']:.3f}",
    ]
    if "threshold" in r:
        lines.append(
            f"rejected at P(in catalog) < {r['threshold']:.3f}: in-catalog {r['rejected_in']:.3f}, "
            f"not-in-catalog {r['rejected_not_in_catalog']:.3f}, non-product {r['rejected_non_product']:.3f}"
        )
    lines.append(
        f"embedding: catalog {r['catalog_images_per_s']:.0f} img/s, photos {r['photo_images_per_s']:.0f} img/s"
    )
    return "\n".join(lines)


def stages_run(args, product_class: dict[int, int]) -> list[tuple[str, dict]]:
    """Train stage 1, then stage 2 from it, printing each stage's figures; returns them."""
    import dataclasses
    import json

    import torch

    from mlcore.nn import match_cnn as mc
    from mlcore.nn.infer import device_resolve

    device = device_resolve(args.device)
    with _common.Stopwatch() as sw:
        data = data_collect(args, product_class)
    print(
        f"stage data: {len(data['products'])} products, {len(data['train_photos'])} stage-2 photos "
        f"(rendered in {data['render_s']:.1f} s), {len(data['alt_in'])} + {len(data['alt_out'])} second-generator "
        f"photos; collected in {sw.seconds:.1f} s",
        flush=True,
    )
    overrides = json.loads(args.train_config) if args.train_config else {}
    config = mc.MatchCNNConfig(**{"epochs": args.stage1_epochs, "echo": args.echo, **overrides})
    catalog_data = mc.MatchData(products=data["products"], category_mask=data["category_mask"])
    results = []

    def progress(row, trainer):
        print(
            f"  epoch {row['epoch']}/{trainer.config.epochs}: loss {row['loss']:.3f} "
            f"(instance {row['instance_loss']:.3f}, category {row['category_loss']:.3f}, photos "
            f"{row['photo_loss']:.3f}), {row['seconds']:.1f} s, {row['images_per_s']:.0f} img/s",
            flush=True,
        )

    print(f"stage 1: {config}", flush=True)
    trainer = mc.Trainer(catalog_data, config, device=device)
    localise = not getattr(args, "no_localise", False)
    r1 = _stage_run(trainer, catalog_data, data, args=args, device=device, progress=progress, localise=localise)
    print(
        report(
            f"stage 1 (catalog only, {config.epochs} epochs, {r1['train_s']:.0f} s, "
            f"{r1['train_images_per_s']:.0f} img/s on {device})",
            r1,
            k=args.k,
        ),
        "\n",
        flush=True,
    )
    results.append(("stage 1", r1))

    if args.train_matches:
        hard = _hard_negatives(trainer.model, config, data, device=device)
        train_photos = data["train_photos"]
        if trainer.model.localiser is not None:  # as mlcore.matching_finetune: trained on the photos cut to the product
            from mlcore.nn.localise import photos_localised

            train_photos = photos_localised(
                trainer.model.localiser, train_photos, size_px=train_photos.shape[-1], grayscale=config.grayscale
            )
        stage2 = mc.MatchData(
            products=data["products"],
            category_mask=data["category_mask"],
            photos=train_photos,
            photo_product=torch.from_numpy(data["train_product"]),
            hard_negatives=hard,
        )
        config2 = dataclasses.replace(config, epochs=args.stage2_epochs, lr=config.lr / 3)
        trainer2 = mc.Trainer(stage2, config2, device=device, model=mc.model_copy(trainer.model), stage=2)
        print(f"stage 2: {len(data['train_photos'])} verified photos, {config2.epochs} epochs", flush=True)
        r2 = _stage_run(trainer2, stage2, data, args=args, device=device, progress=progress)
        print(
            report(
                f"stage 2 ({args.train_matches} verified matches + {args.train_rejections} rejections, "
                f"{config2.epochs} epochs, {r2['train_s']:.0f} s, {r2['train_images_per_s']:.0f} img/s)",
                r2,
                k=args.k,
            ),
            "\n",
            flush=True,
        )
        results.append(("stage 2", r2))
    return results


def _stage_run(trainer, train_data, data: dict, *, args, device, progress, localise: bool = False) -> dict:
    """Train `trainer` to the end, fit its rejection model, evaluate; adds train_s and
    train_images_per_s (the mean of its epochs') to evaluate()'s figures. With `localise` (stage 1),
    the figures without the localiser come first (as "whole_photo"), then the localiser is trained
    (mlcore.nn.localise, as mlcore.matching_pretrain does) and the figures are taken again with it."""
    from mlcore.nn import match_cnn as mc

    started = time.perf_counter()
    trainer.fit(on_epoch=progress)
    train_s = time.perf_counter() - started
    whole = matte_s = pair_s = None
    if localise:
        from mlcore.nn import localise as loc

        rejection = mc.rejection_calibrate(trainer.model, train_data, trainer.config, device=device)
        whole = evaluate(trainer.model, trainer.config, data, rejection, k=args.k, device=device)
        print(
            report("stage 1 without the localiser (photos embedded whole, test-time crops)", whole, k=args.k),
            flush=True,
        )
        started = time.perf_counter()
        trainer.model.localiser, _ = loc.localiser_fit(
            train_data.products,
            loc.LocaliserConfig(views=getattr(args, "localiser_views", 6000)),
            grayscale=trainer.config.grayscale,
            on_epoch=lambda row: print(f"  localiser epoch {row['epoch']}: loss {row['loss']:.4f}", flush=True),
        )
        print(f"localiser trained in {time.perf_counter() - started:.0f} s", flush=True)
        if not getattr(args, "no_verify", False):
            from mlcore.nn import verify

            started = time.perf_counter()
            trainer.model.matte, _ = verify.matte_fit(
                train_data.products,
                verify.MatteConfig(views=getattr(args, "matte_views", 6000)),
                grayscale=trainer.config.grayscale,
                on_epoch=lambda row: print(f"  matte epoch {row['epoch']}: loss {row['loss']:.4f}", flush=True),
            )
            matte_s = time.perf_counter() - started
            print(f"matte trained in {matte_s:.0f} s", flush=True)
            if not getattr(args, "no_pair", False):  # the fourth term, as mlcore.matching_pretrain trains it
                started = time.perf_counter()
                catalog = mc.images_embed(trainer.model, train_data.products, trainer.config, device=device)
                trainer.model.pair, _ = verify.pair_fit(
                    trainer.model,
                    train_data.products,
                    catalog,
                    verify.PairConfig(views=getattr(args, "pair_views", 3000), epochs=getattr(args, "pair_epochs", 12)),
                    match_config=trainer.config,
                    grayscale=trainer.config.grayscale,
                    device=device,
                    on_epoch=lambda row: print(f"  pair verifier epoch {row['epoch']}: loss {row['loss']}", flush=True),
                )
                pair_s = time.perf_counter() - started
                print(f"pair verifier trained in {pair_s:.0f} s", flush=True)
    rejection = mc.rejection_calibrate(trainer.model, train_data, trainer.config, device=device)
    result = evaluate(trainer.model, trainer.config, data, rejection, k=args.k, device=device)
    result["train_s"] = train_s
    result["train_images_per_s"] = float(np.mean([h["images_per_s"] for h in trainer.history]))
    if whole is not None:
        result["whole_photo"] = whole
    if matte_s is not None:
        result["matte_s"] = matte_s
    if pair_s is not None:
        result["pair_s"] = pair_s
    return result


def _hard_negatives(model, config, data: dict, *, device) -> "torch.Tensor":  # noqa: F821
    """The candidates people would have turned down: the stage-1 model's top 3 for each verified photo
    other than its own product (at most 2 kept, as a 3-candidate task shows 2 others)."""
    import torch

    from mlcore.nn import match_cnn as mc

    catalog = mc.images_embed(model, data["products"], config, device=device)
    z = mc.photos_embed(model, data["train_photos"], config, device=device)
    idx, _ = mc.topk_search(z, catalog, k=3)
    product = torch.from_numpy(data["train_product"])
    rows = []
    for i in range(len(idx)):
        shown = [int(p) for p in idx[i] if int(p) != int(product[i])][:2]
        rows.append(shown + [-1] * (2 - len(shown)))
    negatives = torch.tensor(rows, dtype=torch.long)
    negatives[product < 0] = -1  # rejections have no "other" candidates: the whole set was turned down
    return negatives
