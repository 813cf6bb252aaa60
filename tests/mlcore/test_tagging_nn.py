"""The learning loop's pure pieces (mlcore.nn.tagging): the masked multitask loss, hierarchical
back-off, the auto-accept threshold on a hand-made calibration set, temperature scaling, late
fusion, and training that resumes from a checkpoint."""

import math

import numpy as np
import pytest
import torch

from mlcore.nn import tagging as nt


class TestMaskedMultitaskLoss:
    def test_hand_computed_value_with_soft_targets_and_a_masked_row(self):
        logits = {
            "color": torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, -5.0]]),
            "season": torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        }
        targets = {
            "color": torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]),
            "season": torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
        }
        masks = {"color": torch.tensor([True, True, False]), "season": torch.tensor([True, False, False])}
        loss = nt.masked_multitask_loss(logits, targets, masks)
        # color: row 0 -log(1/2); row 1 soft: -(0.5 log s(2) + 0.5 log s(-2)) with s the sigmoid; row 2 masked.
        row0 = math.log(2)
        row1 = -(0.5 * math.log(1 / (1 + math.exp(-2))) + 0.5 * math.log(1 / (1 + math.exp(2))))
        season = -math.log(math.e / (math.e + 2))
        assert float(loss) == pytest.approx((row0 + row1) / 2 + season, rel=1e-6)

    def test_a_masked_row_changes_nothing_and_gets_no_gradient(self):
        z = torch.tensor([[0.3, -0.2], [9.0, -9.0]], requires_grad=True)
        targets = {"a": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
        loss = nt.masked_multitask_loss({"a": z}, targets, {"a": torch.tensor([True, False])})
        loss.backward()
        assert z.grad[1].abs().sum() == 0 and z.grad[0].abs().sum() > 0
        alone = nt.masked_multitask_loss({"a": z[:1]}, {"a": targets["a"][:1]}, {"a": torch.tensor([True])})
        assert loss.item() == pytest.approx(alone.item())

    def test_an_attribute_without_labels_adds_nothing(self):
        z = torch.zeros(2, 3, requires_grad=True)
        loss = nt.masked_multitask_loss({"a": z}, {"a": torch.zeros(2, 3)}, {"a": torch.tensor([False, False])})
        assert loss.item() == 0.0
        loss.backward()  # still a graph: a batch with no labels does not crash training
        assert z.grad.abs().sum() == 0


class TestHierarchicalBackoff:
    LEAVES = ["Shoes › Sandal", "Shoes › Sneaker", "Shoes › Ankle boot", "Bags › Bag"]

    def test_a_sure_leaf_is_kept(self):
        assert nt.hierarchical_backoff(np.array([0.95, 0.03, 0.01, 0.01]), self.LEAVES, threshold=0.9) == (
            "Shoes › Sandal",
            pytest.approx(0.95),
        )

    def test_an_unsure_leaf_backs_off_to_the_deepest_confident_ancestor(self):
        path, p = nt.hierarchical_backoff(np.array([0.55, 0.3, 0.12, 0.03]), self.LEAVES, threshold=0.9)
        assert path == "Shoes" and p == pytest.approx(0.97)

    def test_nothing_confident_returns_the_likeliest_root(self):
        path, p = nt.hierarchical_backoff(np.array([0.3, 0.1, 0.1, 0.5]), self.LEAVES, threshold=0.9)
        assert path == "Shoes" and p == pytest.approx(0.5)
        with pytest.raises(ValueError):
            nt.hierarchical_backoff(np.array([1.0]), self.LEAVES, threshold=0.9)

    def test_deeper_levels(self):
        leaves = ["Clothing › Tops › Shirt", "Clothing › Tops › T-shirt", "Clothing › Bottoms › Trouser"]
        path, p = nt.hierarchical_backoff(np.array([0.5, 0.45, 0.05]), leaves, threshold=0.9)
        assert path == "Clothing › Tops" and p == pytest.approx(0.95)


class TestThresholdForPrecision:
    def test_hand_made_calibration_set_point_estimate(self):
        # Sorted by confidence: 10 right at 0.99..0.90, then a wrong one at 0.85, then 4 right, 1 wrong.
        confidence = np.array(
            [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.90, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4]
        )
        correct = np.array([1] * 10 + [0] + [1] * 4 + [0], dtype=bool)
        choice = nt.threshold_for_precision(confidence, correct, target=0.9, min_accepted=5, bound="point")
        # At 0.5: 14 of 15 = 0.933 >= 0.9 (the lowest qualifying); at 0.4: 14 of 16 = 0.875.
        assert choice.threshold == 0.5 and choice.accepted == 15 and choice.correct == 14
        assert choice.coverage == pytest.approx(15 / 16) and choice.precision == pytest.approx(14 / 15)
        strict = nt.threshold_for_precision(confidence, correct, target=0.95, min_accepted=5, bound="point")
        assert strict.threshold == 0.90 and strict.accepted == 10 and strict.precision == 1.0

    def test_the_wilson_bound_wants_more_evidence(self):
        confidence = np.linspace(1.0, 0.5, 200)
        correct = np.ones(200, dtype=bool)
        correct[150] = False
        loose = nt.threshold_for_precision(confidence, correct, target=0.98, min_accepted=10, bound="point")
        tight = nt.threshold_for_precision(confidence, correct, target=0.98, min_accepted=10, bound="wilson")
        # The point estimate takes all 200 (199/200 = 0.995); Wilson's lower bound of 150/150 is
        # 0.975 and of 199/200 0.972: under 0.98, so nothing qualifies.
        assert loose.accepted == 200 and math.isinf(tight.threshold) and tight.accepted == 0
        low, high = nt.wilson_interval(199, 200)
        assert low == pytest.approx(0.97225, abs=1e-4) and high == pytest.approx(0.99912, abs=1e-4)
        assert tight.to_dict()["threshold"] is None

    def test_ties_enter_together_and_bad_input_raises(self):
        choice = nt.threshold_for_precision(
            np.array([0.9, 0.9, 0.8]), np.array([True, False, True]), target=0.6, min_accepted=1, bound="point"
        )
        assert choice.accepted == 3 and choice.threshold == 0.8  # 0.9 alone would be 1 of 2
        with pytest.raises(ValueError):
            nt.threshold_for_precision(np.array([0.5]), np.array([True, False]))
        with pytest.raises(ValueError):
            nt.threshold_for_precision(np.array([0.5]), np.array([True]), target=1.5)


def test_temperature_scaling_softens_an_overconfident_model():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    # Right 70% of the time, but with logits saying ~99%.
    predicted = np.where(rng.random(600) < 0.7, labels, (labels + 1) % 3)
    logits = np.full((600, 3), -3.0)
    logits[np.arange(600), predicted] = 3.0
    t = nt.temperature_fit(logits, labels)
    assert t > 1.5
    confidence = np.exp(nt.log_softmax_np(logits / t)).max(axis=1)
    assert confidence.mean() == pytest.approx(0.7, abs=0.03)
    assert nt.temperature_fit(np.zeros((0, 3)), np.zeros(0, dtype=np.int64)) == 1.0


def test_late_fusion_leans_on_the_better_model():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 800)
    good = np.full((800, 4), np.log(0.02))
    good[np.arange(800), labels] = np.log(0.94)
    noise = nt.log_softmax_np(rng.normal(size=(800, 4)))
    fusion = nt.late_fusion_fit(noise, good, labels)
    assert fusion.w_text > 3 * abs(fusion.w_image)
    fused = fusion.apply(noise, good)
    assert (fused.argmax(1) == labels).mean() > 0.99


class TestHeadsTrain:
    def _data(self, n=300, seed=0):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 3, n)
        centres = rng.normal(size=(3, 16)) * 3
        x = (centres[y] + rng.normal(size=(n, 16))).astype(np.float32)
        z = rng.integers(0, 2, n)
        x[:, 0] += np.where(z == 1, 4.0, -4.0)
        targets = {"a": np.eye(3, dtype=np.float32)[y], "b": np.eye(2, dtype=np.float32)[z]}
        masks = {"a": np.ones(n, bool), "b": rng.random(n) < 0.5}  # half the rows lack "b"
        return x, targets, masks, y, z

    def test_learns_both_heads_with_missing_labels(self):
        x, targets, masks, y, z = self._data()
        config = nt.HeadsConfig(hidden_dim=32, epochs=15, batch_size=64, lr=1e-2)
        model, history = nt.heads_train(x, targets, masks, config=config, val=(x, targets, masks))
        assert len(history) == 15 and history[-1].train_loss < history[0].train_loss
        proba = nt.heads_log_proba(model, x)
        assert (proba["a"].argmax(1) == y).mean() > 0.95 and (proba["b"].argmax(1) == z).mean() > 0.95

    def test_a_run_resumed_from_its_checkpoint_ends_where_an_uninterrupted_run_does(self):
        x, targets, masks, *_ = self._data(n=120)
        config = nt.HeadsConfig(hidden_dim=16, epochs=6, batch_size=32, dropout=0.0)
        whole, _ = nt.heads_train(x, targets, masks, config=config)
        saved = {}

        def keep(result, checkpoint):
            if result.epoch == 3:
                saved.update(checkpoint)

        nt.heads_train(x, targets, masks, config=nt.HeadsConfig(**{**config.to_dict()}), on_epoch=keep)
        resumed, history = nt.heads_train(x, targets, masks, config=config, state=saved)
        assert [r.epoch for r in history] == [4, 5, 6]
        for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
            assert torch.allclose(a, b, atol=1e-6)

    def test_bad_input_raises(self):
        x, targets, masks, *_ = self._data(n=20)
        with pytest.raises(ValueError, match="one row per embedding"):
            nt.heads_train(x[:10], targets, masks, config=nt.HeadsConfig(epochs=1))
        with pytest.raises(ValueError, match="no row has a label"):
            nt.heads_train(x, targets, {k: np.zeros(20, bool) for k in masks}, config=nt.HeadsConfig(epochs=1))


class TestBinaryRelevance:
    def test_a_multi_choice_attribute_becomes_one_yes_no_head_per_option_in_place(self):
        values = {"color": ["red", "blue"], "season": ["spring", "summer"], "persona_x": ["1", "2"]}
        heads = nt.binary_relevance_values(values, ["season"])
        assert list(heads) == ["color", "season:spring", "season:summer", "persona_x"]
        assert heads["season:summer"] == ["no", "yes"] and heads["color"] == ["red", "blue"]
        assert nt.binary_relevance_values(values, []) == values

    def test_option_targets_from_the_consensus_posterior_or_one_hot_from_the_label(self):
        options = ["spring", "summer", "autumn"]
        # Consensus: P(selected) per option, e.g. one vote for summer under the Jeffreys prior: 0.75.
        soft = nt.option_targets(options, label="summer", posterior={"spring": 0.25, "summer": 0.75, "autumn": 0.25})
        assert soft.tolist() == [[0.75, 0.25], [0.25, 0.75], [0.75, 0.25]]
        # Gold (no posterior): one-hot from the label; "" selects nothing.
        assert nt.option_targets(options, label="spring|autumn", posterior=None).tolist() == [[0, 1], [1, 0], [0, 1]]
        assert nt.option_targets(options, label="", posterior={}).tolist() == [[1, 0], [1, 0], [1, 0]]

    def test_the_set_is_accepted_only_when_every_option_clears_its_own_threshold(self):
        p_yes = np.array([0.9, 0.2, 0.6])
        selected, confidence, accept = nt.multi_choice_decision(p_yes, [0.85, 0.75, 0.55])
        assert selected.tolist() == [True, False, True]
        assert confidence.tolist() == pytest.approx([0.9, 0.8, 0.6]) and accept
        assert not nt.multi_choice_decision(p_yes, [0.85, 0.75, 0.65])[2]  # the third option is below its own
        assert not nt.multi_choice_decision(p_yes, [0.85, None, 0.55])[2]  # an option with no threshold
        assert not nt.multi_choice_decision(np.array([]), [])[2]
