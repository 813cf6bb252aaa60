"""Geometric verification of the matching CNN's shortlist (mlcore.nn.verify): the alignment by hand
on drawn silhouettes, the fused re-ranking, the matte trained from catalog views, checkpoints, and
the app's suggestions re-ranked through mlcore.services. Accuracy is measured by
bench/match_recall.py --train, not here."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlcore.nn import match_cnn as mc
from mlcore.nn import verify

S = verify.MATTE_PX


def _shape(kind: int) -> torch.Tensor:
    """A 48×48 soft silhouette: 0 a T (a shirt), 1 a tall rectangle, 2 an L, 3 a disc, 4 a wide bar."""
    m = torch.zeros(S, S)
    if kind == 0:
        m[6:16, 4:44] = 1
        m[16:44, 16:32] = 1
    elif kind == 1:
        m[4:44, 14:34] = 1
    elif kind == 2:
        m[4:44, 6:18] = 1
        m[32:44, 18:42] = 1
    elif kind == 3:
        yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
        m[((yy - 24) ** 2 + (xx - 24) ** 2) < 18**2] = 1
    else:
        m[16:32, 2:46] = 1
    return F.avg_pool2d(m[None, None], 3, stride=1, padding=1)[0]


def _pair(mask: torch.Tensor) -> torch.Tensor:
    """(1, S, S) mask → (2, S, S): the mask and an intensity with a gradient over it."""
    ramp = torch.linspace(0.2, 0.9, S).view(1, S, 1).expand(1, S, S)
    return torch.cat([mask, mask * ramp])


def _warp(x: torch.Tensor, degrees: float, shift: float, scale: float = 1.0) -> torch.Tensor:
    a = math.radians(degrees)
    theta = torch.tensor(
        [[math.cos(a) / scale, -math.sin(a) / scale, shift], [math.sin(a) / scale, math.cos(a) / scale, -shift]]
    )[None]
    return F.grid_sample(x[None], F.affine_grid(theta, (1, *x.shape), align_corners=False), align_corners=False)[0]


def test_align_recovers_a_rotated_shifted_silhouette_and_scores_other_shapes_lower():
    photo = _warp(_pair(_shape(0)), degrees=12, shift=0.08, scale=0.92)
    at_identity = float((photo[0] * _shape(0)[0]).sum() / (photo[0] + _shape(0)[0] - photo[0] * _shape(0)[0]).sum())
    candidates = torch.stack([_pair(_shape(k)) for k in range(5)])
    iou, ncc = verify.align(photo[None].expand(5, -1, -1, -1), candidates, steps=60)
    assert iou.shape == ncc.shape == (5,)
    best, _ = verify.align(_pair(_shape(0))[None], _pair(_shape(0))[None], steps=0)  # soft masks: below 1
    assert at_identity < 0.65 and float(iou[0]) > 0.95 * float(best[0])  # the fit undid the warp
    assert int(iou.argmax()) == 0 and float(iou[0]) - float(iou[1:].max()) > 0.1
    assert float(ncc[0]) > 0.9  # the same shading, aligned
    assert ((iou >= 0) & (iou <= 1)).all() and ((ncc >= -1) & (ncc <= 1)).all()
    empty_iou, empty_ncc = verify.align(torch.zeros(0, 2, S, S), torch.zeros(0, 2, S, S))
    assert empty_iou.shape == empty_ncc.shape == (0,)


def test_rerank_sums_z_scores_over_each_shortlist_and_can_overturn_the_cosine_order():
    cosine = torch.tensor([[0.9, 0.8, 0.7]])
    iou = torch.tensor([[0.2, 0.9, 0.3]])
    ncc = torch.tensor([[0.1, 0.8, 0.2]])
    fused = verify.rerank(cosine, iou, ncc)

    def z(x):
        return (x - x.mean()) / x.std()

    assert torch.allclose(fused, z(cosine) + z(iou) + z(ncc))
    assert int(fused.argmax()) == 1
    assert torch.equal(verify.rerank(cosine[:, :1], iou[:, :1], ncc[:, :1]), torch.zeros(1, 1))  # one candidate
    pair = torch.tensor([[3.0, -1.0, 0.5]])  # a learned fourth term, when the model has one
    assert torch.allclose(verify.rerank(cosine, iou, ncc, pair), z(cosine) + z(iou) + z(ncc) + z(pair))


def test_shortlist_verify_puts_the_photos_own_silhouette_first_despite_a_lower_cosine():
    truth = [2, 0, 4]
    photos = torch.stack([_warp(_pair(_shape(k)), degrees=-8 + 8 * i, shift=0.05) for i, k in enumerate(truth)])
    # catalog rows, the truth not first; not the tall rectangle (1) beside the wide bar (4): an affine
    # warp maps one rectangle onto another, so those two fit alike (a limit of the method)
    shortlist = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0], [0, 4, 2, 3]])
    catalog = torch.stack([_pair(_shape(k)) for k in range(5)])
    cosine = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.69], [0.9, 0.75, 0.8, 0.7]])
    candidates = catalog[shortlist.reshape(-1)].view(3, 4, 2, S, S)
    order, fused = verify.shortlist_verify(photos, candidates, cosine, steps=60, chunk=5)
    assert shortlist.gather(1, order)[:, 0].tolist() == truth
    assert (fused[:, :-1] >= fused[:, 1:]).all()  # best first
    assert sorted(order[0].tolist()) == [0, 1, 2, 3]  # a permutation of the shortlist
    none_order, none_fused = verify.shortlist_verify(photos[:0], candidates[:0], cosine[:0])
    assert none_order.shape == none_fused.shape == (0, 4)


def test_box_cut_squares_the_mask_box_and_grows_it_by_five_percent_each_side():
    image = torch.zeros(1, 96, 96)
    mask = torch.zeros(1, 96, 96)
    mask[0, 20:60, 30:50] = 1  # a 40 × 20 box centred at (40, 40)
    image[0, 20:60, 30:50] = 0.5
    cut_image, cut_mask = verify.box_cut(image, mask)
    assert cut_image.shape == cut_mask.shape == (1, S, S)
    # 44 px side (40 × 1.1) over 48 px: the box is 40/44 of the cut's height and 20/44 of its width
    rows = (cut_mask[0] > 0.5).any(1).nonzero()[:, 0]
    cols = (cut_mask[0] > 0.5).any(0).nonzero()[:, 0]
    assert abs(len(rows) - 48 * 40 / 44) <= 1.5 and abs(len(cols) - 48 * 20 / 44) <= 1.5
    assert verify.box_cut(image, torch.zeros(1, 96, 96)) is None


def _products(n=10, seed=0) -> torch.Tensor:
    """n catalog images, 28×28 uint8 on black: the five silhouettes at random sizes and greys."""
    rng = np.random.default_rng(seed)
    out = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    for i in range(n):
        m = F.interpolate(_shape(i % 5)[None], size=(28, 28), mode="bilinear", antialias=True)[0, 0]
        out[i, 0] = (m > 0.5).to(torch.uint8) * int(rng.integers(90, 250))
    return out


def test_matte_fit_learns_masks_of_catalog_views_deterministically_and_checkpoints_carry_it(tmp_path):
    products = _products()
    config = verify.MatteConfig(views=48, sets=2, echo=2, batch_size=16, width=8)
    seen = []
    matte, rows = verify.matte_fit(products, config, on_epoch=seen.append)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and seen == rows
    assert rows[-1]["loss"] < rows[0]["loss"]
    again, _ = verify.matte_fit(products, config)
    assert all(torch.equal(a, b) for a, b in zip(matte.state_dict().values(), again.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="at least one catalog image"):
        verify.matte_fit(products[:0], config)

    sil = verify.silhouettes(products, chunk=4)
    assert sil.shape == (10, 2, S, S) and sil.dtype == torch.float16
    assert float(sil[:, 0].amax()) > 0.9 and float(sil[:, 0].amin()) == 0.0

    tiny = mc.MatchCNNConfig(image_size_px=16, width=8, embedding_dim=16, epochs=1, batch_size=8, workers=0)
    model = mc.matchnet_build(tiny, category_count=3)
    from mlcore.nn import localise

    model.localiser = localise.Localiser(8)
    model.matte = matte
    mc.match_cnn_save(model, tiny, tmp_path / "m.pt")
    loaded, *_ = mc.match_cnn_load(tmp_path / "m.pt")
    assert loaded.matte is not None and loaded.matte.width == 8
    photos = torch.randint(0, 255, (3, 1, 40, 40), dtype=torch.uint8)
    assert torch.equal(verify.photos_matted(loaded, photos), verify.photos_matted(model, photos))
    matted = verify.photos_matted(model, photos)
    assert matted.shape == (3, 2, S, S) and ((matted[:, 0] >= 0) & (matted[:, 0] <= 1)).all()
    idx = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    cosine = torch.tensor([[0.9, 0.5, 0.1]] * 3)
    new_idx, new_cos = verify.shortlists_rerank(model, photos, idx, cosine, sil)
    for row in range(3):  # each shortlist permuted, each product keeping its own cosine
        assert sorted(new_idx[row].tolist()) == idx[row].tolist()
        assert new_cos[row].tolist() == [cosine[row, int((idx[row] == p).nonzero())].item() for p in new_idx[row]]


def test_pair_fit_learns_from_catalog_views_deterministically_and_becomes_the_fourth_term(tmp_path):
    """The pair verifier: trained listwise on views of the catalog with the CNN's shortlists, the
    same for a seed, kept by a checkpoint, and fused by shortlist_verify as a fourth z-score."""
    from mlcore.nn import localise

    products = _products(n=10)
    tiny = mc.MatchCNNConfig(image_size_px=16, width=8, embedding_dim=16, epochs=1, batch_size=8, workers=0)
    torch.manual_seed(0)
    model = mc.matchnet_build(tiny, category_count=3)
    model.localiser = localise.Localiser(8)
    model.matte, _ = verify.matte_fit(products, verify.MatteConfig(views=48, sets=1, echo=2, batch_size=16, width=8))
    catalog = mc.images_embed(model, products, tiny, device=torch.device("cpu"))
    config = verify.PairConfig(views=48, shortlist=4, epochs=6, batch_size=8, width=8, lr=5e-3)
    seen, beats = [], []
    pair, rows = verify.pair_fit(
        model, products, catalog, config, match_config=tiny, on_epoch=seen.append, on_progress=lambda: beats.append(1)
    )
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6] and seen == [{"epoch": 0, "loss": None}, *rows]
    assert len(beats) == 1  # one chunk of 75 views aligned
    assert rows[0]["loss"] <= math.log(4) + 0.3 and rows[-1]["loss"] < rows[0]["loss"]  # ln 4: chance
    again, _ = verify.pair_fit(model, products, catalog, config, match_config=tiny)
    assert all(torch.equal(a, b) for a, b in zip(pair.state_dict().values(), again.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="at least 2 catalog products"):
        verify.pair_fit(model, products[:1], catalog[:1], config, match_config=tiny)

    model.pair = pair
    mc.match_cnn_save(model, tiny, tmp_path / "m.pt")
    loaded, *_ = mc.match_cnn_load(tmp_path / "m.pt")
    assert loaded.pair is not None and loaded.pair.width == 8
    assert all(
        torch.equal(a, b) for a, b in zip(pair.state_dict().values(), loaded.pair.state_dict().values(), strict=True)
    )

    # shortlist_verify with the verifier: z(cos) + z(IoU) + z(NCC) + z(logit of the aligned pair)
    sil = verify.silhouettes(products)
    photos = torch.stack([_warp(_pair(_shape(k)), degrees=6.0 * k, shift=0.04) for k in (0, 3)])
    shortlist = torch.tensor([[0, 1, 2, 3], [4, 3, 2, 1]])
    candidates = sil[shortlist.reshape(-1)].float().view(2, 4, 2, S, S)
    cosine = torch.tensor([[0.5, 0.9, 0.8, 0.7], [0.9, 0.6, 0.8, 0.7]])
    order, fused = verify.shortlist_verify(photos, candidates, cosine, pair=pair, steps=30)
    flat_photo = photos[:, None].expand(-1, 4, -1, -1, -1).reshape(8, 2, S, S)
    iou, ncc, theta = verify.align(flat_photo, candidates.reshape(8, 2, S, S), steps=30, return_warp=True)
    logits = verify.pair_logits(pair, flat_photo, verify.pair_warp(candidates.reshape(8, 2, S, S), theta))
    by_hand = verify.rerank(cosine, iou.view(2, 4), ncc.view(2, 4), logits.view(2, 4))
    assert torch.allclose(fused, by_hand.gather(1, order), atol=1e-5)
    three_order, three = verify.shortlist_verify(photos, candidates, cosine, steps=30)
    assert torch.allclose(
        three, verify.rerank(cosine, iou.view(2, 4), ncc.view(2, 4)).gather(1, three_order), atol=1e-5
    )


@pytest.fixture
def verifying_version(db, tmp_path):
    """A matching-CNN ModelVersion whose checkpoint carries a localiser and an (untrained) matte; 8
    products and 3 photos with random 16-d embeddings under it."""
    from catalog.models import Product
    from mlcore.models import ModelVersion, PhotoEmbedding, ProductEmbedding
    from mlcore.nn import localise

    from ..factories import PhotoFactory, ProductFactory

    tiny = mc.MatchCNNConfig(image_size_px=16, width=8, embedding_dim=16, epochs=1, batch_size=8, workers=0)
    model = mc.matchnet_build(tiny, category_count=3)
    model.localiser = localise.Localiser(8)
    model.matte = verify.Matte(8)
    mc.match_cnn_save(model, tiny, tmp_path / "cnn.pt")
    version = ModelVersion.objects.create(
        name="match-cnn-verify-test",
        kind=ModelVersion.Kind.BACKBONE,
        backbone="match_cnn",
        image_size_px=16,
        embedding_dim=16,
        weights_path=str(tmp_path / "cnn.pt"),
    )
    rng = np.random.default_rng(1)
    products = [ProductFactory() for _ in range(8)]
    assert Product.objects.count() == 8
    for product in products:
        vector = rng.normal(size=16).astype(np.float32)
        ProductEmbedding.objects.create(
            product=product, model_version=version, vector=(vector / np.linalg.norm(vector)).tobytes()
        )
    photos = [PhotoFactory() for _ in range(3)]
    for photo in photos:
        vector = rng.normal(size=16).astype(np.float32)
        PhotoEmbedding.objects.create(
            photo=photo, model_version=version, vector=(vector / np.linalg.norm(vector)).tobytes()
        )
    return version, products, photos


def _plain_top(version, photos, k):
    from mlcore import services

    index = services.product_index_get(version=version)
    out = {}
    for photo in photos:
        vector = np.frombuffer(photo.embeddings.get(model_version=version).vector, np.float32)[None]
        ids, scores = index.search(vector, k)
        out[photo.pk] = list(zip(ids[0].tolist(), scores[0].tolist(), strict=True))
    return out


def test_suggestions_of_a_verifying_cnn_are_its_shortlist_re_ranked(verifying_version, monkeypatch):
    """mlcore.services.photos_topk_products searches the CNN's top SHORTLIST and keeps the first k of
    the re-ranked order: with a re-ranker that reverses each shortlist, the suggestions are the
    plain search's last k, reversed, each with its own cosine."""
    from mlcore import services

    version, products, photos = verifying_version
    plain = _plain_top(version, photos, 8)  # 8 products < SHORTLIST: the whole catalog is the shortlist
    seen = {}

    def reverse(model, images, idx, cosine, catalog, *, grayscale=True, steps=40):
        seen.update(images=images, idx=idx, catalog=catalog, matte=model.matte)
        return idx.flip(1), cosine.flip(1)

    monkeypatch.setattr(verify, "shortlists_rerank", reverse)
    top = services.photos_topk_products(version=version, photo_ids=[p.pk for p in photos], k=3)
    for photo in photos:
        expected = plain[photo.pk][::-1][:3]
        assert [p for p, _ in top[photo.pk]] == [p for p, _ in expected]
        np.testing.assert_allclose([s for _, s in top[photo.pk]], [s for _, s in expected], atol=1e-6)
    assert seen["matte"] is not None and len(seen["images"]) == 3
    assert all(im.dtype == torch.uint8 and im.ndim == 3 for im in seen["images"])
    assert seen["catalog"].shape == (8, 2, S, S)  # each shortlisted product's silhouette, once
    assert seen["idx"].shape == (3, 8)


def test_a_photo_whose_image_cannot_be_read_keeps_the_cnns_order(verifying_version):
    from mlcore import services

    version, products, photos = verifying_version
    with open(photos[0].image.path, "wb") as fh:
        fh.write(b"not an image")
    plain = _plain_top(version, photos, 3)
    top = services.photos_topk_products(version=version, photo_ids=[p.pk for p in photos], k=3)
    assert [p for p, _ in top[photos[0].pk]] == [p for p, _ in plain[photos[0].pk]]
    cosine_of = {photo.pk: dict(_plain_top(version, [photo], 8)[photo.pk]) for photo in photos}
    for photo in photos[1:]:  # verified for real: 3 of the 8, each with its own cosine
        assert len(top[photo.pk]) == 3 and len({p for p, _ in top[photo.pk]}) == 3
        for product_id, score in top[photo.pk]:
            assert score == pytest.approx(cosine_of[photo.pk][product_id], abs=1e-6)


def _open_tasks(campaign, photos):
    from annotate.models import Task, TaskCandidate

    from ..factories import ProductFactory

    stale = [ProductFactory() for _ in range(3)]  # what an earlier model suggested
    tasks = []
    for n, photo in enumerate(photos):
        task = Task.objects.create(campaign=campaign, photo=photo, shuffle_key=n)
        for rank, product in enumerate(stale, start=1):
            TaskCandidate.objects.create(task=task, product=product, rank=rank, score=0.5)
        tasks.append(task)
    return tasks


def test_open_tasks_re_suggested_by_a_verifying_cnn_get_its_re_ranked_order(verifying_version, monkeypatch):
    """What a promotion runs (annotate.learning.backbone_apply → matching_apply) suggests what new
    tasks get: the CNN's shortlist re-ranked by verification (here reversed by a stand-in), each
    candidate with its own cosine. Before, the re-suggestion took the CNN's cosine order unverified."""
    from annotate import learning

    from ..factories import CampaignFactory

    version, products, photos = verifying_version
    campaign = CampaignFactory(model_version=version)
    tasks = _open_tasks(campaign, photos)
    plain = _plain_top(version, photos, 8)
    monkeypatch.setattr(
        verify, "shortlists_rerank", lambda model, images, idx, cosine, catalog, **kw: (idx.flip(1), cosine.flip(1))
    )
    counts = learning.matching_apply(campaign=campaign, version=version)
    assert counts == {"tasks": 3, "resuggested": 3, "withheld": 0, "restored": 0}
    for task in tasks:
        rows = list(task.candidates.order_by("rank").values_list("product_id", "score"))
        expected = plain[task.photo_id][::-1][:3]
        assert [p for p, _ in rows] == [p for p, _ in expected]
        np.testing.assert_allclose([s for _, s in rows], [s for _, s in expected], atol=1e-6)


def test_open_tasks_whose_photo_the_cnns_rejection_model_turns_down_are_withheld(verifying_version, tmp_path):
    """photos_suggest reads P(in catalog) from the CNN's sorted top-10 cosines: with a rejection model
    P = sigmoid(top-1 cosine) and its threshold between the photos' values, the photos below it get no
    suggestion and their tasks are withheld by the CNN; the others get 3 candidates."""
    from annotate import learning
    from mlcore import services

    from ..factories import CampaignFactory

    version, products, photos = verifying_version
    model, config, _, _ = mc.match_cnn_load(version.weights_path)
    top1 = {pk: rows[0][1] for pk, rows in _plain_top(version, photos, 1).items()}
    cut = sorted(top1.values())[1]  # the lowest photo falls below it, the two others do not
    rejection = mc.Rejection(
        weights=[1.0, 0.0, 0.0], bias=0.0, mean=[0.0] * 3, std=[1.0] * 3, threshold=1 / (1 + math.exp(-cut)) - 1e-6
    )
    mc.match_cnn_save(model, config, version.weights_path, rejection=rejection)
    services._model_cache.clear()
    suggested = services.photos_suggest(version=version, photo_ids=[p.pk for p in photos], k=3)
    low = min(top1, key=top1.get)
    assert suggested[low] is None
    assert all(len(suggested[p.pk]) == 3 for p in photos if p.pk != low)
    campaign = CampaignFactory(model_version=version)
    tasks = _open_tasks(campaign, photos)
    assert learning.matching_apply(campaign=campaign, version=version)["withheld"] == 1
    for task in tasks:
        task.refresh_from_db()
        if task.photo_id == low:
            assert task.suggestions_withheld_by == version and not task.candidates.exists()
        else:
            assert task.suggestions_withheld_by is None and task.candidates.count() == 3
    # a campaign's new tasks, built under the CNN, are withheld the same way (each once: idempotent)
    from annotate.models import Task
    from annotate.services import campaign_tasks_build

    fresh = CampaignFactory(slug="new-photos", model_version=version, candidate_count=3)
    assert campaign_tasks_build(campaign_id=fresh.pk) == 3 and campaign_tasks_build(campaign_id=fresh.pk) == 0
    for task in Task.objects.filter(campaign=fresh):
        if task.photo_id == low:
            assert task.suggestions_withheld_by == version and not task.candidates.exists()
        else:
            assert task.suggestions_withheld_by is None
            assert [c.product_id for c in task.candidates.order_by("rank")] == [p for p, _ in suggested[task.photo_id]]
