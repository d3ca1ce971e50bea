import json
import os
from pathlib import Path

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


def _decode_by_hand(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a class-per-sub-folder tree, decoded one by one: the reference for the cache."""
    files = sorted(folder.rglob("*.png"))
    names = sorted({f.parent.name for f in files})
    images = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    return images.permute(0, 3, 1, 2), torch.tensor([names.index(f.parent.name) for f in files])


@pytest.mark.parametrize("parallel", [False, True])
def test_folder_cache_round_trips_and_maps(tmp_path, monkeypatch, parallel):
    from vqgen import foldercache
    from vqgen.data import MappedImages, Split, held_out_by_name

    if parallel:  # the worker-process path, on a folder small enough for a test
        monkeypatch.setattr(foldercache, "PARALLEL_FROM", 2)
        monkeypatch.setattr(foldercache, "CHUNK", 2)
    _write_folder(tmp_path / "imgs", sizes=((12, 12),) * 5)
    root = tmp_path / "root"
    data = load_data(str(tmp_path / "imgs"), root)
    images, labels = _decode_by_hand(tmp_path / "imgs")
    names = [f.relative_to(tmp_path / "imgs").as_posix() for f in sorted((tmp_path / "imgs").rglob("*.png"))]
    held = held_out_by_name(names)
    want_train, want_test = Split(images[~held], labels[~held]), Split(images[held], labels[held])
    assert data.held_out == [n for n, h in zip(names, held.tolist(), strict=True) if h]
    for got, want in ((data.train, want_train), (data.test, want_test)):
        assert isinstance(got.images, MappedImages) and isinstance(got.images.array, np.memmap)
        assert torch.equal(got.images[:], want.images) and torch.equal(got.labels, want.labels)
        backwards = torch.arange(len(want.images)).flip(0)
        assert torch.equal(got.images[backwards], want.images[backwards])  # rows come back in the order asked
        assert torch.equal(got.images[0], want.images[0])
    # other decoding options get a cache of their own, beside the first
    small = load_data(str(tmp_path / "imgs"), root, image_size=8)
    assert small.train.images[:].shape[1:] == (3, 8, 8)
    assert len(list((root / "cache").glob("imgs-*/images.npy"))) == 2

    # a second run maps the cache and decodes nothing
    monkeypatch.setattr(foldercache, "_decode_chunk", lambda *a, **k: pytest.fail("decoded again"))
    again = load_data(str(tmp_path / "imgs"), root)
    assert torch.equal(again.train.images[:], data.train.images[:])
    assert not list(root.rglob("*.partial"))


def test_folder_cache_is_rebuilt_when_a_file_changes_and_skips_a_truncated_image(tmp_path):
    import os

    _write_folder(tmp_path / "imgs")
    root = tmp_path / "root"
    before = load_data(str(tmp_path / "imgs"), root, seed=1)
    changed = tmp_path / "imgs" / "dogs" / "1.png"
    Image.fromarray(np.full((12, 12, 3), 7, dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # a new modification time, whatever the clock's resolution
    after = load_data(str(tmp_path / "imgs"), root, seed=1)
    images, labels = _decode_by_hand(tmp_path / "imgs")
    everything = torch.cat([after.train.images[:], after.test.images[:]])
    assert (everything == 7).all(dim=(1, 2, 3)).sum() == 1
    assert not torch.equal(torch.cat([before.train.images[:], before.test.images[:]]), everything)

    whole = (tmp_path / "imgs" / "cats" / "0.png").read_bytes()
    (tmp_path / "imgs" / "cats" / "0.png").write_bytes(whole[: len(whole) // 2])
    truncated = load_data(str(tmp_path / "imgs"), root)
    assert truncated.skipped == 1 and len(truncated.train) + len(truncated.test) == 5
    with pytest.raises(VQGenError, match="0.png"):
        load_data(str(tmp_path / "imgs"), root, strict=True)


PICKLED_HEADER = b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (6,), }" + b" " * 50


def _truncate(path, size=None):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if size is None else data[:size])


def _edit_index(**changes):
    def edit(where):
        index = json.loads((where / "index.json").read_text())
        (where / "index.json").write_text(json.dumps(index | changes))

    return edit


@pytest.mark.parametrize(
    "damage",
    [
        lambda where: _truncate(where / "images.npy"),  # mmap length is greater than file size
        lambda where: (where / "images.npy").write_bytes(
            b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (6,), }" + b" " * 50
        ),
        _edit_index(rows="abc"),
        _edit_index(rows=[0, 1, 999]),
        _edit_index(skipped=[[1]]),
        _edit_index(rows=[]),
        lambda where: (where / "index.json").write_text("[1, 2"),
    ],
    ids=[
        "truncated",
        "pickled-header",
        "rows-text",
        "rows-out-of-range",
        "skipped-malformed",
        "rows-empty",
        "bad-json",
    ],
)
def test_a_damaged_folder_cache_is_rebuilt(tmp_path, damage):
    _write_folder(tmp_path / "imgs")
    root = tmp_path / "root"
    first = load_data(str(tmp_path / "imgs"), root)
    images, labels = first.train.images[:].clone(), first.train.labels.clone()  # in memory, not the mapped file
    del first
    (where,) = list((root / "cache").glob("imgs-*"))
    damage(where)
    again = load_data(str(tmp_path / "imgs"), root)
    assert torch.equal(again.train.images[:], images) and again.skipped == 0
    assert torch.equal(again.train.labels, labels)


def test_partials_of_a_killed_build_are_swept(tmp_path):
    _write_folder(tmp_path / "imgs")
    root = tmp_path / "root"
    load_data(str(tmp_path / "imgs"), root)
    (where,) = list((root / "cache").glob("imgs-*"))
    dead = where / "images.npy.999999999.partial"  # no process has this PID
    dead.write_bytes(b"x" * 100)
    alive = where / f"images.npy.{os.getppid()}.partial"  # a build still under way in a live process
    alive.write_bytes(b"x")
    load_data(str(tmp_path / "imgs"), root)
    assert not dead.exists() and alive.exists()


def test_folder_cache_without_a_writable_root_still_loads(tmp_path):
    _write_folder(tmp_path / "imgs")
    (tmp_path / "file").write_text("not a folder")
    data = load_data(str(tmp_path / "imgs"), tmp_path / "file")  # the cache cannot be created under a file
    images, _ = _decode_by_hand(tmp_path / "imgs")
    assert len(data.train) + len(data.test) == 6
    assert sorted(map(bytes, torch.cat([data.train.images[:], data.test.images[:]]).numpy())) == sorted(
        map(bytes, images.numpy())
    )


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VQGenError, match="no images found"):
        load_data(str(tmp_path / "empty"))
    _write_folder(tmp_path / "mixed", sizes=((12, 12), (16, 16)))
    with pytest.raises(VQGenError, match="image_size"):
        load_data(str(tmp_path / "mixed"))
    assert load_data(str(tmp_path / "mixed"), image_size=8).train.images.shape[2:] == (8, 8)
    with pytest.raises(VQGenError, match="neither a built-in"):
        load_data(str(tmp_path / "nope"))


def test_forward_batches_shrink_with_the_image_area():
    from vqgen.data import pixel_batch

    assert pixel_batch(500, torch.zeros(1, 3, 32, 32)) == 500  # MNIST, CIFAR-10 and shapes keep their batch
    assert pixel_batch(500, torch.zeros(1, 3, 28, 28)) == 500
    assert pixel_batch(500, torch.zeros(1, 3, 128, 128)) == 31
    assert pixel_batch(500, torch.zeros(1, 3, 1024, 1024)) == 1


def test_npz_and_npy(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (30, 16, 16), dtype=np.uint8)
    labels = np.arange(30) % 3
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    data = load_data(str(tmp_path / "d.npz"))
    assert data.num_classes == 3 and len(data.test) == 3 and data.train.images.shape[1:] == (1, 16, 16)
    np.save(tmp_path / "d.npy", images[..., None].repeat(3, -1))
    mapped = load_data(str(tmp_path / "d.npy"))
    assert mapped.train.images.shape[1:] == (3, 16, 16) and isinstance(mapped.train.images.array, np.memmap)
    rows = torch.cat([mapped.train.images[:], mapped.test.images[:]])[:, 0]
    assert sorted(map(bytes, rows.numpy())) == sorted(map(bytes, images))
    grey = load_data(str(tmp_path / "d.npy"), image_size=8, channels=1)
    assert grey.train.images[:4].shape == (4, 1, 8, 8)
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


def test_sixteen_bit_greys_are_scaled_and_exif_orientation_is_applied(tmp_path):
    from vqgen.foldercache import decode

    ramp = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0 … 65,535
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    grey = decode(tmp_path / "deep.png", None, None)[..., 0]
    assert grey.dtype == np.uint8 and len(np.unique(grey)) == 256 and (grey == 255).mean() < 0.01
    assert np.array_equal(grey, np.arange(256, dtype=np.uint8).reshape(16, 16))

    tall = np.zeros((8, 4, 3), np.uint8)
    tall[0, :] = 255  # a white top row
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it 90° clockwise
    Image.fromarray(tall).save(tmp_path / "turned.jpg", exif=exif, quality=100)
    shown = decode(tmp_path / "turned.jpg", "RGB", None)
    assert shown.shape == (4, 8, 3)  # width and height swapped, as a viewer shows it
    assert shown[:, -1].mean() > 200 and shown[:, 0].mean() < 50  # the white row is now the right-hand column
