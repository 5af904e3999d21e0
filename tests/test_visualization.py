"""Tests for skfastflow.visualization: overlays and grids, on pictures with known pixels."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from skfastflow.visualization import make_grid, overlay_heatmap

INFERNO_LOW, INFERNO_HIGH = (0, 0, 4), (252, 255, 164)
CYAN = (0, 255, 255)


def square_map(shape, rows, cols):
    anomaly_map = np.zeros(shape)
    anomaly_map[rows, cols] = 1.0
    return anomaly_map


def luminance(rgb):
    return rgb.astype(float) @ np.array([0.299, 0.587, 0.114])


# --- overlay_heatmap -------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((20, 30), dtype=np.uint8),
        np.zeros((20, 30, 1), dtype=np.uint8),
        np.full((20, 30, 3), 0.5),
        np.zeros((20, 30, 4), dtype=np.uint8),
        np.zeros((20, 30), dtype=np.uint16),
    ],
)
def test_overlay_is_rgb_uint8_at_the_image_size(image):
    overlay = overlay_heatmap(image, np.random.default_rng(0).random((5, 7)))
    assert overlay.shape == (20, 30, 3)
    assert overlay.dtype == np.uint8


def test_alpha_zero_returns_the_image():
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    anomaly_map = np.random.default_rng(1).random((12, 10))
    np.testing.assert_array_equal(overlay_heatmap(rgb, anomaly_map, alpha=0.0), rgb)
    grey = rgb[:, :, 0]
    np.testing.assert_array_equal(overlay_heatmap(grey, anomaly_map, alpha=0.0), np.stack([grey] * 3, axis=2))
    # Float pixels in [0, 1] are scaled to 0..255.
    np.testing.assert_array_equal(overlay_heatmap(np.full((4, 4), 0.25), np.zeros((4, 4)), alpha=0.0), 64)


def test_square_defect_is_coloured_high_and_background_low():
    anomaly_map = square_map((16, 16), slice(4, 8), slice(6, 12))
    overlay = overlay_heatmap(np.zeros((16, 16), dtype=np.uint8), anomaly_map, alpha=1.0)
    inside = np.zeros((16, 16), dtype=bool)
    inside[4:8, 6:12] = True
    assert (overlay[inside] == INFERNO_HIGH).all()
    assert (overlay[~inside] == INFERNO_LOW).all()
    # Half-way blending over a mid-grey image still separates the square from the rest.
    blended = overlay_heatmap(np.full((16, 16), 128, dtype=np.uint8), anomaly_map, alpha=0.5)
    assert (blended[inside] == np.rint((128 + np.array(INFERNO_HIGH)) / 2)).all()
    assert luminance(blended[inside]).min() > luminance(blended[~inside]).max()


def test_small_map_is_resized_to_the_image():
    # An 8x8 map on a 32x32 image: map cell (2..3, 2..3) covers image pixels 8..15.
    anomaly_map = square_map((8, 8), slice(2, 4), slice(2, 4))
    overlay = overlay_heatmap(np.zeros((32, 32), dtype=np.uint8), anomaly_map, alpha=1.0)
    assert tuple(overlay[12, 12]) == INFERNO_HIGH
    assert tuple(overlay[28, 3]) == INFERNO_LOW


@pytest.mark.parametrize("colormap", ["inferno", "viridis"])
def test_colormaps_brighten_steadily_from_low_to_high(colormap):
    ramp = np.linspace(0.0, 1.0, 256)[None, :]
    colours = overlay_heatmap(np.zeros((1, 256), dtype=np.uint8), ramp, alpha=1.0, colormap=colormap)[0]
    assert (np.diff(luminance(colours[::16])) > 0).all()


def test_vmin_vmax_clip_and_fix_the_colour_scale():
    anomaly_map = np.array([[0.0, 1.0, 2.0, 3.0]])
    black = np.zeros((1, 4), dtype=np.uint8)
    colours = overlay_heatmap(black, anomaly_map, alpha=1.0, vmin=1.0, vmax=2.0)[0]
    assert [tuple(c) for c in colours] == [INFERNO_LOW, INFERNO_LOW, INFERNO_HIGH, INFERNO_HIGH]
    # A constant map with no range takes the lowest colour ...
    assert (overlay_heatmap(black, np.full((1, 4), 5.0), alpha=1.0) == INFERNO_LOW).all()
    # ... unless a given bound puts it above the range.
    assert (overlay_heatmap(black, np.full((1, 4), 5.0), alpha=1.0, vmax=4.0) == INFERNO_HIGH).all()
    assert (overlay_heatmap(black, np.full((1, 4), 5.0), alpha=1.0, vmin=5.0) == INFERNO_LOW).all()


def expected_outline(region):
    """Region pixels with a 4-neighbour outside the region or outside the image, one by one."""
    height, width = region.shape
    outline = np.zeros_like(region)
    for y in range(height):
        for x in range(width):
            if region[y, x]:
                neighbours = [(y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)]
                outline[y, x] = any(
                    not (0 <= ny < height and 0 <= nx < width) or not region[ny, nx] for ny, nx in neighbours
                )
    return outline


def test_contour_is_the_one_pixel_boundary_of_the_thresholded_square():
    anomaly_map = square_map((16, 16), slice(4, 9), slice(5, 11))
    overlay = overlay_heatmap(np.zeros((16, 16), dtype=np.uint8), anomaly_map, threshold=0.5, alpha=0.0)
    ring = np.zeros((16, 16), dtype=bool)
    ring[4:9, 5:11] = True
    ring[5:8, 6:10] = False
    np.testing.assert_array_equal((overlay == CYAN).all(axis=2), ring)
    assert (overlay[~ring] == 0).all()


@settings(max_examples=60, deadline=None)
@given(region=hnp.arrays(bool, st.tuples(st.integers(1, 9), st.integers(1, 9))))
def test_contour_pixels_lie_exactly_on_the_region_boundary(region):
    anomaly_map = np.where(region, 2.0, -1.0)
    overlay = overlay_heatmap(
        np.zeros(region.shape, dtype=np.uint8), anomaly_map, threshold=0.0, alpha=0.0, contour_color=(255, 0, 0)
    )
    np.testing.assert_array_equal((overlay == (255, 0, 0)).all(axis=2), expected_outline(region))


def test_no_contour_when_nothing_exceeds_the_threshold():
    anomaly_map = square_map((8, 8), slice(2, 4), slice(2, 4))
    overlay = overlay_heatmap(np.zeros((8, 8), dtype=np.uint8), anomaly_map, threshold=1.0, alpha=0.0)
    assert (overlay == 0).all()


def test_score_is_written_on_a_dark_box_in_the_top_left_corner():
    image = np.full((60, 160), 128, dtype=np.uint8)
    anomaly_map = np.zeros((60, 160))
    plain = overlay_heatmap(image, anomaly_map, alpha=0.0)
    labelled = overlay_heatmap(image, anomaly_map, alpha=0.0, score=0.8734)
    changed_rows, changed_cols = np.nonzero((labelled != plain).any(axis=2))
    assert changed_rows.min() == 0 and changed_cols.min() == 0
    assert changed_rows.max() < 30 and changed_cols.max() < 120  # a corner label, not a banner
    corner = labelled[: changed_rows.max() + 1, : changed_cols.max() + 1]
    assert (corner == 0).all(axis=2).mean() > 0.5  # mostly the dark box
    assert (corner > 200).all(axis=2).any()  # with white (antialiased) text on it
    other = overlay_heatmap(image, anomaly_map, alpha=0.0, score=0.1)
    assert not np.array_equal(other, labelled)


def test_overlay_saves_and_loads_as_png(tmp_path):
    overlay = overlay_heatmap(np.zeros((9, 7), dtype=np.uint8), np.eye(9, 7), threshold=0.5, score=1.0)
    Image.fromarray(overlay).save(tmp_path / "overlay.png")
    with Image.open(tmp_path / "overlay.png") as loaded:
        np.testing.assert_array_equal(np.asarray(loaded), overlay)


def test_pil_image_input():
    picture = Image.new("L", (6, 4), color=200)
    overlay = overlay_heatmap(picture, np.zeros((4, 6)), alpha=0.0)
    assert overlay.shape == (4, 6, 3) and (overlay == 200).all()


@settings(max_examples=40, deadline=None)
@given(alpha=st.one_of(st.floats(max_value=0.0, exclude_max=True), st.floats(min_value=1.0, exclude_min=True)))
def test_alpha_outside_unit_interval_is_refused(alpha):
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
        overlay_heatmap(np.zeros((4, 4)), np.zeros((4, 4)), alpha=alpha)


@pytest.mark.parametrize(
    ("image", "anomaly_map", "kwargs", "message"),
    [
        (np.zeros((8, 8, 2)), np.zeros((8, 8)), {}, "2 channels"),
        (np.zeros((3, 8, 8)), np.zeros((8, 8)), {}, "channels-first"),
        (np.zeros((1, 4, 4, 3)), np.zeros((4, 4)), {}, "dimensions"),
        (np.full((4, 4), 200.0), np.zeros((4, 4)), {}, "divide by 255"),
        (np.zeros((4, 4)), np.zeros((1, 4, 4)), {}, "anomaly_map must be 2-D"),
        (np.zeros((4, 4)), np.full((4, 4), np.nan), {}, "NaN"),
        (np.zeros((4, 4)), np.zeros((4, 4)), {"colormap": "jet"}, "colormap must be one of"),
        (np.zeros((4, 4)), np.zeros((4, 4)), {"vmin": 2.0, "vmax": 1.0}, "must not exceed vmax"),
        (np.zeros((4, 4)), np.zeros((4, 4)), {"vmin": np.inf}, "vmin must be a finite number"),
        (np.zeros((4, 4)), np.zeros((4, 4)), {"score": "high"}, "score must be a finite number"),
        (np.zeros((4, 4)), np.zeros((4, 4)), {"threshold": np.nan}, "threshold must be a finite number"),
        (np.zeros((4, 4)), np.zeros((4, 4)), {"contour_color": (300, 0, 0)}, "contour_color must be"),
    ],
)
def test_overlay_input_errors_name_the_problem(image, anomaly_map, kwargs, message):
    with pytest.raises(ValueError, match=message):
        overlay_heatmap(image, anomaly_map, **kwargs)


def test_non_numeric_map_is_refused():
    with pytest.raises(TypeError, match="real numbers"):
        overlay_heatmap(np.zeros((2, 2)), np.array([["a", "b"], ["c", "d"]]))


# --- make_grid -------------------------------------------------------------------------


def test_grid_places_each_image_centred_in_its_cell():
    red = np.zeros((2, 3, 3), dtype=np.uint8)
    red[..., 0] = 255
    green = np.zeros((4, 2, 3), dtype=np.uint8)
    green[..., 1] = 255
    blue = np.zeros((3, 3, 3), dtype=np.uint8)
    blue[..., 2] = 255
    grid = make_grid([red, green, blue], n_cols=2, padding=1, background=0)
    # Cells are 4 x 3 (tallest x widest); 2 columns, 2 rows, 1-pixel padding all round.
    expected = np.zeros((2 * 4 + 3, 2 * 3 + 3, 3), dtype=np.uint8)
    expected[2:4, 1:4] = red  # row 0, col 0: 1 pixel down to centre 2 rows in 4
    expected[1:5, 5:7] = green  # row 0, col 1: left = 1 + 3 + 1, plus 1 to centre 2 cols in 3
    expected[6:9, 1:4] = blue  # row 1, col 0: top = 1 + 4 + 1, to centre 3 rows in 4: + 0
    np.testing.assert_array_equal(grid, expected)


def test_grid_defaults_to_a_near_square_layout_and_converts_pixels():
    images = [np.full((5, 5), 1.0), np.zeros((5, 5), dtype=np.uint8)] + [np.zeros((5, 5, 3))] * 3
    grid = make_grid(images, padding=0)
    assert grid.shape == (2 * 5, 3 * 5, 3)  # ceil(sqrt(5)) = 3 columns
    assert (grid[:5, :5] == 255).all()  # float 1.0 -> 255, grey -> RGB
    assert (grid[5:, 10:] == 255).all()  # the unused sixth cell shows the background
    assert make_grid(images, n_cols=10, padding=0).shape == (5, 25, 3)
    assert make_grid(np.zeros((4, 3, 3)), n_cols=4, padding=1).shape == (5, 17, 3)


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        ([], {}, "non-empty"),
        ([np.zeros((2, 2))], {"n_cols": 0}, "n_cols must be a positive integer"),
        ([np.zeros((2, 2))], {"n_cols": 1.5}, "n_cols must be a positive integer"),
        ([np.zeros((2, 2))], {"padding": -1}, "padding must be a non-negative integer"),
        ([np.zeros((2, 2))], {"background": (0, 0)}, "background must be"),
        ([np.zeros((2, 2)), np.full((2, 2), 3.0)], {}, r"images\[1\]"),
    ],
)
def test_grid_input_errors_name_the_problem(images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_grid(images, **kwargs)
