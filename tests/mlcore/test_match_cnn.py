"""The trainable matching CNN (mlcore.nn.match_cnn, mlcore.nn.views): losses by hand, tiny training
runs on the CPU, bit-identical resume, checkpoints, bad input, and independence from the demo's
photo generator. Accuracy is measured by bench/match_recall.py --train, not here."""

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mlcore.nn import match_cnn as mc
from mlcore.nn.views import CatalogViews, eval_batch

ROOT = Path(__file__).resolve().parents[2]
TINY = mc.MatchCNNConfig(
    image_size_px=16, width=8, embedding_dim=16, epochs=2, batch_size=8, workers=0, photo_batch_size=4
)


def _catalog(n=24, seed=0):
    """n distinct products: bright random blobs on black, 20×20, with 3 categories."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, 20, 20), np.uint8)
    for i in range(n):
        h, w = rng.integers(8, 16, size=2)
        top, left = rng.integers(0, 20 - h), rng.integers(0, 20 - w)
        images[i, 0, top : top + h, left : left + w] = rng.integers(60, 255, size=(h, w))
    mask = torch.zeros(n, 3, dtype=torch.bool)
    mask[torch.arange(n), torch.arange(n) % 3] = True
    return torch.from_numpy(images), mask


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_partial_label_loss_is_minus_log_of_the_allowed_probability_mass():
    logits = torch.tensor([[0.0, math.log(2.0), math.log(3.0)]])  # softmax = 1/6, 2/6, 3/6
    mask = torch.tensor([[True, False, True]])
    assert mc._partial_label_loss(logits, mask).item() == pytest.approx(-math.log(4 / 6))
    one = torch.tensor([[False, True, False]])
    assert mc._partial_label_loss(logits, one).item() == pytest.approx(-math.log(2 / 6))


def test_conformal_threshold_is_the_floor_alpha_n_plus_1_th_smallest_score():
    scores = torch.arange(1, 20, dtype=torch.float32) / 20  # n = 19: j = floor(0.1 * 20) = 2
    assert mc.conformal_threshold(scores, max_rejection=0.1) == pytest.approx(0.10)
    assert mc.conformal_threshold(scores[:5], max_rejection=0.1) is None  # floor(0.6) = 0: reject nothing


def test_ranking_features_are_top1_the_gap_to_top2_and_to_the_mean_of_the_rest():
    scores = torch.tensor([[0.9, 0.5, 0.3, 0.1]])
    assert mc.ranking_features(scores)[0].tolist() == pytest.approx([0.9, 0.4, 0.9 - 0.3])


def test_rejection_fit_separates_in_catalog_from_not_in_catalog():
    generator = torch.Generator().manual_seed(0)
    inside = torch.randn(200, 3, generator=generator) * 0.05 + torch.tensor([0.9, 0.3, 0.4])
    outside = torch.randn(200, 3, generator=generator) * 0.05 + torch.tensor([0.6, 0.05, 0.1])
    model = mc.rejection_fit(torch.cat([inside, outside]), torch.cat([torch.ones(200), torch.zeros(200)]).bool())
    assert (model.probability(inside) > 0.5).float().mean() > 0.95
    assert (model.probability(outside) < 0.5).float().mean() > 0.95
    with pytest.raises(mc.MatchTrainingError, match="at least 2"):
        mc.rejection_fit(inside, torch.ones(200, dtype=torch.bool))


def test_views_are_reproducible_per_epoch_and_differ_across_epochs():
    products, _ = _catalog()
    views = CatalogViews(products, size_px=16, grayscale=True, seed=3)
    first = views.view_of(5)
    assert first.shape == (3, 16, 16) and first.dtype == torch.float32
    assert torch.equal(first, views.view_of(5))
    views.epoch = 1
    assert not torch.equal(first, views.view_of(5))
    clean, view, index = views[5]
    assert torch.equal(clean, eval_batch(products[5:6], 16, grayscale=True)[0]) and index == 5


def test_a_tiny_stage_1_run_trains_and_embeds_unit_vectors():
    products, mask = _catalog()
    trainer = mc.Trainer(mc.MatchData(products, mask), TINY, device=torch.device("cpu"))
    history = trainer.fit()
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["loss"]) and h["images_per_s"] > 0 for h in history)
    z = mc.images_embed(trainer.model, products, TINY, device=torch.device("cpu"))
    assert z.shape == (24, 16)
    assert torch.allclose(z.norm(dim=1), torch.ones(24), atol=1e-5)


def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    products, mask = _catalog()
    data = mc.MatchData(products, mask)
    config = replace(TINY, epochs=2)
    straight = mc.Trainer(data, config, device=torch.device("cpu"))
    straight.fit()

    interrupted = mc.Trainer(data, config, device=torch.device("cpu"))
    interrupted.train_one_epoch()
    torch.save(interrupted.state_dict(), tmp_path / "ckpt.pt")
    torch.manual_seed(12345)  # whatever the new process's RNG holds, the checkpoint restores it
    resumed = mc.Trainer(data, config, device=torch.device("cpu"))
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert resumed.epoch == 1
    resumed.fit()
    assert _state_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]

    other = mc.Trainer(data, replace(config, lr=0.5), device=torch.device("cpu"))
    with pytest.raises(mc.MatchTrainingError, match="another config"):
        other.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))


def test_stage_2_learns_from_matches_hard_negatives_and_rejections():
    products, mask = _catalog()
    photos = products[:8].repeat(1, 3, 2, 2)  # (8, 3, 40, 40): 6 matches, 2 answered "none"
    photo_product = torch.tensor([0, 1, 2, 3, 4, 5, -1, -1])
    hard = torch.tensor([[6, 7]] * 6 + [[-1, -1]] * 2)
    data = mc.MatchData(products, mask, photos=photos, photo_product=photo_product, hard_negatives=hard)
    trainer = mc.Trainer(data, TINY, device=torch.device("cpu"), stage=2)
    before = trainer.model.dustbin.detach().clone()
    history = trainer.fit()
    assert all(h["photo_loss"] > 0 for h in history)
    assert not torch.equal(before, trainer.model.dustbin.detach())  # the no-match column trained
    rejection = mc.rejection_calibrate(trainer.model, data, TINY, device=torch.device("cpu"), count=24)
    assert len(rejection.weights) == 3 and rejection.threshold is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"products": torch.zeros(1, 1, 8, 8, dtype=torch.uint8)}, "at least 2"),
        ({"products": torch.zeros(4, 2, 8, 8, dtype=torch.uint8)}, "uint8"),
        ({"category_mask": torch.zeros(24, 3, dtype=torch.bool)}, "at least one possible leaf"),
        (
            {"photos": torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "photo_product": torch.tensor([0])},
            "one catalog index",
        ),
        ({"photos": torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "photo_product": torch.tensor([99])}, "outside"),
        (
            {
                "photos": torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
                "photo_product": torch.tensor([2]),
                "hard_negatives": torch.tensor([[2, 3]]),
            },
            "own product",
        ),
    ],
)
def test_bad_training_data_is_refused_with_the_argument_named(change, message):
    products, mask = _catalog()
    fields = {"products": products, "category_mask": mask, **change}
    if fields["products"] is not products and "category_mask" not in change:
        fields["category_mask"] = torch.ones(len(fields["products"]), 3, dtype=torch.bool)
    with pytest.raises(mc.MatchTrainingError, match=message):
        mc.Trainer(mc.MatchData(**fields), TINY, device=torch.device("cpu"))


def test_checkpoint_round_trip_gives_the_same_embeddings_and_a_bad_file_is_refused(tmp_path):
    products, mask = _catalog()
    trainer = mc.Trainer(mc.MatchData(products, mask), replace(TINY, epochs=1), device=torch.device("cpu"))
    trainer.fit()
    rejection = mc.Rejection([1.0, 0.0, 0.0], 0.0, [0.0] * 3, [1.0] * 3, threshold=0.4)
    sha = mc.match_cnn_save(trainer.model, trainer.config, tmp_path / "m.pt", rejection=rejection, extra={"a": 1})
    assert len(sha) == 64
    model, config, loaded_rejection, extra = mc.match_cnn_load(tmp_path / "m.pt")
    assert config == trainer.config and loaded_rejection == rejection and extra == {"a": 1}
    cpu = torch.device("cpu")
    assert torch.equal(
        mc.images_embed(model, products, config, device=cpu),
        mc.images_embed(trainer.model, products, config, device=cpu),
    )
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(mc.MatchTrainingError, match="not a readable checkpoint"):
        mc.match_cnn_load(tmp_path / "bad.pt")


def test_stage_1_never_reads_the_demo_photo_generator():
    """Train stage 1, the localiser and the matte with catalog.demo_data and catalog.fashion_mnist made
    unimportable (None in sys.modules): the training side must not need the demo's generator at all."""
    script = """
import sys
for name in ("catalog.demo_data", "catalog.fashion_mnist", "catalog.images"):
    sys.modules[name] = None
import torch
from mlcore.nn import match_cnn as mc
images = (torch.rand(12, 1, 20, 20) * 255).to(torch.uint8)
mask = torch.ones(12, 2, dtype=torch.bool)
config = mc.MatchCNNConfig(image_size_px=16, width=8, embedding_dim=8, epochs=1, batch_size=4, workers=0)
trainer = mc.Trainer(mc.MatchData(images, mask), config, device=torch.device("cpu"))
trainer.fit()
from mlcore.nn import localise
localise.localiser_fit(images, localise.LocaliserConfig(views=8, sets=1, echo=1, batch_size=4, width=8))
from mlcore.nn import verify
verify.matte_fit(images, verify.MatteConfig(views=8, sets=1, echo=1, batch_size=4, width=8))
verify.silhouettes(images)
loaded = [m for m, module in sys.modules.items() if m.startswith("catalog") and module is not None]
assert not loaded, loaded
print("trained", len(trainer.history))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained 1" in result.stdout


def test_photo_views_repaint_reproducibly_and_keep_the_item_visible():
    products, _ = _catalog()
    views = CatalogViews(products, size_px=16, grayscale=True, seed=3, repaint=1.0, style="photo")
    plain = CatalogViews(products, size_px=16, grayscale=True, seed=3)
    first = views.view_of(5)
    assert first.shape == (3, 16, 16) and torch.isfinite(first).all()
    assert torch.equal(first, views.view_of(5))  # the same (seed, epoch, index), the same view
    assert not torch.equal(first, plain.view_of(5))
    torch.manual_seed(0)
    painted, mask = views._repainted(5)
    assert painted.shape == (1, 16, 16) and mask.shape == (1, 16, 16)
    assert 0 <= float(painted.min()) and float(painted.max()) <= 1
    # The packshot's grey levels are gone: the repainted item is not a rescaling of the original.
    original = views.images[5]
    inside = views.masks[5] > 0.5
    assert not torch.allclose(painted[inside], original[inside], atol=0.05)


def test_views_run_on_one_thread_and_give_the_thread_count_back():
    products, _ = _catalog()
    views = CatalogViews(products, size_px=16, grayscale=True, seed=3)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        counts = []
        original = views._background
        views._background = lambda index: (counts.append(torch.get_num_threads()), original(index))[1]
        views.view_of(1)
        assert counts == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_echoed_views_repeat_for_echo_epochs_and_a_resumed_run_is_bit_identical(tmp_path):
    products, mask = _catalog()
    data = mc.MatchData(products, mask)
    config = replace(TINY, epochs=3, echo=2)
    trainer = mc.Trainer(data, config, device=torch.device("cpu"))
    first = trainer._epoch_views()
    assert isinstance(first, mc.EchoViews) and len(first) == 24 and first.view_epoch == 0
    clean, view, index = first[5]
    assert clean.shape == view.shape == (3, 16, 16) and index == 5
    trainer.views.epoch = 0
    assert torch.allclose(view, trainer.views.view_of(5), atol=1e-2)  # the view CatalogViews draws, in float16
    trainer.train_one_epoch()
    assert trainer._epoch_views() is first  # epoch 1 trains on the same set
    trainer.train_one_epoch()
    third = trainer._epoch_views()
    assert third.view_epoch == 1 and not torch.equal(third.views, first.views)
    trainer.train_one_epoch()

    interrupted = mc.Trainer(data, config, device=torch.device("cpu"))
    interrupted.train_one_epoch()
    torch.save(interrupted.state_dict(), tmp_path / "ckpt.pt")
    resumed = mc.Trainer(data, config, device=torch.device("cpu"))
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    resumed.fit()  # epoch 1 redraws view set 0 in the new process
    assert _state_equal(trainer.model.state_dict(), resumed.model.state_dict())


def test_photo_crops_are_the_whole_photo_then_centre_and_corners_per_fraction():
    image = torch.arange(20 * 30, dtype=torch.uint8).view(1, 20, 30)
    crops = mc.photo_crops(image, (0.5,))
    assert len(crops) == 6 and torch.equal(crops[0], image)
    assert all(c.shape == (1, 10, 15) for c in crops[1:])
    assert torch.equal(crops[1], image[:, 5:15, 7:22])  # centre
    assert torch.equal(crops[2], image[:, :10, :15]) and torch.equal(crops[5], image[:, 10:, 15:])
    assert len(mc.photo_crops(image)) == 1 + 5 * len(mc.PHOTO_CROPS)


def test_photos_embed_is_the_normalised_mean_over_the_photo_and_its_crops():
    products, mask = _catalog()
    model = mc.matchnet_build(TINY, category_count=3)
    cpu = torch.device("cpu")
    photos = products[:3]
    z = mc.photos_embed(model, photos, TINY, device=cpu, fractions=(0.8,))
    by_hand = torch.stack(
        [
            torch.cat([mc.images_embed(model, v.contiguous()[None], TINY, device=cpu)
                       for v in mc.photo_crops(p, (0.8,))])
            .mean(dim=0)
            for p in photos
        ]
    )  # (3, D): each photo's 6 view embeddings, averaged
    assert torch.allclose(z, torch.nn.functional.normalize(by_hand, dim=1), atol=1e-5)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    sizes = mc.photos_embed(model, [products[0], torch.zeros(1, 31, 17, dtype=torch.uint8)], TINY, device=cpu)
    assert sizes.shape == (2, 16)  # photos of different sizes in one call
    assert mc.photos_embed(model, [], TINY, device=cpu).shape == (0, 16)


class _FixedMap(torch.nn.Module):
    """A stand-in localiser that always answers the same (1, 1, 16, 16) logit map."""

    def __init__(self, on):
        super().__init__()
        self.width = 8
        logits = torch.full((1, 1, 16, 16), -9.0)
        logits[0, 0][on] = 9.0
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits.expand(len(x), -1, -1, -1)


def test_photo_boxes_span_the_main_region_grown_by_the_margin_and_squared():
    from mlcore.nn import localise

    on = torch.zeros(16, 16, dtype=torch.bool)
    on[4:8, 6:10] = True  # the product: cells rows 4-7, columns 6-9
    on[14, 0] = True  # a stray cell, not connected: left out
    photos = torch.zeros(2, 1, 64, 64, dtype=torch.uint8)
    boxes = localise.photo_boxes(_FixedMap(on), photos, margin=0.25)
    # cells of 4 px: rows 16-32, columns 24-40, side 16 grown by 2 × 25% = 24, centred on (24, 32)
    assert boxes.tolist() == [[12, 20, 24, 24]] * 2
    # a 96 × 128 photo is squared first (96 × 96 at column 16), cells of 6 px
    boxes = localise.photo_boxes(_FixedMap(on), [torch.zeros(1, 96, 128, dtype=torch.uint8)], margin=0.0)
    assert boxes.tolist() == [[24, 16 + 36, 24, 24]]
    # nothing found: the whole (squared) frame
    boxes = localise.photo_boxes(_FixedMap(torch.zeros(16, 16, dtype=torch.bool)), photos[:1])
    assert boxes.tolist() == [[0, 0, 64, 64]]
    image = torch.arange(64 * 64, dtype=torch.int64).view(1, 64, 64)
    crops = localise.photos_crop([image], torch.tensor([[12, 20, 24, 24]]))
    assert crops[0].shape == (1, 24, 24) and int(crops[0][0, 0, 0]) == 12 * 64 + 20


def test_a_localiser_trains_on_catalog_views_and_photos_are_embedded_from_its_crops(tmp_path):
    from mlcore.nn import localise

    products, mask = _catalog()
    config = localise.LocaliserConfig(views=48, sets=2, echo=2, batch_size=16, width=8)
    localiser, rows = localise.localiser_fit(products, config)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss"] < rows[0]["loss"]
    again, _ = localise.localiser_fit(products, config)
    assert _state_equal(localiser.state_dict(), again.state_dict())  # deterministic: a resumed run retrains it alike

    model = mc.matchnet_build(TINY, category_count=3)
    on = torch.zeros(16, 16, dtype=torch.bool)
    on[2:10, 4:12] = True
    model.localiser = _FixedMap(on)
    photos = torch.randint(0, 255, (3, 1, 40, 40), dtype=torch.uint8)
    cpu = torch.device("cpu")
    boxes = localise.photo_boxes(model.localiser, photos)
    # cells of 2.5 px: rows 5-25, columns 10-30, side 20 grown by 2 × 5% (localise.MARGIN) = 22 px
    assert boxes.tolist() == [[4, 9, 22, 22]] * 3
    assert torch.allclose(
        mc.photos_embed(model, photos, TINY, device=cpu),
        # one pass over the cut, no test-time crops of it
        mc.photos_embed(_without_localiser(model), [p[:, 4:26, 9:31] for p in photos], TINY, device=cpu, fractions=()),
    )
    cut = localise.photos_localised(model.localiser, photos, size_px=20)  # stage 2's photos
    assert cut.shape == (3, 1, 20, 20) and cut.dtype == torch.uint8
    assert torch.equal(cut[0], eval_like_resize(photos[0][:, 4:26, 9:31], 20))

    model.localiser = localiser
    mc.match_cnn_save(model, TINY, tmp_path / "m.pt")
    loaded, *_ = mc.match_cnn_load(tmp_path / "m.pt")
    assert loaded.localiser is not None
    assert torch.equal(
        mc.photos_embed(loaded, photos, TINY, device=cpu), mc.photos_embed(model, photos, TINY, device=cpu)
    )
    with pytest.raises(ValueError, match="at least one catalog image"):
        localise.localiser_fit(products[:0], config)


def _without_localiser(model):
    import copy

    bare = copy.deepcopy(model)
    bare.localiser = None
    return bare


def eval_like_resize(image: torch.Tensor, size_px: int) -> torch.Tensor:
    """uint8 (C, H, W) → uint8 (C, size_px, size_px), bilinear and antialiased, rounded."""
    x = torch.nn.functional.interpolate(image[None].float(), size=(size_px, size_px), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)[0]


def test_a_stop_request_interrupts_fit_between_steps_and_the_last_epoch_resumes_bit_identical(tmp_path):
    """should_stop is asked before every step: True in epoch 2 raises TrainingInterrupted with the
    trainer still at epoch 1, whose checkpoint (saved by on_epoch) resumes to the uninterrupted
    run's weights."""
    products, mask = _catalog()
    data = mc.MatchData(products, mask)
    config = replace(TINY, epochs=2)  # 24 products, batch 8: 3 steps an epoch
    straight = mc.Trainer(data, config, device=torch.device("cpu"))
    straight.fit()

    asked = []

    def should_stop():
        asked.append(len(asked))
        return len(asked) > 4  # steps 1-3 of epoch 1, step 1 of epoch 2, then stop

    def on_epoch(row, trainer):
        torch.save(trainer.state_dict(), tmp_path / "ckpt.pt")

    interrupted = mc.Trainer(data, config, device=torch.device("cpu"))
    with pytest.raises(mc.TrainingInterrupted, match="stopped in epoch 2 after 1 steps"):
        interrupted.fit(on_epoch=on_epoch, should_stop=should_stop)
    assert interrupted.epoch == 1 and len(asked) == 5
    resumed = mc.Trainer(data, config, device=torch.device("cpu"))
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    resumed.fit()
    assert _state_equal(straight.model.state_dict(), resumed.model.state_dict())


def test_drawing_echoed_views_stops_between_batches_when_asked():
    products, mask = _catalog(n=100)  # two batches of 64
    views = CatalogViews(products, size_px=16, grayscale=True, seed=0)
    answers = iter([False, True])
    with pytest.raises(mc.TrainingInterrupted, match="after 64 of 100"):
        mc.EchoViews.draw(views, 0, workers=0, should_stop=lambda: next(answers))


class _SignalsItself(torch.utils.data.Dataset):
    """Each item sends the process that loads it SIGTERM and SIGINT, as `make demo`'s stop signals a
    worker's whole process group."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        return torch.tensor([index])


def test_dataloader_workers_outlive_the_stop_signal_sent_to_their_process_group():
    """Without _loader_worker_init the first SIGTERM kills the worker and iterating raises
    "DataLoader worker ... exited unexpectedly" (what failed the demo's training run on Ctrl-C)."""
    loader = mc._loader(_SignalsItself(), batch_size=1, workers=1, seed=0, epoch=0, drop_last=False)
    assert sorted(int(batch) for batch in loader) == [0, 1, 2, 3]
    bare = torch.utils.data.DataLoader(_SignalsItself(), batch_size=1, num_workers=1)
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        list(bare)


class _Numbers(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.tensor([index])


def test_a_stop_signal_that_reaches_a_dataloader_worker_before_its_init_is_discarded(monkeypatch):
    """A worker is forked with SIGINT and SIGTERM blocked (_iterate): a SIGTERM that arrives while it
    starts up waits, and _loader_worker_init discards it. Here the start-up window is widened to 1 s
    and the worker is sent SIGTERM inside it; with a plain iter() the worker dies (PyTorch's handler
    re-raises it) and iterating raises "DataLoader worker ... exited unexpectedly"."""
    import os
    import signal
    import time

    real = mc._loader_worker_init

    def slow_init(worker_id):
        time.sleep(1.0)
        real(worker_id)

    monkeypatch.setattr(mc, "_loader_worker_init", slow_init)
    batches = mc._iterate(mc._loader(_Numbers(), batch_size=1, workers=1, seed=0, epoch=0, drop_last=False))
    time.sleep(0.3)
    os.kill(batches._workers[0].pid, signal.SIGTERM)
    assert sorted(int(batch) for batch in batches) == [0, 1, 2, 3]
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # unblocked here again
