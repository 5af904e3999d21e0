"""Input conversion and input errors of ``skfastflow.images`` (no model involved).

Every accepted form of ``X`` must become the same normalised tensor a user would compute by
hand; every refused form must fail with ``ValueError``/``TypeError`` naming the problem and
the fix, before any model work.
"""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from skfastflow.image_input import GREY_TOLERANCE
from skfastflow.images import ImageCollection, resize_maps

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = (8, 8)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def to_tensor(X, size=SIZE, batch_size=4):
    """All batches of ``X`` concatenated, plus the original sizes."""
    batches = list(ImageCollection(X).batches(batch_size, size, MEAN, STD))
    return torch.cat([b.tensor for b in batches]), [s for b in batches for s in b.original_sizes]


def unnormalise(tensor):
    return tensor * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


# ----------------------------------------------------------------- accepted input

image_sides = st.integers(1, 12)


@st.composite
def valid_stacks(draw):
    """(N, H, W, C) stacks of any accepted dtype, with values in that dtype's range."""
    n, height, width = draw(st.integers(1, 3)), draw(image_sides), draw(image_sides)
    channels = draw(st.sampled_from([1, 3, 4]))
    dtype, scale = draw(
        st.sampled_from([(np.uint8, 255), (np.int64, 255), (np.int16, 255), (np.uint16, 65535), (np.float32, 1), (np.float64, 1)])
    )
    if np.dtype(dtype).kind == "f":
        elements = st.floats(0, 1, width=np.dtype(dtype).itemsize * 8)
    else:
        elements = st.integers(0, scale)
    pixels = draw(hnp.arrays(dtype, (n, height, width, channels), elements=elements))
    return pixels, scale


@FAST
@given(valid_stacks())
def test_every_accepted_dtype_maps_pixels_to_unit_range_exactly(stack_and_scale):
    pixels, scale = stack_and_scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uint16 holding only small values warns; checked below
        tensor, sizes = to_tensor(pixels, size=pixels.shape[1:3])
    expected = pixels[..., :3].astype(np.float64) / scale  # alpha dropped
    if expected.shape[-1] == 1:
        expected = np.repeat(expected, 3, axis=-1)
    np.testing.assert_allclose(unnormalise(tensor).permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)
    assert sizes == [pixels.shape[1:3]] * len(pixels)


@FAST
@given(valid_stacks(), st.integers(1, 4))
def test_list_of_images_equals_the_stack(stack_and_scale, batch_size):
    pixels, _ = stack_and_scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_stack, _ = to_tensor(pixels, batch_size=batch_size)
        from_list, _ = to_tensor(list(pixels), batch_size=batch_size)
    torch.testing.assert_close(from_list, from_stack)


def test_grey_stack_of_three_dimensions_equals_one_channel_stack():
    grey = np.random.default_rng(0).integers(0, 256, size=(3, 9, 7), dtype=np.uint8)
    torch.testing.assert_close(to_tensor(grey)[0], to_tensor(grey[..., None])[0])


def test_rgba_drops_alpha():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(2, 10, 10, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, rng.integers(0, 256, size=(2, 10, 10, 1), dtype=np.uint8)], axis=-1)
    torch.testing.assert_close(to_tensor(rgba)[0], to_tensor(rgb)[0])


def test_mixed_sizes_and_grey_colour_list_keeps_each_original_size():
    rng = np.random.default_rng(0)
    X = [
        rng.integers(0, 256, size=(20, 30), dtype=np.uint8),
        rng.random((5, 7, 3)),
        rng.integers(0, 256, size=(1, 1, 4), dtype=np.uint8),
    ]
    tensor, sizes = to_tensor(X)
    assert tensor.shape == (3, 3, *SIZE)
    assert sizes == [(20, 30), (5, 7), (1, 1)]


def test_tiny_source_images_are_resized_up():
    # A 1x1 image becomes a constant input_size image of its colour.
    pixel = np.array([[[[10, 200, 30]]]], dtype=np.uint8)
    tensor, _ = to_tensor(pixel)
    np.testing.assert_allclose(unnormalise(tensor)[0, :, 3, 5].numpy(), [10 / 255, 200 / 255, 30 / 255], atol=1e-5)


def test_uint16_holding_only_8_bit_values_warns_and_names_the_fix():
    with pytest.warns(UserWarning, match=r"astype\(np.uint8\)"):
        ImageCollection(np.full((2, 4, 4), 200, dtype=np.uint16))


@pytest.mark.parametrize("value", [40000, 0])
def test_genuine_16_bit_and_black_images_do_not_warn(value):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageCollection(np.full((2, 4, 4), value, dtype=np.uint16))


# ----------------------------------------------------------------- refused arrays

@st.composite
def stacks_of_refused_dtype(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(5, 9)), draw(st.integers(5, 9)), 3)
    kind = draw(st.sampled_from(["bool", "complex", "object", "datetime", "timedelta"]))
    if kind == "bool":
        return draw(hnp.arrays(bool, shape)), "boolean"
    if kind == "complex":
        return draw(hnp.arrays(np.complex64, shape, elements=st.complex_numbers(max_magnitude=1, width=64))), "complex"
    if kind == "object":
        return np.zeros(shape, dtype=object), "objects"
    if kind == "datetime":
        return np.zeros(shape, dtype="datetime64[s]"), "datetime64"
    return np.zeros(shape, dtype="timedelta64[s]"), "timedelta64"


@FAST
@given(stacks_of_refused_dtype(), st.booleans())
def test_non_image_dtypes_raise_type_error_naming_the_dtype_and_fix(array_and_word, as_list):
    array, word = array_and_word
    X = list(array) if as_list else array
    with pytest.raises(TypeError, match=word) as error:
        ImageCollection(X)
    assert "uint8" in str(error.value)


@FAST
@given(
    st.sampled_from([np.int16, np.int32, np.int64, np.uint32]),
    st.integers(256, 2**15 - 1) | st.integers(-(2**15), -1),
    st.booleans(),
)
def test_integers_outside_0_255_are_refused(dtype, bad_value, as_list):
    if bad_value < 0 and np.dtype(dtype).kind == "u":
        bad_value = -bad_value + 255
    pixels = np.full((2, 6, 6, 3), 100, dtype=dtype)
    pixels[-1, 2, 3, 1] = bad_value
    with pytest.raises(ValueError, match=r"outside 0\.\.255.*floats in \[0, 1\]"):
        ImageCollection(list(pixels) if as_list else pixels)


@FAST
@given(
    st.sampled_from([np.float16, np.float32, np.float64]),
    st.floats(1.0001, 255) | st.floats(-1e4, -1e-3),
    st.booleans(),
)
def test_floats_outside_unit_range_are_refused_with_the_right_hint(dtype, bad_value, as_list):
    pixels = np.full((2, 6, 6), 0.5, dtype=dtype)
    pixels[1, 0, 0] = bad_value
    value = float(np.asarray(bad_value, dtype=dtype))
    if 0 <= value <= 1:
        return  # rounded into range by a narrow dtype
    hint = "divide by 255" if value > 1 else "rescale"
    with pytest.raises(ValueError, match=rf"must lie in \[0, 1\]: {hint}"):
        ImageCollection(list(pixels) if as_list else pixels)


@FAST
@given(st.sampled_from([np.nan, np.inf, -np.inf]), st.integers(0, 2 * 6 * 6 * 3 - 1), st.booleans())
def test_nan_and_inf_pixels_are_refused_wherever_they_are(bad_value, position, as_list):
    pixels = np.full((2, 6, 6, 3), 0.5)
    pixels.flat[position] = bad_value
    with pytest.raises(ValueError, match="NaN or infinite.*nan_to_num"):
        ImageCollection(list(pixels) if as_list else pixels)


@FAST
@given(st.integers(0, 6).filter(lambda ndim: ndim not in (3, 4)))
def test_wrong_number_of_dimensions(ndim):
    X = np.zeros((2,) * ndim, dtype=np.uint8)
    with pytest.raises(ValueError, match=r"3 \(N, H, W\) or 4 \(N, H, W, C\) dimensions"):
        ImageCollection(X)


@FAST
@given(st.integers(2, 12).filter(lambda c: c not in (3, 4)), st.booleans())
def test_channel_counts_other_than_1_3_4_are_refused(channels, as_list):
    X = np.zeros((2, 6, 6, channels), dtype=np.uint8)
    with pytest.raises(ValueError, match=f"{channels} channels.*1 \\(grey\\), 3 \\(RGB\\) or 4 \\(RGBA\\)"):
        ImageCollection(list(X) if as_list else X)


@pytest.mark.parametrize(
    "X, error, message",
    [
        (np.zeros((2, 3, 16, 16), np.uint8), ValueError, r"channels-first.*transpose\(0, 2, 3, 1\)"),
        ([np.zeros((3, 16, 16), np.uint8)], ValueError, r"channels-first.*transpose\(1, 2, 0\)"),
        (np.zeros((16, 16, 3), np.uint8), ValueError, r"one \(H, W, C\) image.*X\[np.newaxis\]"),
        (np.zeros((16, 16), np.uint8), ValueError, r"one grey image, pass X\[np.newaxis\]"),
        (np.zeros((0, 16, 16, 3), np.uint8), ValueError, "no images"),
        ([], ValueError, "no images"),
        (np.zeros((2, 0, 16, 3), np.uint8), ValueError, "empty images of height 0"),
        ([np.zeros((4, 0), np.uint8)], ValueError, r"X\[0\].*empty image of height 4 and width 0"),
        ([np.zeros(5, np.uint8)], ValueError, r"X\[0\].*1 dimensions"),
        (None, TypeError, "NoneType"),
        (7, TypeError, "int"),
        (torch.zeros(2, 3, 8, 8), TypeError, r"permute\(0, 2, 3, 1\)"),
        (np.zeros((2, 8, 8), np.uint8).tolist(), TypeError, r"np.asarray\(X, dtype=np.uint8\)"),
        ([np.zeros((8, 8), np.uint8), 3.5], TypeError, r"X\[1\] is a float"),
        ([np.zeros((8, 8), object)], TypeError, r"X\[0\].*Python objects"),
        ("image.png", TypeError, r"single path.*\['image.png'\]"),
        (Image.new("RGB", (8, 8)), TypeError, r"single PIL image.*\[image\]"),
    ],
    ids=lambda value: None if not isinstance(value, (str, type)) else str(value)[:30],
)
def test_named_bad_inputs(X, error, message):
    with pytest.raises(error, match=message):
        ImageCollection(X)


# ----------------------------------------------------------------- files

@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    files = {"colour": tmp_path / "colour.png", "jpeg": tmp_path / "colour.jpg"}
    Image.fromarray(colour).save(files["colour"])
    Image.fromarray(colour).save(files["jpeg"], quality=95)
    png, jpeg = files["colour"].read_bytes(), files["jpeg"].read_bytes()
    broken = {
        "truncated_png": png[: len(png) // 2],
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "header_only_png": png[:30],
        "empty": b"",
        "text": b"this is not an image\n",
    }
    for name, content in broken.items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(content)
        files[name] = path
    return colour, files


def test_missing_file_and_folder_fail_before_any_reading(tmp_path):
    with pytest.raises(ValueError, match=r"^image file .*missing.png' does not exist; check the path") as error:
        ImageCollection([np.zeros((8, 8), np.uint8), tmp_path / "missing.png"])
    assert "X" not in str(error.value).replace(str(tmp_path), "")
    with pytest.raises(ValueError, match=r"is a folder, not an image file.*list_images"):
        ImageCollection([str(tmp_path)])


@pytest.mark.parametrize("name", ["truncated_png", "truncated_jpeg", "header_only_png", "empty", "text"])
def test_unreadable_files_name_the_file_and_its_position(image_files, name):
    _, files = image_files
    images = ImageCollection([files["colour"], files[name]])  # existence is checked, content later
    with pytest.raises(ValueError, match=rf"^cannot read image file .*{name}.png.*truncated or corrupt. Replace the file") as error:
        list(images.batches(2, SIZE, MEAN, STD))
    assert "X" not in str(error.value).replace(str(files[name]), "")  # a file remedy, not one about X


def test_list_mixing_paths_pil_images_and_arrays_equals_the_arrays(image_files):
    colour, files = image_files
    mixed = [files["colour"], str(files["colour"]), Image.fromarray(colour), colour, colour.astype(np.float64) / 255]
    tensor, sizes = to_tensor(mixed)
    expected, _ = to_tensor(colour[None])
    for image in tensor:
        torch.testing.assert_close(image, expected[0], atol=1e-6, rtol=0)
    assert sizes == [(12, 10)] * 5


def test_special_file_modes_are_read_with_their_range(tmp_path):
    ramp = np.linspace(0, 65535, 48).astype(np.uint16).reshape(6, 8)
    Image.fromarray(ramp).save(tmp_path / "16bit.png")
    palette = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)).convert("P")
    palette.save(tmp_path / "palette.png")
    Image.new("LA", (8, 6), (128, 255)).save(tmp_path / "grey_alpha.png")
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    tensor, _ = to_tensor([tmp_path / n for n in ["16bit.png", "palette.png", "grey_alpha.png", "cmyk.jpg"]], size=(6, 8))
    pixels = unnormalise(tensor)
    np.testing.assert_allclose(pixels[0, 0].numpy(), ramp / 65535, atol=1e-5)
    np.testing.assert_allclose(pixels[1, 0].numpy(), np.arange(48).reshape(6, 8) / 255, atol=1e-5)
    np.testing.assert_allclose(pixels[2].numpy(), 128 / 255, atol=1e-5)  # opaque: as stored
    np.testing.assert_allclose(pixels[3].mean(dim=(1, 2)).numpy(), [1, 0, 0], atol=0.02)  # CMYK red


# ----------------------------------------------------------------- grey or colour

def grey_flags(X):
    return np.concatenate([b.is_grey for b in ImageCollection(X).batches(2, SIZE, MEAN, STD)])


def test_grey_means_one_channel_or_three_channels_that_agree(image_files):
    colour, files = image_files
    grey = colour[..., 0]
    almost_grey = np.repeat(grey[..., None], 3, axis=-1).astype(np.int16)
    almost_grey[..., 1] += 3  # what a JPEG round trip does to a grey picture
    nearly_colour = almost_grey.copy()
    nearly_colour[0, 0, 2] = int(almost_grey[0, 0, 2]) + int(GREY_TOLERANCE * 255) + 3
    X = [grey, np.repeat(grey[..., None], 3, axis=-1), np.clip(almost_grey, 0, 255).astype(np.uint8),
         np.clip(nearly_colour, 0, 255).astype(np.uint8), colour, files["jpeg"]]
    assert grey_flags(X).tolist() == [True, True, True, False, False, False]


def test_collection_records_what_it_yielded():
    grey, colour = np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8, 3), np.uint8)
    colour[..., 0] = 255
    for X, mode in [(grey, "grey"), (colour, "colour"), (list(grey) + list(colour), "mixed")]:
        images = ImageCollection(X)
        assert images.colour_mode is None
        list(images.batches(2, SIZE, MEAN, STD))
        assert images.colour_mode == mode


def test_colour_images_for_a_grey_detector_are_yielded_with_a_warning_naming_each():
    X = np.zeros((5, 8, 8, 3), np.uint8)
    X[[1, 3], 2, 2] = (255, 0, 0)  # a rust-coloured stain on two grey parts
    images = ImageCollection(X, fitted_colour_mode="grey")
    with pytest.warns(UserWarning, match=r"colour image.*fitted on grey.*scored") as record:
        batches = list(images.batches(2, SIZE, MEAN, STD))
    assert [b for batch in batches for b in batch.indices] == [0, 1, 2, 3, 4]
    named = [(w.message.index, str(w.message).split(" ")[0]) for w in record if "colour image" in str(w.message)]
    assert named == [(1, "X[1]"), (3, "X[3]")]


def test_grey_image_for_a_colour_detector_warns_once():
    X = np.zeros((5, 8, 8, 3), np.uint8)
    X[:, 2, 2] = (255, 0, 0)
    X[[1, 4]] = 100  # grey
    images = ImageCollection(X, fitted_colour_mode="colour")
    with pytest.warns(UserWarning, match=r"X\[1\] is a grey image.*fitted on colour") as record:
        list(images.batches(2, SIZE, MEAN, STD))
    assert len([w for w in record if "grey image" in str(w.message)]) == 1


def test_mixed_fit_accepts_everything():
    X = [np.zeros((8, 8), np.uint8), np.full((8, 8, 3), (255, 0, 0), np.uint8)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(ImageCollection(X, fitted_colour_mode="mixed").batches(2, SIZE, MEAN, STD))


# ----------------------------------------------------------------- maps back to each image's size

def half_pixel_bilinear(values, size):
    """``values`` (h, w) resized to ``size`` by bilinear interpolation, pixel centres at half-integers.

    Output pixel ``i`` of ``n_out`` samples the input at ``(i + 0.5) * n_in / n_out - 0.5``,
    clamped to the first and last input pixel: the convention by which the images were
    resized to ``input_size``, so that each map pixel lies over its image pixel.
    """

    def weights(n_in, n_out):
        position = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        matrix = np.zeros((n_out, n_in))
        np.add.at(matrix, (np.arange(n_out), low), 1 - (position - low))
        np.add.at(matrix, (np.arange(n_out), high), position - low)
        return matrix

    return weights(values.shape[0], size[0]) @ values @ weights(values.shape[1], size[1]).T


def test_a_map_resized_to_twice_its_width_keeps_pixel_centres_aligned():
    # Centres at half-integers: the new pixels sit a quarter of the way between the old ones.
    # Corner alignment (align_corners=True) would give [0, 1/3, 2/3, 1].
    (resized,) = resize_maps(torch.tensor([[[[0.0, 1.0]]]]), [(1, 4)])
    np.testing.assert_allclose(resized, [[0.0, 0.25, 0.75, 1.0]], atol=1e-7)
    # Halving the size averages pairs of pixels (no antialiasing filter beyond that).
    (halved,) = resize_maps(torch.tensor([[[[0.0, 1.0, 2.0, 3.0]]]]), [(1, 2)])
    np.testing.assert_allclose(halved, [[0.5, 2.5]], atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(
    input_size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    sizes=st.lists(st.sampled_from([(1, 1), (3, 5), (8, 8), (13, 6), (7, 20)]), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_each_map_comes_back_at_its_own_size_and_from_its_own_values(input_size, sizes, seed):
    # Maps of one size are resized together; each must still get its own values back.
    maps = np.random.default_rng(seed).random((len(sizes), 1, *input_size)).astype(np.float32)
    resized = resize_maps(torch.from_numpy(maps), sizes)
    assert len(resized) == len(sizes)
    for anomaly_map, size, result in zip(maps, sizes, resized):
        assert result.shape == size
        np.testing.assert_allclose(result, half_pixel_bilinear(anomaly_map[0].astype(np.float64), size), atol=1e-6)


# ----------------------------------------------------------------- memory

@pytest.mark.parametrize("as_list", [False, True])
def test_stacks_and_lists_are_converted_to_float_one_image_at_a_time(as_list):
    # Eight 256x256 RGB frames: 0.75 MiB each as float32, 6 MiB as a float batch. numpy's
    # allocations are traced; the float copy of one frame must be all there is at a time.
    import tracemalloc

    frames = np.random.default_rng(0).integers(0, 256, (8, 256, 256, 3), dtype=np.uint8)
    X = list(frames) if as_list else frames
    one_frame = frames[0].size * 4
    tracemalloc.start()
    try:
        batches = list(ImageCollection(X).batches(8, SIZE, MEAN, STD))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(batches) == 1 and batches[0].tensor.shape == (8, 3, *SIZE)
    assert one_frame <= peak < 2 * one_frame
