import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.data import BatchOrder, convert_channels, generate_shapes, load_data, resize_crop
from vqgen.errors import VQGenError

from conftest import needs_shared


def test_shapes_are_deterministic_and_labelled():
    a, la = generate_shapes(40, seed=3)
    b, lb = generate_shapes(40, seed=3)
    c, _ = generate_shapes(40, seed=4)
    assert a.shape == (40, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)
    assert set(la.tolist()) <= {0, 1, 2, 3}
    # one white background, and every fill stands out from it
    assert (a[:, [0, 0, -1, -1], [0, -1, 0, -1]] == 255).all()
    lum = a.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert (lum.reshape(40, -1).max(1) - lum.reshape(40, -1).min(1) > 60).all()


def test_shapes_default_split_and_cache(data_root):
    data = load_data("shapes", data_root)
    assert (len(data.train), len(data.test)) == (20_000, 2_000)
    assert data.train.images.shape[1:] == (3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.num_classes == 4 and data.class_names == ["circle", "square", "triangle", "star"]
    assert list((data_root / "shapes").glob("*.npz"))
    again = load_data("shapes", data_root)
    assert torch.equal(again.test.images, data.test.images)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_sets_from_shared_root(name, folder):
    root = needs_shared(folder)
    data = load_data(name, root)
    assert (len(data.train), len(data.test)) == (60_000, 10_000)
    assert data.train.images.shape[1:] == (1, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.num_classes == 10 and int(data.train.labels.max()) == 9
    resized = load_data(name, root, image_size=32, channels=3)
    assert resized.test.images.shape[1:] == (3, 32, 32)


def test_missing_torchvision_set_says_where_to_put_files(tmp_path):
    with pytest.raises(VQGenError, match=r"MNIST/raw"):
        load_data("mnist", tmp_path)


def _write_folder(root, sizes=((12, 12),) * 3, classes=("cats", "dogs")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_folder_of_images_with_class_subfolders(tmp_path):
    _write_folder(tmp_path / "imgs")
    data = load_data(str(tmp_path / "imgs"))
    assert len(data.train) + len(data.test) == 6 and len(data.test) >= 1
    assert data.class_names == ["cats", "dogs"] and data.num_classes == 2
    assert data.train.images.shape[1:] == (3, 12, 12)
    assert sorted(torch.cat([data.train.labels, data.test.labels]).tolist()) == [0, 0, 0, 1, 1, 1]
    grey = load_data(str(tmp_path / "imgs"), image_size=8, channels=1)
    assert grey.train.images.shape[1:] == (1, 8, 8)


def test_folder_corrupt_image_skipped_or_strict(tmp_path):
    _write_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    data = load_data(str(tmp_path / "imgs"))
    assert data.skipped == 1 and len(data.train) + len(data.test) == 6
    with pytest.raises(VQGenError, match="broken.png"):
        load_data(str(tmp_path / "imgs"), strict=True)


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VQGenError, match="no images found"):
        load_data(str(tmp_path / "empty"))
    _write_folder(tmp_path / "mixed", sizes=((12, 12), (16, 16)))
    with pytest.raises(VQGenError, match="--image-size"):
        load_data(str(tmp_path / "mixed"))
    assert load_data(str(tmp_path / "mixed"), image_size=8).train.images.shape[2:] == (8, 8)
    with pytest.raises(VQGenError, match="neither a built-in"):
        load_data(str(tmp_path / "nope"))


def test_npz_and_npy(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (30, 16, 16), dtype=np.uint8)
    labels = np.arange(30) % 3
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    data = load_data(str(tmp_path / "d.npz"))
    assert data.num_classes == 3 and len(data.test) == 3 and data.train.images.shape[1:] == (1, 16, 16)
    np.save(tmp_path / "d.npy", images[..., None].repeat(3, -1))
    assert load_data(str(tmp_path / "d.npy")).train.images.shape[1:] == (3, 16, 16)
    np.savez(tmp_path / "bad.npz", pixels=images)
    with pytest.raises(VQGenError, match="no 'images' array"):
        load_data(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "float.npz", images=images.astype(np.float32))
    with pytest.raises(VQGenError, match="uint8"):
        load_data(str(tmp_path / "float.npz"))


def test_channel_conversion_and_resize():
    rgb = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    grey = convert_channels(rgb, 1)
    assert grey.shape == (2, 1, 4, 4) and int(grey[0, 0, 0, 0]) == round(0.299 * 255)
    assert convert_channels(grey, 3).shape == (2, 3, 4, 4)
    wide = torch.zeros(1, 1, 8, 16, dtype=torch.uint8)
    wide[..., 4:12] = 200  # the centre 8 columns survive the centre crop
    out = resize_crop(wide, 8)
    assert out.shape == (1, 1, 8, 8) and int(out.float().mean()) > 150


def test_batch_order_resumes_and_shards():
    order = BatchOrder(100, 32, seed=1)
    first = [order.next() for _ in range(5)]  # crosses an epoch boundary (3 batches per epoch)
    assert order.epoch == 1
    again = BatchOrder(100, 32, seed=1)
    for _ in range(2):
        again.next()
    resumed = BatchOrder(100, 32, seed=1)
    resumed.load_state_dict(again.state_dict())
    assert all(torch.equal(resumed.next(), b) for b in first[2:])
    assert len(torch.cat(first[:3]).unique()) == 96  # one epoch: no row twice
    ranks = [BatchOrder(100, 32, seed=1, rank=r, world_size=2) for r in range(2)]
    for b in first[:3]:
        assert torch.equal(torch.cat([r.next() for r in ranks]), b)
