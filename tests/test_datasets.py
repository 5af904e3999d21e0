"""Tests of skfastflow.datasets: load_mvtec and make_defect_images."""

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from skfastflow.datasets import load_mvtec, make_defect_images

DATASETS = Path(
    os.environ.get(
        "SKFASTFLOW_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"
    )
)
ALL_DEFECTS = ("scratch", "spot", "crack", "missing", "stain")


# --------------------------------------------------------------------------
# make_defect_images
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["texture", "object"])
def test_same_random_state_gives_same_data_set(kind):
    first = make_defect_images(12, image_size=48, kind=kind, random_state=7)
    second = make_defect_images(12, image_size=48, kind=kind, random_state=7)
    other = make_defect_images(12, image_size=48, kind=kind, random_state=8)
    for name in ("images", "target", "masks", "defect_type"):
        np.testing.assert_array_equal(first[name], second[name])
    assert not np.array_equal(first.images, other.images)


def test_random_state_instance_is_used_not_the_global_rng():
    np.random.seed(0)
    first = make_defect_images(6, image_size=32, random_state=np.random.RandomState(3))
    np.random.seed(1)
    second = make_defect_images(6, image_size=32, random_state=np.random.RandomState(3))
    np.testing.assert_array_equal(first.images, second.images)


@pytest.mark.parametrize("kind", ["texture", "object"])
@pytest.mark.parametrize("grey", [False, True])
def test_masks_are_exactly_the_pixels_the_defect_changed(kind, grey):
    # With defect_fraction=0 the same call renders every image defect-free.
    params = dict(image_size=(56, 64), kind=kind, grey=grey, random_state=0)
    clean = make_defect_images(30, defect_fraction=0.0, **params)
    data = make_defect_images(30, defect_fraction=0.6, **params)
    changed = data.images != clean.images
    if not grey:
        changed = changed.any(axis=-1)
    np.testing.assert_array_equal(changed, data.masks)
    assert not clean.masks.any()


@pytest.mark.parametrize("kind", ["texture", "object"])
def test_labels_masks_and_defect_types_agree(kind):
    data = make_defect_images(40, image_size=64, kind=kind, defect_fraction=0.75, random_state=1)
    good = data.defect_type == "good"
    np.testing.assert_array_equal(data.target, np.where(good, 1, -1))
    assert (data.target == -1).sum() == 30
    defect_area = data.masks.mean(axis=(1, 2))
    assert np.all(defect_area[good] == 0)
    # Visible, yet small: between 0.3 % and 6 % of the image.
    assert np.all((defect_area[~good] > 0.003) & (defect_area[~good] < 0.06))
    # The defective images are spread evenly over the defect kinds.
    names, counts = np.unique(data.defect_type[~good], return_counts=True)
    assert set(names) == set(ALL_DEFECTS)
    assert counts.max() - counts.min() <= 1


def test_object_defects_lie_on_the_part():
    params = dict(n_samples=20, image_size=64, kind="object", random_state=2)
    data = make_defect_images(defect_fraction=1.0, **params)
    clean = make_defect_images(defect_fraction=0.0, **params)
    # The dark table shows in the corners; the metal part is far brighter.
    table = clean.images[:, :4, :4].mean()
    brightness = clean.images.mean(axis=-1)
    for defect_type, mask, pixels in zip(data.defect_type, data.masks, brightness):
        if defect_type == "missing":
            # A piece bitten out of the rim: the part's anti-aliased edge goes too.
            assert pixels[mask].min() > table and pixels[mask].mean() > table + 60
        else:
            assert pixels[mask].min() > table + 60


def test_shapes_dtypes_and_defect_type_selection():
    data = make_defect_images(
        9, image_size=(40, 72), defect_types=("crack", "stain"), defect_fraction=1.0,
        grey=True, random_state=0,
    )
    assert data.images.shape == (9, 40, 72) and data.images.dtype == np.uint8
    assert data.masks.shape == (9, 40, 72) and data.masks.dtype == bool
    assert set(data.defect_type) == {"crack", "stain"}
    assert data.target.dtype.kind == "i"
    colour = make_defect_images(3, image_size=33, random_state=0)
    assert colour.images.shape == (3, 33, 33, 3)
    assert isinstance(colour.DESCR, str) and colour.DESCR


def _patch_knn_scores(train_images, test_images, size=8, stride=4):
    """Image score = largest distance of a test patch to its nearest training patch."""

    def patches(images):
        windows = sliding_window_view(images / 255.0, (size, size), axis=(1, 2))
        windows = windows[:, ::stride, ::stride]
        return windows.reshape(len(images), -1, windows[0, 0, 0].size)

    train, test = patches(train_images), patches(test_images)
    knn = NearestNeighbors(n_neighbors=1).fit(train.reshape(-1, train.shape[-1]))
    distances, _ = knn.kneighbors(test.reshape(-1, test.shape[-1]))
    return distances.reshape(len(test), -1).max(axis=1)


@pytest.mark.parametrize("kind", ["texture", "object"])
def test_defects_are_learnable_from_good_images_alone(kind):
    # A plain patch nearest-neighbour detector fitted on good images must
    # separate defective from good test images: the problem is learnable.
    params = dict(image_size=64, kind=kind, grey=True)
    train = make_defect_images(40, defect_fraction=0.0, random_state=0, **params)
    test = make_defect_images(40, defect_fraction=0.5, random_state=1, **params)
    scores = _patch_knn_scores(train.images, test.images)
    assert roc_auc_score(test.target == -1, scores) > 0.95


@pytest.mark.parametrize(
    "params, parameter",
    [
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": 2.5}, "n_samples"),
        ({"n_samples": True}, "n_samples"),
        ({"image_size": 15}, "image_size"),
        ({"image_size": (32, 32, 3)}, "image_size"),
        ({"image_size": "128"}, "image_size"),
        ({"image_size": (32.0, 32)}, "image_size"),
        ({"kind": "fabric"}, "kind"),
        ({"defect_fraction": 1.5}, "defect_fraction"),
        ({"defect_fraction": float("nan")}, "defect_fraction"),
        ({"defect_fraction": "half"}, "defect_fraction"),
        ({"defect_types": "scratch"}, "defect_types"),
        ({"defect_types": ()}, "defect_types"),
        ({"defect_types": ("scratch", "dent")}, "defect_types"),
        ({"defect_types": ("spot", "spot")}, "defect_types"),
        ({"defect_types": 3}, "defect_types"),
        ({"grey": "yes"}, "grey"),
    ],
)
def test_invalid_parameters_raise_value_error_naming_them(params, parameter):
    with pytest.raises(ValueError, match=parameter):
        make_defect_images(**params)


@settings(max_examples=30, deadline=None)
@given(
    n_samples=st.integers(max_value=0),
    image_size=st.integers(max_value=15),
    defect_fraction=st.floats().filter(lambda value: not 0 <= value <= 1),
    kind=st.text().filter(lambda value: value not in ("texture", "object")),
)
def test_out_of_range_parameters_are_refused(n_samples, image_size, defect_fraction, kind):
    for params, parameter in [
        ({"n_samples": n_samples}, "n_samples"),
        ({"image_size": image_size}, "image_size"),
        ({"image_size": (32, image_size)}, "image_size"),
        ({"defect_fraction": defect_fraction}, "defect_fraction"),
        ({"kind": kind}, "kind"),
    ]:
        with pytest.raises(ValueError, match=parameter):
            make_defect_images(**params)


@settings(max_examples=15, deadline=None)
@given(
    n_samples=st.integers(1, 6),
    height=st.integers(16, 40),
    width=st.integers(16, 40),
    defect_fraction=st.floats(0, 1),
    kind=st.sampled_from(["texture", "object"]),
    grey=st.booleans(),
)
def test_valid_parameters_give_consistent_data_sets(
    n_samples, height, width, defect_fraction, kind, grey
):
    data = make_defect_images(
        n_samples, image_size=(height, width), kind=kind, defect_fraction=defect_fraction,
        grey=grey, random_state=0,
    )
    expected_shape = (n_samples, height, width) if grey else (n_samples, height, width, 3)
    assert data.images.shape == expected_shape
    assert (data.target == -1).sum() == round(defect_fraction * n_samples)
    np.testing.assert_array_equal(data.masks.any(axis=(1, 2)), data.target == -1)


# --------------------------------------------------------------------------
# load_mvtec on a small tree with known contents
# --------------------------------------------------------------------------


def _save(path, pixels, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)
    image.save(path)
    return pixels


def _defect_mask(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


@pytest.fixture
def tiny_mvtec(tmp_path):
    """An MVTec-layout tree mixing formats, grey and colour, and sizes.

    Returns the root and the expected contents (lossless formats only; JPEG
    files are compared with their decoded pixels).
    """
    rng = np.random.default_rng(0)
    root = tmp_path / "part"
    grey = lambda h, w: rng.integers(0, 256, (h, w), dtype=np.uint8)  # noqa: E731
    colour = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731

    train = [
        _save(root / "train/good/a.png", grey(20, 30)),
        root / "train/good/b.JPG",
        _save(root / "train/good/c.bmp", colour(16, 20)),
        _save(root / "train/good/d.tiff", grey(18, 18)),
    ]
    _save(train[1], colour(24, 24))
    (root / "train/good/notes.txt").write_text("not an image")
    _save(root / "train/good/.hidden.png", grey(5, 5))
    test_good = _save(root / "test/good/g.tif", colour(12, 14))
    test_hole = _save(root / "test/hole/h.bmp", grey(8, 12))
    test_scratch = _save(root / "test/scratch/000.png", colour(32, 16))
    _save(root / "test/scratch/001.jpg", grey(10, 10))
    (root / "test/.cache").mkdir()

    masks = [
        np.zeros((12, 14), dtype=bool),
        _defect_mask((8, 12), slice(2, 4), slice(3, 9)),
        _defect_mask((32, 16), 5, slice(None)),
        _defect_mask((10, 10), slice(0, 2), 0),
    ]
    # Three ways masks are stored: 1-bit, 8-bit grey 0/255, RGB with a white defect.
    _save(root / "ground_truth/hole/h_mask.png", masks[1].astype(np.uint8) * 255, mode="1")
    _save(root / "ground_truth/scratch/000_mask.png", masks[2].astype(np.uint8) * 255)
    _save(root / "ground_truth/scratch/001_mask.png", masks[3].astype(np.uint8) * 255, "RGB")

    decoded = lambda path: np.asarray(Image.open(path))  # noqa: E731
    expected = {
        "X_train": [train[0], decoded(train[1]), train[2], train[3]],
        "X_test": [test_good, test_hole, test_scratch, decoded(root / "test/scratch/001.jpg")],
        "masks_test": masks,
        "y_test": [1, -1, -1, -1],
        "defect_type_test": ["good", "hole", "scratch", "scratch"],
        "paths_train": [
            str(root / "train/good" / name) for name in ("a.png", "b.JPG", "c.bmp", "d.tiff")
        ],
        "paths_test": [
            str(root / "test" / path)
            for path in ("good/g.tif", "hole/h.bmp", "scratch/000.png", "scratch/001.jpg")
        ],
        "mask_paths": [
            None,
            str(root / "ground_truth/hole/h_mask.png"),
            str(root / "ground_truth/scratch/000_mask.png"),
            str(root / "ground_truth/scratch/001_mask.png"),
        ],
    }
    return root, expected


def test_load_mvtec_reads_every_format_in_sorted_order(tiny_mvtec):
    root, expected = tiny_mvtec
    with pytest.warns(UserWarning) as record:
        data = load_mvtec(root)
    skipped = sorted(str(w.message) for w in record)
    assert len(skipped) == 2
    assert "skipped 1 entry: .cache (hidden)" in skipped[0]
    assert "skipped 2 entries: .hidden.png (hidden file); notes.txt (not an image file (suffix '.txt'))" in skipped[1]
    for name in ("X_train", "X_test", "masks_test"):
        assert len(data[name]) == len(expected[name])
        for got, want in zip(data[name], expected[name]):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(data.y_test, expected["y_test"])
    assert data.y_test.dtype.kind == "i"
    np.testing.assert_array_equal(data.defect_type_test, expected["defect_type_test"])
    np.testing.assert_array_equal(data.paths_train, expected["paths_train"])
    np.testing.assert_array_equal(data.paths_test, expected["paths_test"])
    # Grey stays 2-D, colour is (H, W, 3).
    assert [image.ndim for image in data.X_train] == [2, 3, 3, 2]
    assert "hole 1" in data.DESCR and "scratch 2" in data.DESCR


def test_load_mvtec_lazy_returns_paths_in_the_same_order(tiny_mvtec):
    root, expected = tiny_mvtec
    data = load_mvtec(root, lazy=True)
    assert data.X_train == expected["paths_train"]
    assert data.X_test == expected["paths_test"]
    assert data.masks_test == expected["mask_paths"]
    np.testing.assert_array_equal(data.y_test, expected["y_test"])
    np.testing.assert_array_equal(data.defect_type_test, expected["defect_type_test"])


def test_load_mvtec_reads_uncommon_modes(tmp_path):
    root = tmp_path / "modes"
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 7, np.uint8)], axis=2)
    _save(root / "train/good/1_rgba.png", rgba)  # transparent: shown over black
    Image.fromarray(rgb).convert("P").save(root / "train/good/2_palette.png")
    wide = np.array([[0, 257 * 100], [65535, 257 * 3]], dtype=np.uint16)
    Image.fromarray(wide).save(root / "train/good/3_sixteen_bit.png")
    _save(root / "test/good/ok.png", rgb)
    with pytest.warns(UserWarning, match=r"1_rgba.png' has transparent pixels; .*over black"):
        data = load_mvtec(root)
    np.testing.assert_array_equal(data.X_train[0], np.rint(rgb * (7 / 255)).astype(np.uint8))
    palette = np.asarray(Image.open(root / "train/good/2_palette.png").convert("RGB"))
    np.testing.assert_array_equal(data.X_train[1], palette)
    # 16-bit grey keeps its full range, as the detector accepts uint16.
    np.testing.assert_array_equal(data.X_train[2], wide)
    assert data.X_train[2].dtype == np.uint16


def test_load_mvtec_reads_sub_folders_viewer_orientation_and_jpeg_masks(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "phones"
    _save(root / "train/good/a.png", rng.integers(0, 256, (12, 8), dtype=np.uint8))
    _save(root / "train/good/day2/b.webp", rng.integers(0, 256, (12, 8, 3), dtype=np.uint8))
    _save(root / "test/good/line1/g.pgm", rng.integers(0, 256, (12, 8), dtype=np.uint8))
    # A phone photo of a scratched part, stored sideways with Orientation=6; its mask was
    # drawn on the upright picture and saved as JPEG.
    upright = rng.integers(0, 256, (12, 8), dtype=np.uint8)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = stored.getexif()
    exif[274] = 6
    (root / "test/scratch/line1").mkdir(parents=True)
    stored.save(root / "test/scratch/line1/s.png", exif=exif)
    scratch = _defect_mask((12, 8), slice(2, 10), slice(3, 5))
    (root / "ground_truth/scratch/line1").mkdir(parents=True)
    Image.fromarray(scratch.astype(np.uint8) * 255).save(root / "ground_truth/scratch/line1/s_mask.jpg", quality=70)

    with pytest.warns(UserWarning, match=r"s_mask.jpg' holds values between 0 and 255"):
        data = load_mvtec(root)
    assert [Path(p).relative_to(root).as_posix() for p in data.paths_train] == ["train/good/a.png", "train/good/day2/b.webp"]
    assert [Path(p).relative_to(root).as_posix() for p in data.paths_test] == ["test/good/line1/g.pgm", "test/scratch/line1/s.png"]
    assert data.defect_type_test.tolist() == ["good", "scratch"]
    np.testing.assert_array_equal(data.X_test[1], upright)
    np.testing.assert_array_equal(data.masks_test[1], scratch)
    lazy = load_mvtec(root, lazy=True)  # checks mask sizes by the displayed size too
    assert lazy.masks_test == [None, str(root / "ground_truth/scratch/line1/s_mask.jpg")]


def _remove(path):
    path.unlink()


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda root: _remove(root / "ground_truth/scratch/001_mask.png"), r"no mask.*001\.jpg"),
        (
            lambda root: _save(
                root / "ground_truth/scratch/000_mask.png", np.zeros((16, 32), np.uint8)
            ),
            r"000_mask\.png is 32x16.*000\.png is 16x32",
        ),
        (
            lambda root: (root / "train/good/c.bmp").write_bytes(b"not a bitmap"),
            r"(?i)cannot read image file .*c\.bmp",
        ),
        (
            lambda root: _save(
                root / "ground_truth/scratch/001_mask.tif", np.zeros((10, 10), np.uint8)
            ),
            r"more than one mask",
        ),
    ],
)
def test_load_mvtec_refuses_broken_data_sets(tiny_mvtec, breakage, message):
    root, _ = tiny_mvtec
    breakage(root)
    with pytest.raises(ValueError, match=message):
        load_mvtec(root)


def test_load_mvtec_lazy_still_checks_masks(tiny_mvtec):
    root, _ = tiny_mvtec
    _save(root / "ground_truth/hole/h_mask.png", np.zeros((9, 12), np.uint8))
    with pytest.raises(ValueError, match=r"h_mask\.png is 12x9"):
        load_mvtec(root, lazy=True)
    _remove(root / "ground_truth/hole/h_mask.png")
    with pytest.raises(ValueError, match=r"no mask.*h\.bmp"):
        load_mvtec(root, lazy=True)


def test_load_mvtec_refuses_wrong_roots(tmp_path):
    with pytest.raises(ValueError, match="not an existing folder.*train/good"):
        load_mvtec(tmp_path / "absent")
    (tmp_path / "train").mkdir()
    (tmp_path / "test/good").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"not in MVTec AD layout.*train/good"):
        load_mvtec(tmp_path)
    (tmp_path / "train/good").mkdir()
    (tmp_path / "train/good/readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"no image files found in .*train/good"):
        load_mvtec(tmp_path)
    _save(tmp_path / "train/good/a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"no image files found in the sub-folders of .*test"):
        load_mvtec(tmp_path)


# --------------------------------------------------------------------------
# load_mvtec on the real data sets (skipped when they are absent)
# --------------------------------------------------------------------------


def _real(name):
    root = DATASETS / name
    if not (root / "train").is_dir():
        pytest.skip(f"real data set {root} is not available")
    return root


def test_load_mvtec_glass_matches_its_readme():
    data = load_mvtec(_real("glass"))
    assert len(data.X_train) == 18
    types, counts = np.unique(data.defect_type_test, return_counts=True)
    assert dict(zip(types, counts)) == {"good": 18, "angle": 24, "edge": 56}
    assert (data.y_test == 1).sum() == 18 and (data.y_test == -1).sum() == 80
    for image, mask, label in zip(data.X_test, data.masks_test, data.y_test):
        assert image.shape == (256, 256) and mask.shape == image.shape
        assert mask.any() == (label == -1)


def test_load_mvtec_magnetic_tile_matches_its_readme():
    root = _real("magnetic_tile")
    data = load_mvtec(root)
    assert len(data.X_train) == 400
    types, counts = np.unique(data.defect_type_test, return_counts=True)
    assert dict(zip(types, counts)) == {
        "good": 80, "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103
    }
    # Grey JPEGs of varying sizes, each mask the size of its image.
    assert all(image.ndim == 2 for image in data.X_train + data.X_test)
    assert len({image.shape for image in data.X_test}) > 10
    assert all(mask.shape == image.shape for image, mask in zip(data.X_test, data.masks_test))
    empty = [
        defect_type
        for defect_type, mask in zip(data.defect_type_test, data.masks_test)
        if defect_type != "good" and not mask.any()
    ]
    assert empty == ["uneven"] * 4
    lazy = load_mvtec(root, lazy=True)
    assert lazy.X_test == list(data.paths_test)
    assert sum(path is None for path in lazy.masks_test) == 80
