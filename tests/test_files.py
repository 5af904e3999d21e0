"""skfastflow.files: every file reads as an image viewer shows it; every folder entry is used or named.

No model here, no real data set: tiny images written to tmp_path. The right values come
from the file format's definition (EXIF orientation, sRGB's transfer curve, compositing
over black), not from the code under test.
"""

import contextlib
import struct
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from skfastflow.files import (
    ImageWarning,
    grouped_image_warnings,
    image_suffixes,
    list_images,
    read_image,
    read_image_size,
    read_mask,
)

REPO = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ORIENTATION = 274

# How a viewer turns the stored pixels upright, per EXIF 2.3 (tag 274), in Pillow's terms.
DISPLAY = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,  # 90 degrees clockwise
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Its inverse: what a camera stores for an upright picture (6 and 8 undo each other).
STORE = {**DISPLAY, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def save_oriented(upright, path, orientation, **options):
    """Save ``upright`` (an array) as a camera would: stored pixels turned, the tag saying how to undo it."""
    image = Image.fromarray(upright)
    if STORE[orientation] is not None:
        image = image.transpose(STORE[orientation])
    exif = image.getexif()
    exif[ORIENTATION] = orientation
    image.save(path, exif=exif, **options)


@contextlib.contextmanager
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ----------------------------------------------------------------- EXIF orientation

@FAST
@given(
    upright=hnp.arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 3]))),
    orientation=st.integers(1, 8),
    suffix=st.sampled_from([".png", ".tif", ".webp"]),
)
def test_every_exif_orientation_reads_as_the_upright_picture(upright, orientation, suffix):
    upright = upright[..., 0] if upright.shape[2] == 1 else upright
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"photo{suffix}"
        save_oriented(upright, path, orientation, **({"lossless": True} if suffix == ".webp" else {}))
        pixels = read_image(path)
        assert read_image_size(path) == upright.shape[:2]
    if suffix == ".webp" and upright.ndim == 2:
        pixels = pixels[..., 0]  # WebP stores grey as RGB
    np.testing.assert_array_equal(pixels, upright)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", [".png", ".tif", ".webp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_each_orientation_and_format_reads_upright(tmp_path, orientation, suffix, channels):
    # Uncompressed TIFFs with orientation 5 to 8 come out scrambled when Pillow 13 maps the file.
    upright = np.arange(5 * 7 * channels, dtype=np.uint8).reshape(5, 7, channels).squeeze() * 3
    save_oriented(upright, tmp_path / f"photo{suffix}", orientation, **({"lossless": True} if suffix == ".webp" else {}))
    pixels = read_image(tmp_path / f"photo{suffix}")
    if suffix == ".webp" and channels == 1:
        pixels = pixels[..., 0]  # WebP stores grey as RGB
    np.testing.assert_array_equal(pixels, upright)
    assert read_image_size(tmp_path / f"photo{suffix}") == (5, 7)


def test_phone_photo_stored_sideways_has_the_displayed_shape(tmp_path):
    # The photo: stored 64 wide and 48 high, Orientation=6, displayed 48 wide and 64 high.
    upright = np.zeros((64, 48, 3), np.uint8)
    upright[:8] = 255  # a bright band at the top of the displayed picture
    save_oriented(upright, tmp_path / "part.jpg", 6, quality=95)
    pixels = read_image(tmp_path / "part.jpg")
    assert pixels.shape == (64, 48, 3)
    assert pixels[:8].mean() > 250 and pixels[8:].mean() < 5


def test_unusable_orientation_value_is_read_as_stored_and_named(tmp_path):
    stored = np.arange(12, dtype=np.uint8).reshape(3, 4)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[ORIENTATION] = 9
    image.save(tmp_path / "odd.png", exif=exif)
    with pytest.warns(ImageWarning, match=r"odd.png' has an EXIF orientation of 9, not one of 1..8"):
        np.testing.assert_array_equal(read_image(tmp_path / "odd.png"), stored)


# ----------------------------------------------------------------- modes and formats

rgb_images = hnp.arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8), st.just(3)))

# (mode, suffix) -> how to write an RGB picture in that encoding, and what a viewer shows.
ENCODINGS = {
    ("L", ".png"): (lambda rgb: Image.fromarray(rgb[..., 0]), lambda rgb: rgb[..., 0]),
    ("L", ".pgm"): (lambda rgb: Image.fromarray(rgb[..., 0]), lambda rgb: rgb[..., 0]),
    ("L", ".bmp"): (lambda rgb: Image.fromarray(rgb[..., 0]), lambda rgb: rgb[..., 0]),
    ("RGB", ".ppm"): (Image.fromarray, lambda rgb: rgb),
    ("RGB", ".tga"): (Image.fromarray, lambda rgb: rgb),
    ("RGB", ".tif"): (Image.fromarray, lambda rgb: rgb),
    ("RGB", ".webp"): (Image.fromarray, lambda rgb: rgb),
    ("1", ".png"): (
        lambda rgb: Image.fromarray(rgb[..., 0] >= 128),
        lambda rgb: np.where(rgb[..., 0] >= 128, 255, 0).astype(np.uint8),
    ),
    ("1", ".tif"): (
        lambda rgb: Image.fromarray(rgb[..., 0] >= 128),
        lambda rgb: np.where(rgb[..., 0] >= 128, 255, 0).astype(np.uint8),
    ),
    ("P", ".png"): (lambda rgb: Image.fromarray(rgb).quantize(256, method=Image.Quantize.FASTOCTREE), None),
    ("P", ".gif"): (lambda rgb: Image.fromarray(rgb).quantize(256, method=Image.Quantize.FASTOCTREE), None),
    ("P grey", ".png"): (lambda rgb: Image.fromarray(rgb[..., 0]).convert("P"), lambda rgb: rgb[..., 0]),
    ("LA opaque", ".png"): (lambda rgb: Image.fromarray(rgb[..., 0]).convert("LA"), lambda rgb: rgb[..., 0]),
    ("RGBA opaque", ".png"): (lambda rgb: Image.fromarray(rgb).convert("RGBA"), lambda rgb: rgb),
    ("RGBA opaque", ".tif"): (lambda rgb: Image.fromarray(rgb).convert("RGBA"), lambda rgb: rgb),
    ("CMYK", ".tif"): (lambda rgb: Image.fromarray(rgb).convert("CMYK"), lambda rgb: rgb),
    ("I;16", ".png"): (
        lambda rgb: Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        lambda rgb: rgb[..., 0].astype(np.uint16) * 257,
    ),
    ("I;16", ".tif"): (
        lambda rgb: Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        lambda rgb: rgb[..., 0].astype(np.uint16) * 257,
    ),
    ("I;16", ".pgm"): (
        lambda rgb: Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        lambda rgb: rgb[..., 0].astype(np.uint16) * 257,
    ),
}


@FAST
@given(rgb=rgb_images, encoding=st.sampled_from(sorted(ENCODINGS)))
def test_every_mode_pillow_saves_reads_back_as_displayed(rgb, encoding):
    write, displayed = ENCODINGS[encoding]
    image = write(rgb)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"image{encoding[1]}"
        image.save(path, **({"lossless": True} if encoding[1] == ".webp" else {}))
        with no_warnings():
            pixels = read_image(path)
    # A palette image displays its palette colours (computed here from the palette itself);
    # it may come back grey (H, W) only when what it displays is grey.
    expected = displayed(rgb) if displayed else np.asarray(image.convert("RGB"))
    assert pixels.dtype == expected.dtype
    if pixels.ndim == 2 and expected.ndim == 3:
        assert (expected == expected[..., :1]).all()
        pixels = np.dstack([pixels] * 3)
    np.testing.assert_array_equal(pixels, expected)


def test_cmyk_jpeg_with_adobes_inverted_values_reads_as_its_colour(tmp_path):
    # Pillow writes CMYK JPEGs the Adobe way (inverted, APP14 marker), as Photoshop does.
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "red.jpg", quality=95)
    assert b"Adobe" in (tmp_path / "red.jpg").read_bytes()
    pixels = read_image(tmp_path / "red.jpg")
    np.testing.assert_allclose(pixels.reshape(-1, 3).mean(axis=0), [255, 0, 0], atol=3)


def test_ycbcr_and_lab_files_read_as_rgb(tmp_path):
    Image.new("YCbCr", (4, 4), (76, 85, 255)).save(tmp_path / "ycbcr.jpg", quality=100)  # BT.601 red
    np.testing.assert_allclose(read_image(tmp_path / "ycbcr.jpg").reshape(-1, 3).mean(0), [255, 0, 0], atol=3)
    Image.new("LAB", (4, 4), (255, 128, 128)).save(tmp_path / "lab.tif")  # L*=100, a*=b*=0: white
    np.testing.assert_allclose(read_image(tmp_path / "lab.tif"), 255, atol=1)


# ----------------------------------------------------------------- transparency

@FAST
@given(
    rgb=rgb_images,
    alpha=hnp.arrays(np.uint8, st.just((8, 8)), elements=st.sampled_from([0, 1, 64, 128, 254, 255])),
)
def test_transparent_pixels_are_composited_over_black(rgb, alpha):
    alpha = alpha[: rgb.shape[0], : rgb.shape[1]]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rgba.png"
        Image.fromarray(np.dstack([rgb, alpha])).save(path)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            pixels = read_image(path)
    expected = np.floor(rgb * (alpha[..., None] / 255.0) + 0.5)
    np.testing.assert_allclose(pixels, expected, atol=0.5 + 1e-9)  # rounding of exact halves may differ
    named = [w for w in record if "has transparent pixels" in str(w.message)]
    assert len(named) == int((alpha < 255).any())


def test_palette_transparency_and_png_colour_key_show_black(tmp_path):
    indices = np.array([[0, 1], [1, 0]], np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([200, 10, 10, 10, 200, 10])
    palette.save(tmp_path / "palette.png", transparency=1)
    grey = Image.fromarray(np.array([[7, 90], [90, 7]], np.uint8))
    grey.save(tmp_path / "grey_key.png", transparency=90)
    with pytest.warns(ImageWarning, match="palette.png' has transparent pixels"):
        np.testing.assert_array_equal(read_image(tmp_path / "palette.png"), [[[200, 10, 10], [0, 0, 0]], [[0, 0, 0], [200, 10, 10]]])
    with pytest.warns(ImageWarning, match="grey_key.png' has transparent pixels"):
        np.testing.assert_array_equal(read_image(tmp_path / "grey_key.png"), [[7, 0], [0, 7]])


# ----------------------------------------------------------------- colour profiles

def icc_profile(colour_space: bytes, gamma: float = 1.0, name: str = "linear test") -> bytes:
    """A minimal ICC v2 display profile: sRGB's primaries (or grey) with a pure power-law curve."""
    def s15(value):
        return struct.pack(">i", round(value * 65536))

    def xyz(x, y, z):
        return b"XYZ " + bytes(4) + s15(x) + s15(y) + s15(z)

    text = name.encode() + b"\0"
    description = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(78)
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)
    tags = [(b"desc", description), (b"wtpt", xyz(0.9642, 1.0, 0.8249))]
    if colour_space == b"GRAY":
        tags.append((b"kTRC", curve))
    else:  # sRGB's primaries adapted to D50, the ICC's connection space
        tags += [(b"rXYZ", xyz(0.4361, 0.2225, 0.0139)), (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)), (b"bXYZ", xyz(0.1431, 0.0606, 0.7141))]
        tags += [(signature, curve) for signature in (b"rTRC", b"gTRC", b"bTRC")]
    start = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">II", start + len(data), len(body))
        data += body
    header = (
        struct.pack(">I", start + len(data)) + bytes(4) + struct.pack(">I", 0x02100000) + b"mntr" + colour_space
        + b"XYZ " + bytes(12) + b"acsp" + bytes(28) + s15(0.9642) + s15(1.0) + s15(0.8249) + bytes(48)
    )
    return header + struct.pack(">I", len(tags)) + table + data


def srgb_levels(linear_levels):
    """sRGB's transfer function (IEC 61966-2-1) applied to 0..255 levels of linear light."""
    x = np.asarray(linear_levels) / 255.0
    return np.rint(255 * np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055))


def test_embedded_colour_profiles_are_converted_to_srgb(tmp_path):
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(np.dstack([ramp] * 3)).save(tmp_path / "linear.png", icc_profile=icc_profile(b"RGB "))
    Image.fromarray(ramp).save(tmp_path / "linear_grey.png", icc_profile=icc_profile(b"GRAY"))
    with no_warnings():
        colour, grey = read_image(tmp_path / "linear.png"), read_image(tmp_path / "linear_grey.png")
    # Linear light 128 is what sRGB stores as 188: a viewer shows the file brighter than its values.
    np.testing.assert_allclose(colour, np.dstack([srgb_levels(ramp)] * 3), atol=1)
    assert grey.shape == (16, 16)
    np.testing.assert_array_equal(grey, srgb_levels(ramp))


def test_a_broken_colour_profile_is_ignored_and_named(tmp_path):
    pixels = np.full((4, 4, 3), 90, np.uint8)
    Image.fromarray(pixels).save(tmp_path / "broken_icc.png", icc_profile=b"not a profile" * 10)
    with pytest.warns(ImageWarning, match="broken_icc.png' embeds a colour profile that cannot be used"):
        np.testing.assert_array_equal(read_image(tmp_path / "broken_icc.png"), pixels)


# ----------------------------------------------------------------- deep and float pixels

def test_float_tiff_of_heights_in_mm_gets_a_file_remedy(tmp_path):
    heights = np.linspace(12.5, 14.0, 48, dtype=np.float32).reshape(6, 8)  # mm
    Image.fromarray(heights).save(tmp_path / "height.tif")
    with pytest.raises(ValueError, match=r"height.tif' holds floating-point pixels from 12.5 to 14.*Re-save it as a 16-bit PNG") as error:
        read_image(tmp_path / "height.tif")
    message = str(error.value)
    assert "divide by 255" not in message and "X" not in message.replace(str(tmp_path), "")


def test_float_file_in_unit_range_is_brightness_with_a_warning(tmp_path):
    values = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(values).save(tmp_path / "unit.tif")
    with pytest.warns(ImageWarning, match=r"unit.tif' holds floating-point pixels; they lie in \[0, 1\]"):
        pixels = read_image(tmp_path / "unit.tif")
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, values)


def test_float_file_with_missing_values_is_refused(tmp_path):
    values = np.full((3, 4), 0.5, np.float32)
    values[1, 2] = np.nan
    Image.fromarray(values).save(tmp_path / "gaps.tif")
    with pytest.raises(ValueError, match=r"gaps.tif' holds NaN or infinite pixels.*Fill them"):
        read_image(tmp_path / "gaps.tif")


def test_32_bit_integer_files(tmp_path):
    small = (np.arange(12, dtype=np.int32) * 5000).reshape(3, 4)
    Image.fromarray(small).save(tmp_path / "small.tif")
    with pytest.warns(ImageWarning, match=r"small.tif' has 32-bit integer pixels.*read as 16-bit"):
        pixels = read_image(tmp_path / "small.tif")
    assert pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, small)
    Image.fromarray(small * 100).save(tmp_path / "large.tif")
    with pytest.raises(ValueError, match=r"large.tif' holds integer pixels from 0 to 5500000.*Re-save it"):
        read_image(tmp_path / "large.tif")


# ----------------------------------------------------------------- frames, gamma, bad files

def test_multi_frame_files_give_their_first_frame_and_name_the_file(tmp_path):
    frames = [Image.fromarray(np.full((4, 5), level, np.uint8)) for level in (10, 200, 90)]
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    for name in ("pages.tif", "anim.gif"):
        with pytest.warns(ImageWarning, match=rf"{name}' holds 3 frames.*only the first is used"):
            np.testing.assert_array_equal(read_image(tmp_path / name), np.full((4, 5), 10))


def test_unusual_png_gamma_is_named(tmp_path):
    image = Image.fromarray(np.full((2, 2), 50, np.uint8))
    image.save(tmp_path / "linear_gamma.png")
    data = (tmp_path / "linear_gamma.png").read_bytes()
    # Insert a gAMA chunk of 1.0 (100000) after IHDR (8-byte signature + 25-byte IHDR chunk).
    body = b"gAMA" + struct.pack(">I", 100000)
    import zlib

    chunk = struct.pack(">I", 4) + body + struct.pack(">I", zlib.crc32(body))
    (tmp_path / "linear_gamma.png").write_bytes(data[:33] + chunk + data[33:])
    with pytest.warns(ImageWarning, match=r"linear_gamma.png' declares a gamma of 1 .*read as stored"):
        np.testing.assert_array_equal(read_image(tmp_path / "linear_gamma.png"), np.full((2, 2), 50))


@pytest.mark.parametrize("content", [b"", b"not an image", "half a png"])
def test_unreadable_files_get_a_file_remedy_naming_them(tmp_path, content):
    if content == "half a png":
        Image.fromarray(np.zeros((40, 40, 3), np.uint8) + 9).save(tmp_path / "whole.png")
        content = (tmp_path / "whole.png").read_bytes()[:60]
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(ValueError, match=r"^cannot read image file '.*bad.png' .*Replace the file") as error:
        read_image(tmp_path / "bad.png")
    assert "X" not in str(error.value).replace(str(tmp_path), "")
    with pytest.raises(ValueError, match="does not exist"):
        read_image(tmp_path / "absent.png")


# ----------------------------------------------------------------- masks

def scratch(shape=(64, 64)):
    """A bent 3-pixel-wide scratch with a branch: 232 pixels, as a bool mask."""
    mask = np.zeros(shape, bool)
    rows = np.arange(64)
    cols = np.rint(10 + 0.6 * rows + 6 * np.sin(rows / 9)).astype(int)
    for offset in (-1, 0, 1):
        mask[rows, cols + offset] = True
    mask[30:34, 45:55] = True  # the branch
    return mask


def test_jpeg_mask_gives_perfect_scores_for_a_map_equal_to_the_scratch(tmp_path):
    from skfastflow.metrics import aupro_score, pixel_roc_auc_score

    defect = scratch()
    assert defect.sum() == 232
    Image.fromarray(defect.astype(np.uint8) * 255).save(tmp_path / "scratch_mask.jpg", quality=75)
    stored = np.asarray(Image.open(tmp_path / "scratch_mask.jpg"))
    assert np.count_nonzero(stored) > 2 * defect.sum()  # "non-zero = defect" would grow the scratch
    with pytest.warns(ImageWarning, match=r"scratch_mask.jpg' holds values between 0 and 255 .*above 127.5"):
        mask = read_mask(tmp_path / "scratch_mask.jpg")
    np.testing.assert_array_equal(mask, defect)
    anomaly_map = defect.astype(np.float32)
    assert pixel_roc_auc_score([mask], [anomaly_map]) == 1.0
    assert aupro_score([mask], [anomaly_map]) == 1.0


MASK_ENCODINGS = {
    "8-bit": lambda m: Image.fromarray(m.astype(np.uint8) * 255),
    "1-bit": lambda m: Image.fromarray(m),
    "16-bit": lambda m: Image.fromarray(m.astype(np.uint16) * 65535),
    "red on black": lambda m: Image.fromarray(np.dstack([m.astype(np.uint8) * 255, np.zeros_like(m, np.uint8), np.zeros_like(m, np.uint8)])),
    "white on transparent": lambda m: Image.fromarray(np.dstack([np.full(m.shape + (3,), 255, np.uint8), m.astype(np.uint8) * 255])),
    "labels 0/1": lambda m: Image.fromarray(m.astype(np.uint8)),
}


@FAST
@given(defect=hnp.arrays(bool, st.tuples(st.integers(1, 10), st.integers(1, 10))), encoding=st.sampled_from(sorted(MASK_ENCODINGS)))
def test_every_mask_encoding_reads_back_as_the_defect(defect, encoding):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mask.png"
        MASK_ENCODINGS[encoding](defect).save(path)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            mask = read_mask(path)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, defect)
    if encoding == "labels 0/1" and defect.any():
        assert any("only the values 0 and 1" in str(w.message) for w in record)


@FAST
@given(values=hnp.arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 6))))
def test_masks_are_binarised_at_half_their_range(values):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "soft_mask.png"
        Image.fromarray(values).save(path)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            mask = read_mask(path)
    if values.max() == 1:  # labels
        np.testing.assert_array_equal(mask, values == 1)
        return
    np.testing.assert_array_equal(mask, values >= 128)
    intermediate = ((values > 0) & (values < 255)).any()
    assert any("holds values between 0 and 255" in str(w.message) for w in record) == intermediate


# ----------------------------------------------------------------- listing folders

def test_other_suffixes_count_as_images(tmp_path):
    # The folder: 12 good parts saved as .png, .webp and .pgm (suffixes in any case).
    for index in range(12):
        suffix = [".png", ".webp", ".pgm", ".PNG", ".WebP", ".PGM"][index % 6]
        Image.fromarray(np.full((4, 4), index, np.uint8)).save(tmp_path / f"part{index:02d}{suffix}")
    with no_warnings():
        paths = list_images(tmp_path)
    assert [path.name for path in paths] == sorted(path.name for path in tmp_path.iterdir())
    assert len(paths) == 12
    assert {".png", ".webp", ".pgm", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif"} <= image_suffixes()


def test_sub_folders_are_listed_and_everything_else_is_named(tmp_path):
    names = ["a.png", "day1/b.png", "day1/deep/c.jpg", "day2/d.webp", "z.tif"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("lot 7")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "day1" / "._b.png").write_bytes(b"\0")  # a macOS resource fork
    (tmp_path / ".thumbnails").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "day2")
    paths, skipped = list_images(tmp_path, return_skipped=True)
    assert [str(path.relative_to(tmp_path)) for path in paths] == names
    assert {(str(s.path.relative_to(tmp_path)), s.reason) for s in skipped} == {
        ("notes.txt", "not an image file (suffix '.txt')"),
        (".DS_Store", "hidden file"),
        ("day1/._b.png", "hidden file"),
        (".thumbnails", "hidden folder"),
        ("link", "link to a folder (not followed)"),
    }
    top, top_skipped = list_images(tmp_path, recursive=False, return_skipped=True)
    assert [path.name for path in top] == ["a.png", "z.tif"]
    assert {"day1", "day2"} <= {s.path.name for s in top_skipped if s.reason == "sub-folder (not searched)"}
    with pytest.warns(ImageWarning, match=r"skipped 5 entries: .DS_Store \(hidden file\); .thumbnails \(hidden folder\)"):
        assert list_images(tmp_path) == paths


@settings(max_examples=25, deadline=None)
@given(
    entries=st.lists(
        st.tuples(
            st.lists(st.sampled_from(["a", "b", ".c"]), max_size=2),
            st.sampled_from(["x", "y", ".z", "w w"]),
            st.sampled_from([".png", ".JPG", ".tiff", ".webp", ".txt", "", ".csv", ".pgm"]),
        ),
        max_size=12,
    )
)
def test_every_entry_is_listed_or_named_as_skipped(entries):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        files = set()
        for folders, stem, suffix in entries:
            path = root.joinpath(*folders, stem + suffix)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
            files.add(path)
        paths, skipped = list_images(root, return_skipped=True)
        hidden = lambda path: any(part.startswith(".") for part in path.relative_to(root).parts)  # noqa: E731
        expected = {path for path in files if not hidden(path) and path.suffix.lower() in image_suffixes()}
        assert set(paths) == expected and len(paths) == len(expected)
        # Every other file is named, itself or through the hidden folder holding it.
        for path in files - expected:
            assert any(path == s.path or s.path in path.parents for s in skipped)
        assert paths == sorted(paths, key=lambda path: path.relative_to(root).parts)


def test_listing_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"'.*absent' does not exist or is not a folder"):
        list_images(tmp_path / "absent")


# ----------------------------------------------------------------- grouped warnings, no torch

def test_grouped_warnings_give_each_kind_once_naming_the_files(tmp_path):
    paths = []
    for index in range(5):
        paths.append(tmp_path / f"{index}_mask.jpg")
        Image.fromarray(scratch().astype(np.uint8) * 255).save(paths[-1])
    with pytest.warns(ImageWarning) as record:
        with grouped_image_warnings(limit=2):
            for path in paths:
                read_mask(path)
            warnings.warn("something else", RuntimeWarning)
    texts = [str(w.message) for w in record]
    assert len(texts) == 2
    grouped = next(text for text in texts if "holds values between" in text)
    assert f"mask '{paths[0]}'" in grouped
    assert f"The same holds for 4 other file(s): '{paths[1]}', '{paths[2]}' and 2 more." in grouped
    assert "something else" in texts


def test_files_and_batch_scoring_import_no_torch():
    code = "import sys, skfastflow.files, skfastflow.batch_scoring; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.strip() == "False", result.stderr
