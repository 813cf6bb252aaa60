"""mlcore.nn: backbones, transforms, batched embedding and exact top-k search (no Django)."""

import numpy as np
import pytest
import torch
from PIL import Image

from mlcore.nn.backbones import BACKBONES, BackboneError, backbone_build
from mlcore.nn.data import eval_transform
from mlcore.nn.infer import ExactIndex, device_resolve, embed_images


def test_tiny_cnn_embeds_to_its_dimension():
    model, spec = backbone_build("tiny_cnn")
    out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, spec.embedding_dim) == (2, 32)


def test_efficientnet_lite0_loads_the_packaged_imagenet_weights():
    model, spec = backbone_build("efficientnet_lite0")
    assert spec.embedding_dim == 1280
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 1280)
    # Pretrained, not random: the stem's batch-norm statistics were learned on ImageNet.
    stem_bn = model.features.net._bn0
    assert not torch.allclose(stem_bn.running_var, torch.ones_like(stem_bn.running_var))


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(BackboneError, match="unknown backbone 'vgg99'"):
        backbone_build("vgg99")


def test_torchvision_backbone_rejects_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"nonsense": torch.zeros(1)}, path)
    with pytest.raises(BackboneError, match="does not fit resnet18"):
        backbone_build("resnet18", weights_path=str(path))


def test_registry_lists_the_default_and_torchvision_architectures():
    assert {"efficientnet_lite0", "resnet18", "resnet50", "convnext_tiny", "tiny_cnn"} <= set(BACKBONES)


def test_eval_transform_makes_a_normalised_square_rgb_tensor():
    transform = eval_transform(image_size_px=40, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    gray = Image.fromarray(np.full((28, 50), 255, np.uint8), mode="L")
    x = transform(gray)
    assert x.shape == (3, 40, 40) and x.dtype == torch.float32
    assert torch.allclose(x, torch.ones_like(x), atol=1e-3)  # white → (1 - 0.5) / 0.5


def test_the_batched_eval_transform_equals_the_one_image_transform_bit_for_bit():
    transform = eval_transform(image_size_px=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    rng = np.random.default_rng(1)
    images = [
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), mode="L"),  # grey, catalog size
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)),  # a photo
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), mode="L"),
        Image.fromarray(rng.integers(0, 255, (40, 70, 4), dtype=np.uint8), mode="RGBA"),  # wide, with alpha
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)),
    ]
    batched = transform.batch(images)
    assert batched.shape == (5, 3, 32, 32) and batched.dtype == torch.float32
    assert torch.equal(batched, torch.stack([transform(image) for image in images]))
    assert transform.batch([]).shape == (0, 3, 32, 32)


def test_embed_images_batches_and_l2_normalises():
    model, spec = backbone_build("tiny_cnn")
    transform = eval_transform(image_size_px=32, mean=spec.mean, std=spec.std)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)) for _ in range(5)]
    vectors = embed_images(model, images, transform=transform, batch_size=2, device=torch.device("cpu"))
    assert vectors.shape == (5, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # Batching does not change the result, nor does transforming a batch at once.
    one_batch = embed_images(model, images, transform=transform, batch_size=8, device=torch.device("cpu"))
    np.testing.assert_allclose(vectors, one_batch, atol=1e-5)
    one_by_one = embed_images(model, images, transform=transform.__call__, batch_size=2, device=torch.device("cpu"))
    np.testing.assert_array_equal(vectors, one_by_one)


def test_exact_index_returns_the_hand_computed_top_k():
    vectors = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    index = ExactIndex(np.array([10, 20, 30]), vectors)
    ids, scores = index.search(np.array([[0.8, 0.6]], np.float32), k=2)
    # cosines: id10 0.8, id20 0.6, id30 0.48 + 0.48 = 0.96
    assert ids.tolist() == [[30, 10]]
    np.testing.assert_allclose(scores, [[0.96, 0.8]], rtol=1e-6)


def test_exact_index_with_fewer_items_than_k():
    index = ExactIndex(np.array([1]), np.array([[1.0, 0.0]], np.float32))
    ids, scores = index.search(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), k=3)
    assert ids.shape == (2, 1) and ids[:, 0].tolist() == [1, 1]


def test_exact_index_rejects_mismatched_ids():
    with pytest.raises(ValueError):
        ExactIndex(np.array([1, 2]), np.zeros((3, 4), np.float32))


def test_device_resolve():
    assert device_resolve("cpu").type == "cpu"
    assert device_resolve("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            device_resolve("cuda")


def test_cpu_threads_gives_the_cores_other_processes_left_idle(monkeypatch):
    from mlcore.nn import infer

    # (monotonic s, CPU s busy machine-wide, CPU s of this process), read at construction then per call.
    samples = iter(
        [
            (0.0, 0.0, 0.0),
            (1.0, 1.8, 1.0),  # others kept 0.8 of a core busy: round(2 - 0.8) = 1
            (1.05, 1.9, 1.1),  # 0.05 s later: too short to measure, the last choice stands
            (2.0, 2.9, 1.9),  # others 0.1 core since the last reading: both cores
            (3.0, 4.9, 2.9),  # others a whole core: 1
            (4.0, 5.2, 3.2),  # this process alone: max_threads
        ]
    )
    monkeypatch.setattr(infer, "_cpu_sample", lambda: next(samples))
    monkeypatch.setattr(infer.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    threads = infer.CpuThreads(max_threads=2)
    assert [threads(), threads(), threads(), threads(), threads()] == [1, 1, 2, 1, 2]


def test_cpu_threads_keeps_max_threads_without_proc_stat(monkeypatch):
    from mlcore.nn import infer

    monkeypatch.setattr(infer, "_cpu_sample", lambda: None)
    assert infer.CpuThreads(max_threads=3)() == 3


def test_cpu_sample_reads_the_machine_and_this_process():
    from mlcore.nn import infer

    sample = infer._cpu_sample()
    if sample is None:
        pytest.skip("no /proc/stat on this system")
    wall, busy, own = sample
    assert busy >= own >= 0 and wall > 0
