"""Tiling: where tiles lie, how their maps are stitched, and the detector, runtime and CLI that use them."""

import csv
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from skfastflow import FastFlowDetector
from skfastflow.cli import main
from skfastflow.export import export_metadata, export_onnx
from skfastflow.nn import FastflowModel
from skfastflow.files import ImageWarning, read_image
from skfastflow.persistence import load, save
from skfastflow.runtime import RuntimeDetector
from conftest import carried_tolerance
from skfastflow.visualization import overlay_heatmap
from skfastflow.tiling import TileBox, TileMapAssembler, aspect_input_size, check_tiling, stitch, stitched_scores, tile_boxes

sides = st.integers(1, 700)
tiles = st.integers(1, 300)


@given(height=sides, width=sides, tile_h=tiles, tile_w=tiles, data=st.data())
def test_tiles_lie_inside_the_image_and_cover_every_pixel(height, width, tile_h, tile_w, data):
    stride = (data.draw(st.integers(1, tile_h)), data.draw(st.integers(1, tile_w)))
    boxes = tile_boxes((height, width), (tile_h, tile_w), stride)
    covered = np.zeros((height, width), dtype=int)
    for box in boxes:
        assert box.top >= 0 and box.left >= 0 and box.top + box.height <= height and box.left + box.width <= width
        assert (box.height, box.width) == (min(tile_h, height), min(tile_w, width))
        covered[box.top : box.top + box.height, box.left : box.left + box.width] += 1
    assert covered.min() >= 1
    # Consecutive starts never step more than the stride: the ragged last tile is flush with the edge.
    tops = sorted({box.top for box in boxes})
    assert all(0 < later - earlier <= stride[0] for earlier, later in zip(tops, tops[1:]))


def test_tile_layout_of_a_ragged_wide_image():
    boxes = tile_boxes((460, 1130), (256, 256), (256, 256))
    assert sorted({box.top for box in boxes}) == [0, 204]
    assert sorted({box.left for box in boxes}) == [0, 256, 512, 768, 874]
    # Smaller than a tile along an axis: one tile spans it.
    assert tile_boxes((100, 90), (256, 256), (128, 128)) == [TileBox(0, 0, 100, 90)]


@given(
    height=st.integers(1, 120), width=st.integers(1, 120), tile=st.integers(4, 64), stride_share=st.floats(0.25, 1.0), seed=st.integers(0, 99)
)
def test_stitching_crops_of_one_map_gives_that_map_back(height, width, tile, stride_share, seed):
    """Tiles that agree where they overlap stitch into exactly the map they were cut from: no seams."""
    whole = np.random.default_rng(seed).random((height, width))
    stride = max(1, int(tile * stride_share))
    boxes = tile_boxes((height, width), (tile, tile), (stride, stride))
    crops = [whole[b.top : b.top + b.height, b.left : b.left + b.width] for b in boxes]
    np.testing.assert_allclose(stitch(crops, boxes, (height, width)), whole, rtol=1e-6, atol=1e-7)


@given(sizes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=4), tile=st.integers(4, 24), seed=st.integers(0, 99))
def test_tiles_of_several_images_arriving_mixed_stitch_each_image_when_its_last_tile_comes(sizes, tile, seed):
    """Batches mix the tiles of several images: each image's map comes back exactly once,
    right after its last tile, and equals stitching its tiles alone."""
    rng = np.random.default_rng(seed)
    wholes = [rng.random(size) for size in sizes]
    layouts = [tile_boxes(size, (tile, tile), (max(1, tile // 2),) * 2) for size in sizes]
    arrivals = [(image, box) for image, boxes in enumerate(layouts) for box in boxes]
    arrivals = [arrivals[i] for i in rng.permutation(len(arrivals))]
    assembler = TileMapAssembler()
    for image, (size, boxes) in enumerate(zip(sizes, layouts)):
        assembler.expect(image, size, len(boxes))
    done = {}
    for step, (image, box) in enumerate(arrivals):
        crop = wholes[image][box.top : box.top + box.height, box.left : box.left + box.width]
        stitched = assembler.add(image, crop, box)
        last = max(i for i, (other, _) in enumerate(arrivals) if other == image)
        assert (stitched is not None) == (step == last)
        if stitched is not None:
            done[image] = stitched
    assert sorted(done) == list(range(len(sizes)))
    for image, whole in enumerate(wholes):
        np.testing.assert_allclose(done[image], whole, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="not announced"):  # every tile was added: no more are expected
        assembler.add(0, wholes[0][: layouts[0][0].height, : layouts[0][0].width], layouts[0][0])


def test_overlapping_tiles_blend_towards_each_tiles_middle():
    boxes = tile_boxes((1, 8), (1, 6), (1, 2))  # two tiles, columns 0-5 and 2-7
    row = stitch([np.zeros((1, 6)), np.ones((1, 6))], boxes, (1, 8))[0]
    assert row[:2].tolist() == [0, 0] and row[6:].tolist() == [1, 1]  # one tile: its value
    assert np.all(np.diff(row) >= 0) and 0 < row[3] < row[4] < 1  # a ramp, no step


def test_stitching_refuses_maps_of_the_wrong_size_and_uncovered_pixels():
    with pytest.raises(ValueError, match="does not fit its box"):
        stitch([np.zeros((3, 3))], [TileBox(0, 0, 4, 4)], (4, 4))
    with pytest.raises(ValueError, match="do not cover"):
        stitch([np.zeros((2, 2))], [TileBox(0, 0, 2, 2)], (4, 4))


def test_stitched_scores_follow_the_image_score_rules():
    anomaly_map = -np.ones((10, 10))
    anomaly_map[0, :3] = [-0.1, -0.2, -0.3]
    scores = stitched_scores(anomaly_map, ("max", 0.01, 0.03))
    assert scores["max"] == pytest.approx(0.1)
    assert scores[0.01] == pytest.approx(0.1)  # round(0.01 * 100) = 1 value
    assert scores[0.03] == pytest.approx(0.2)  # the 3 highest: mean 0.2


@pytest.mark.parametrize(
    ("tile_size", "tile_stride", "message"),
    [
        (None, 32, "without tile_size"),
        (32, 64, "larger than tile_size"),
        (0, None, "positive"),
        ((32, 32, 3), None, "pair"),
        (32.5, None, "positive int"),
    ],
)
def test_bad_tiling_is_refused_with_the_remedy(tile_size, tile_stride, message):
    with pytest.raises(ValueError, match=message):
        check_tiling(tile_size, tile_stride)


def test_aspect_input_size_keeps_the_aspect_ratio_on_a_multiple_of_32():
    assert aspect_input_size((500, 1263)) == (256, 640)
    assert aspect_input_size((1263, 500)) == (640, 256)
    assert aspect_input_size((300, 300)) == (256, 256)
    assert aspect_input_size((460, 1130), short_side=128) == (128, 320)
    with pytest.raises(ValueError, match="positive"):
        aspect_input_size((0, 10))


# ---------------------------------------------------------------------------- the detector

TINY = dict(pre_trained=False, flow_steps=1, max_iter=2, batch_size=8, inference_precision="float32", n_threads=1, calibration_cv=None, random_state=0)


def _texture(rng, height, width):
    return rng.integers(90, 160, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiled():
    rng = np.random.default_rng(0)
    X = [_texture(rng, 64, 96) for _ in range(10)]
    return FastFlowDetector("test_resnet", input_size=32, tile_size=32, tile_stride=16, tile_flows="shared", **TINY).fit(X)


def test_tiles_of_input_size_score_as_the_untiled_detector_does():
    """An image of exactly one tile, at input_size: tiling changes nothing, offset_ included."""
    rng = np.random.default_rng(1)
    X = np.stack([_texture(rng, 32, 32) for _ in range(10)])
    plain = FastFlowDetector("test_resnet", input_size=32, **TINY).fit(X)
    tiled = FastFlowDetector("test_resnet", input_size=32, tile_size=32, **TINY).fit(X)
    assert tiled.tiling_ == ((32, 32), (32, 32)) and plain.tiling_ is None
    np.testing.assert_allclose(tiled.predict_maps(X), plain.predict_maps(X), atol=1e-6)
    np.testing.assert_allclose(tiled.score_samples(X), plain.score_samples(X), atol=1e-6)
    assert tiled.offset_ == pytest.approx(plain.offset_, abs=1e-6)


def test_maps_come_back_at_each_images_size_whatever_the_tiles(tiled):
    rng = np.random.default_rng(2)
    # Larger than a tile with ragged edges, smaller than a tile, one pixel tall, and a grey one.
    X = [_texture(rng, 70, 101), _texture(rng, 20, 25), _texture(rng, 1, 40), rng.integers(90, 160, (48, 48), dtype=np.uint8)]
    with pytest.warns(ImageWarning, match=r"X\[3\] is a grey image"):  # scored all the same
        maps, scores = tiled.predict_maps(X, return_scores=True)
    assert [m.shape for m in maps] == [(70, 101), (20, 25), (1, 40), (48, 48)]
    assert all(np.isfinite(m).all() and m.min() >= -1 and m.max() <= 0 for m in maps)
    # The image score is the rule over the stitched map standardised, the same in every method.
    expected = [stitched_scores(tiled.map_standardizer_(m), (tiled.image_score_,))[tiled.image_score_] for m in maps]
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    with pytest.warns(ImageWarning):
        np.testing.assert_array_equal(tiled.score_samples(X), scores)
    # Alone or beside other images, an image gets the same map: tiles do not mix across images.
    np.testing.assert_array_equal(tiled.predict_maps(X[:1])[0], maps[0])


def test_a_defect_in_one_tile_shows_in_that_tile_only():
    rng = np.random.default_rng(3)
    X = [np.full((64, 128, 3), 120, dtype=np.uint8) + rng.integers(0, 6, (64, 128, 3), dtype=np.uint8) for _ in range(12)]
    detector = FastFlowDetector("test_resnet", input_size=32, tile_size=32, **{**TINY, "max_iter": 4}).fit(X)
    image = X[0].copy()
    image[40:46, 100:106] = 255  # a 6-pixel spot in the tile at rows 32-63, columns 96-127
    anomaly_map = detector.predict_maps([image])[0]
    clean = detector.predict_maps([X[0]])[0]
    change = np.abs(anomaly_map - clean)
    assert change[32:, 96:].max() > 0
    np.testing.assert_array_equal(change[:32], 0)  # the other tiles are untouched
    np.testing.assert_array_equal(change[:, :96], 0)
    assert detector.score_samples([image])[0] < detector.score_samples([X[0]])[0]


def test_scoring_uses_the_tiling_the_flows_were_trained_with(tiled):
    X = [np.random.default_rng(4).integers(90, 160, (50, 70, 3), dtype=np.uint8)]
    before = tiled.score_samples(X)
    tiled.set_params(tile_size=None)
    try:
        np.testing.assert_array_equal(tiled.score_samples(X), before)
    finally:
        tiled.set_params(tile_size=32)


def test_tiling_survives_saving_and_old_files_score_whole_images(tiled, tmp_path):
    X = [np.random.default_rng(5).integers(90, 160, (50, 70, 3), dtype=np.uint8)]
    save(tiled, tmp_path / "tiled.joblib")
    restored = load(tmp_path / "tiled.joblib")
    assert restored.tiling_ == tiled.tiling_
    np.testing.assert_array_equal(restored.score_samples(X), tiled.score_samples(X))
    state = tiled.__getstate__()
    del state["tiling_"]  # as pickled before tiling existed
    old = FastFlowDetector.__new__(FastFlowDetector)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert old.tiling_ is None and old.predict_maps(X)[0].shape == (50, 70)


def test_labelled_defects_and_score_read_tiles_too(tiled):
    rng = np.random.default_rng(6)
    good = [_texture(rng, 64, 96) for _ in range(8)]
    bad = [image.copy() for image in good[:3]]
    for image in bad:
        image[10:30, 10:30] = 0
    y = np.r_[np.ones(8, int), -np.ones(3, int)]
    detector = FastFlowDetector("test_resnet", input_size=32, tile_size=32, **TINY).fit(good + bad, y)
    assert detector.defect_scores_.shape == (3,) and detector.n_train_samples_ + detector.n_validation_samples_ == 8
    assert detector.score(good + bad, y) == pytest.approx(detector.score(good))


def test_runtime_cuts_and_stitches_as_the_torch_detector(tiled, tmp_path):
    pytest.importorskip("onnxruntime")
    runtime = RuntimeDetector(export_onnx(tiled, tmp_path / "tiled.onnx"), batch_size=5)
    assert runtime.tiling_ == tiled.tiling_ and runtime.map_kind_ == tiled.map_kind_ == "raw"  # one shared flow: raw maps
    rng = np.random.default_rng(7)
    X = [_texture(rng, 70, 101), _texture(rng, 20, 25), _texture(rng, 64, 96)]
    maps, scores = runtime.predict_maps(X, return_scores=True)
    expected_maps, expected_scores = tiled.predict_maps(X, return_scores=True)
    for got, expected in zip(maps, expected_maps):
        np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    np.testing.assert_array_equal(runtime.predict(X), tiled.predict(X))


# ---------------------------------------------------------------------------- one flow per tile position


def _striped(rng, horizontal_left: bool):
    """A 32x64 image: stripes across on one 32-pixel half, stripes down on the other, plus noise."""
    across = np.zeros((32, 32), np.uint8) + np.where(np.arange(32)[:, None] % 8 < 4, 200, 60).astype(np.uint8)
    halves = [across, across.T.copy()] if horizontal_left else [across.T.copy(), across]
    image = np.concatenate(halves, axis=1)[:, :, None].repeat(3, axis=2)
    return np.clip(image.astype(int) + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)


def test_per_position_flows_know_what_is_normal_where():
    """Good parts have stripes across on the left and down on the right; a part with the halves
    swapped shows only patterns that are normal *somewhere*. One flow per tile position flags
    it far below every good image; one shared flow, which has seen both patterns at every
    position, barely tells it from good images (with other seeds a little above or below)."""
    rng = np.random.default_rng(10)
    good = [_striped(rng, True) for _ in range(16)]
    test_good = [_striped(rng, True) for _ in range(6)]
    swapped = [_striped(rng, False) for _ in range(3)]
    params = dict(TINY, flow_steps=2, max_iter=8, early_stopping=False)
    per_position = FastFlowDetector("test_resnet", input_size=32, tile_size=32, **params).fit(good)
    shared = FastFlowDetector("test_resnet", input_size=32, tile_size=32, tile_flows="shared", **params).fit(good)
    assert per_position.model_.n_positions == 2 and per_position.tile_grid_size_ == (32, 64)
    assert shared.model_.n_positions == 1 and shared.tile_grid_size_ is None
    by_position = per_position.score_samples(swapped), per_position.score_samples(test_good)
    by_shared = shared.score_samples(swapped), shared.score_samples(test_good)
    position_gap = by_position[1].min() - by_position[0].max()  # > 0: every swapped part below every good one
    shared_gap = by_shared[1].min() - by_shared[0].max()
    assert position_gap > 0 and position_gap > 5 * abs(shared_gap)
    assert np.all(per_position.predict(swapped) == -1)


def _noisy_left(rng):
    """A 32x64 grey-level part: strong noise on its left 32-pixel half, faint noise on the right."""
    image = np.full((32, 64, 3), 128, np.int16)
    image[:, :32] += rng.integers(-60, 61, (32, 32, 3)).astype(np.int16)
    image[:, 32:] += rng.integers(-5, 6, (32, 32, 3)).astype(np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_per_position_maps_come_standardised_without_a_seam_of_level():
    """Each position's flows put good parts' raw maps at a level of their own, so raw stitched
    maps step at the tile border; predict_maps returns the standardised map (map_kind_), level
    across the border, which is exactly the raw map standardised by map_standardizer_."""
    rng = np.random.default_rng(0)
    good, test = [_noisy_left(rng) for _ in range(12)], [_noisy_left(rng) for _ in range(4)]
    params = dict(TINY, max_iter=4, early_stopping=False)
    standardised = FastFlowDetector("test_resnet", input_size=32, tile_size=32, **params).fit(good)
    raw = FastFlowDetector("test_resnet", input_size=32, tile_size=32, standardize_maps=False, **params).fit(good)
    shared = FastFlowDetector("test_resnet", input_size=32, tile_size=32, tile_flows="shared", **params).fit(good)
    assert (standardised.map_kind_, raw.map_kind_, shared.map_kind_) == ("standardized", "raw", "raw")

    def step_at_the_border(maps):  # difference of the halves' levels, in units of their spread
        left, right = maps[:, :, :32], maps[:, :, 32:]
        return abs(left.mean() - right.mean()) / np.mean([left.std(), right.std()])

    raw_maps, standardised_maps = raw.predict_maps(test), standardised.predict_maps(test)
    assert raw_maps.min() >= -1 and raw_maps.max() <= 0 and standardised_maps.max() > 0
    assert step_at_the_border(raw_maps) > 1.0 and step_at_the_border(standardised_maps) < 0.2
    # The same flows (standardize_maps only adds a pass after training): the returned map is the raw one, standardised.
    np.testing.assert_allclose(standardised_maps, [standardised.map_standardizer_(m) for m in raw_maps], atol=1e-4)


def test_tile_positions_route_each_input_through_its_own_flows():
    model = FastflowModel(32, "test_resnet", pre_trained=False, flow_steps=1, n_positions=3).eval()
    features = model.extract_features(torch.randn(5, 3, 32, 32))
    positions = [2, 0, 2, 1, 0]
    with torch.no_grad():
        together = model.encode(features, positions)
        for item, position in enumerate(positions):
            alone = model.encode([feature[item : item + 1] for feature in features], [position])
            for joint, single in zip(together[0] + together[1], alone[0] + alone[1]):
                torch.testing.assert_close(joint[item : item + 1], single, rtol=1e-5, atol=1e-5)
        # Another position gives another result: the flows are not shared.
        other = model.encode([feature[:1] for feature in features], [0])
        assert not torch.allclose(other[1][0], together[1][0][:1])
    with pytest.raises(ValueError, match="pass each input's position"):
        model.encode(features)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        model.encode(features, [0, 1, 2, 3, 0])


def test_per_position_flows_need_images_of_one_size():
    rng = np.random.default_rng(11)
    mixed = [_texture(rng, 64, 96) for _ in range(5)] + [_texture(rng, 64, 64) for _ in range(3)]
    with pytest.raises(ValueError, match=r"2 sizes: 64x96 \(5 images\), 64x64 \(3 images\).*tile_flows='shared'"):
        FastFlowDetector("test_resnet", input_size=32, tile_size=32, tile_flows="per_position", **TINY).fit(mixed)
    auto = FastFlowDetector("test_resnet", input_size=32, tile_size=32, **TINY).fit(mixed)
    assert auto.model_.n_positions == 1 and auto.tile_grid_size_ is None  # "auto": shared for mixed sizes
    # One tile per image: one position, whose flows are the shared ones, for images of any size.
    single = FastFlowDetector("test_resnet", input_size=32, tile_size=64, **TINY).fit([_texture(rng, 48, 48) for _ in range(6)])
    assert single.model_.n_positions == 1 and single.tile_grid_size_ is None


def test_per_position_detector_refuses_other_sizes_and_survives_saving(tmp_path):
    rng = np.random.default_rng(12)
    X = [_texture(rng, 64, 96) for _ in range(8)]
    detector = FastFlowDetector("test_resnet", input_size=32, tile_size=32, **TINY).fit(X)
    assert detector.model_.n_positions == 6 and detector.tile_grid_size_ == (64, 96)
    other = [_texture(rng, 64, 100)]
    for method in (detector.score_samples, detector.predict_maps, detector.predict, detector.score):
        with pytest.raises(ValueError, match="64x100 pixels.*for images of 64x96.*Crop or resize it to 64x96"):
            method(other)
    save(detector, tmp_path / "positions.joblib")
    restored = load(tmp_path / "positions.joblib")
    assert restored.tile_grid_size_ == (64, 96) and restored.model_.n_positions == 6
    np.testing.assert_array_equal(restored.score_samples(X), detector.score_samples(X))
    with pytest.raises(ValueError, match="64x100 pixels"):
        restored.score_samples(other)


def test_metadata_format_is_the_oldest_that_scores_the_file_right(tiled):
    """Older runtimes read format 1; only what they would score wrongly gets a newer format."""
    rng = np.random.default_rng(14)
    whole = FastFlowDetector("test_resnet", input_size=32, **TINY).fit([_texture(rng, 32, 48) for _ in range(6)])
    assert whole.map_standardizer_ is not None and export_metadata(whole)["format"] == 1  # standardised inside the graph
    assert tiled.map_standardizer_ is not None and export_metadata(tiled)["format"] == 2  # stitched maps standardised by the runtime
    per_position = FastFlowDetector("test_resnet", input_size=32, tile_size=32, **TINY).fit([_texture(rng, 32, 64) for _ in range(6)])
    metadata = export_metadata(per_position)
    assert metadata["format"] == 3 and metadata["tile_grid_size"] == [32, 64]
    assert export_metadata(whole)["tile_grid_size"] is None and export_metadata(tiled)["tile_grid_size"] is None


def test_runtime_scores_per_position_tiles_as_the_torch_detector(tmp_path):
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(13)
    X = [_texture(rng, 64, 96) for _ in range(8)]
    detector = FastFlowDetector("test_resnet", input_size=32, tile_size=32, tile_stride=(32, 16), **TINY).fit(X)
    assert detector.model_.n_positions == 10
    path = export_onnx(detector, tmp_path / "positions.onnx")
    test = [_texture(rng, 64, 96) for _ in range(5)]
    expected_maps, expected_scores = detector.predict_maps(test, return_scores=True)
    for batch_size in (1, 13, 64):  # fewer tiles than one image has, one image and a part, several images
        runtime = RuntimeDetector(path, batch_size=batch_size)
        assert runtime.tile_grid_size_ == (64, 96) and runtime.metadata_["format"] == 3
        assert runtime.map_kind_ == detector.map_kind_ == "standardized"  # the maps compared below are standardised
        maps, scores = runtime.predict_maps(test, return_scores=True)
        np.testing.assert_allclose(maps, expected_maps, atol=1e-4)
        np.testing.assert_allclose(scores, expected_scores, atol=carried_tolerance(detector, 1e-5))
        np.testing.assert_array_equal(runtime.predict(test), detector.predict(test))
    with pytest.raises(ValueError, match=r"X\[1\] is 64x100 pixels.*64x96"):
        runtime.score_samples([test[0], _texture(rng, 64, 100)])


def test_cli_fits_tiles_and_predict_reads_them_from_the_model(tmp_path, capsys):
    rng = np.random.default_rng(8)
    data = tmp_path / "good"
    data.mkdir()
    for index in range(8):
        Image.fromarray(_texture(rng, 48, 112)).save(data / f"{index}.png")
    model = tmp_path / "model.joblib"
    assert main(["fit", str(data), "--no-pretrained", "--backbone", "test_resnet", "--input-size", "aspect:32",
                 "--tile-size", "48", "--epochs", "1", "--seed", "0", "--out", str(model)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "Input size 32x64" in out and "tiles of 48x48" in out and "one flow per tile position of 48x112 images" in out
    detector = load(model)
    assert detector.input_size == (32, 64) and detector.tiling_ == ((48, 48), (48, 48))
    assert main(["predict", str(model), str(data), "--csv", str(tmp_path / "scores.csv"), "--maps", str(tmp_path / "maps")]) == 0
    with open(tmp_path / "scores.csv") as file:
        rows = list(csv.DictReader(file))
    paths = sorted(data.glob("*.png"))
    expected = detector.decision_function([str(path) for path in paths])
    assert [row["path"] for row in rows] == [str(path) for path in paths]
    np.testing.assert_allclose([float(row["decision"]) for row in rows], expected, atol=1e-6)
    # The overlay draws the map the verdict rests on, standardised once: predict_maps' own map here
    # (map_kind_), on the standardised maps' scale (0 to twice the threshold, at least 1).
    assert detector.map_kind_ == "standardized"
    threshold = -detector.offset_
    drawn = overlay_heatmap(read_image(paths[0]), detector.predict_maps([paths[0]])[0], threshold=threshold,
                            score=expected[0], vmin=0.0, vmax=max(2.0 * threshold, 1.0))  # fmt: skip
    with Image.open(tmp_path / "maps" / paths[0].name) as picture:
        np.testing.assert_array_equal(np.asarray(picture), drawn)


def test_cli_refuses_a_stride_larger_than_the_tile(tmp_path, capsys):
    data = tmp_path / "good"
    data.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(data / "a.png")
    assert main(["fit", str(data), "--no-pretrained", "--backbone", "test_resnet", "--tile-size", "32", "--tile-stride", "40"]) != 0
    assert "larger than tile_size" in capsys.readouterr().err
