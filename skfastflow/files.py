"""Reading image files as an image viewer shows them, and finding the image files of a folder.

The one home for file reading, shared by the torch detector (:mod:`skfastflow.images`),
the torch-free runtime, :func:`skfastflow.datasets.load_mvtec`, the overlays and the
command line. It imports numpy and Pillow only.

- :func:`read_image`: the pixels a person sees when opening the file in an image viewer.
- :func:`read_mask`: a defect mask file as a bool array, read by the same rule.
- :func:`list_images`: the image files of a folder (sub-folders included), naming every
  file it skips.

What "as a viewer shows it" means, for each way a file's stored pixels differ from its
picture (``docs/errors.md`` has the same list as a table):

- **EXIF orientation** (tag 274, in JPEG, TIFF, PNG, WebP; all 8 values): the stored
  pixels are rotated and/or mirrored upright, so the array has the displayed height and
  width. A value outside 1..8 is ignored, with a warning.
- **Embedded ICC colour profile** (Adobe RGB, Display P3, ProPhoto, grey "Dot Gain",
  CMYK press profiles...): 8-bit pixels are converted to sRGB, as a colour-managed viewer
  does. Profiles named sRGB are taken as sRGB without conversion. A profile that cannot be
  used, or one on 16-bit, 32-bit or floating-point pixels, is ignored, with a warning.
- **CMYK** (JPEG, TIFF) without a profile: Pillow's conversion
  ``R = (255 - C) (255 - K) / 255``; JPEGs with Adobe's inverted CMYK are read
  un-inverted, as Pillow and web browsers do. **YCbCr** and **CIE L*a*b*** files become
  RGB.
- **Transparency** (an alpha channel, a palette's transparent entry, a PNG's transparent
  colour): transparent pixels are composited over **black**, so a half transparent pixel
  shows half its colour. Black because masks drawn on a transparent layer then read as
  "no defect" where transparent; a warning names files that have transparent pixels.
- **Palette** images become RGB, or grey when every palette colour is grey. **1-bit**
  images become 0 / 255 grey.
- **16-bit** grey files keep their range (``uint16``, 0..65535). Pillow reads 16-bit
  colour PNG and TIFF as 8-bit colour, which is what a viewer shows.
- **32-bit integer** files (TIFF): read as 16-bit when every value lies in 0..65535 (with
  a warning: such files have no agreed display range), refused otherwise.
- **Floating-point** files (32-bit float TIFF, PFM, FITS): they hold measurements
  (heights in mm, temperatures...), and viewers disagree on how to show them. Values in
  [0, 1] are read as brightness 0 (black) to 1 (white), with a warning; any other range,
  NaN or infinity is refused, with the remedy of re-saving as an 8- or 16-bit file.
- **Several frames** (multi-page TIFF, animated GIF / WebP / PNG): the first frame, which
  is what a viewer shows first, with a warning naming the file. Camera JPEGs with
  embedded previews (MPO) and Photoshop files (whose frames are layers) give their main
  picture without a warning.
- **PNG gamma** (a ``gAMA`` chunk without an ICC profile or ``sRGB`` chunk): ignored, as
  most viewers other than web browsers do; a warning names files whose gamma is not the
  usual 1/2.2.

Results: ``(H, W)`` for grey files, ``(H, W, 3)`` for colour files (never an alpha
channel); ``uint8`` for 8-bit files, ``uint16`` for 16-bit ones, ``float32`` in [0, 1] for
floating-point ones. Every problem with a file raises ``ValueError`` naming the file and
what to do with the file; every warning is an :class:`ImageWarning` naming the file.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageFile, UnidentifiedImageError

__all__ = [
    "ImageWarning",
    "SkippedFile",
    "check_image_path",
    "describe_skipped",
    "grouped_image_warnings",
    "image_suffixes",
    "image_to_array",
    "list_images",
    "read_image",
    "read_image_size",
    "read_mask",
]


class ImageWarning(UserWarning):
    """A warning about one image.

    Parameters
    ----------
    message : str
        The warning's text; it names the image (``subject``).
    source : str, optional
        The image's file, when it came from one.
    index : int, optional
        The image's position in the collection a detector method was called with, when
        the warning came from there.
    subject : str, optional
        How ``message`` names the image (e.g. ``"X[3]"``), so that a caller that knows the
        file behind position ``index`` can name it instead.
    """

    def __init__(self, message: str, *, source: str | None = None, index: int | None = None, subject: str | None = None):
        super().__init__(message)
        self.source = source
        self.index = index
        self.subject = subject


class SkippedFile(NamedTuple):
    """A file or folder :func:`list_images` did not return, and why."""

    path: Path
    reason: str


# Formats Pillow lists but cannot decode into pixels here: stubs that need a plugin the
# user registers (BUFR, GRIB, HDF5, WMF outside Windows) and MPEG, of which Pillow reads
# only the header.
_UNDECODABLE_FORMATS = {"MPEG"}

# Formats whose frames after the first are not further pictures: MPO's are previews (or
# the second eye of a stereo pair), PSD's are layers (frame 0 is the flattened picture),
# ICO/ICNS/CUR hold one icon at several sizes (Pillow opens the largest).
_SINGLE_PICTURE_FORMATS = {"MPO", "PSD", "ICO", "ICNS", "CUR"}

_EIGHT_BIT_RANGE = 255
_SIXTEEN_BIT_RANGE = 65535
_USUAL_PNG_GAMMA = 1.0 / 2.2
_ORIENTATION_TAG = ExifTags.Base.Orientation

_RESAVE = "re-save it as an 8-bit or 16-bit PNG"


@functools.cache
def image_suffixes() -> frozenset[str]:
    """File name suffixes of every format Pillow can decode here, lower case with the dot.

    Returns
    -------
    suffixes : frozenset of str
        E.g. ``{".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".pgm", ...}``.
        Suffixes are compared case-insensitively by :func:`list_images`.
    """
    Image.init()
    decodable = set()
    for format_name, (factory, _) in Image.OPEN.items():
        is_stub = isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)
        if not is_stub and format_name not in _UNDECODABLE_FORMATS:
            decodable.add(format_name)
    if "EPS" in decodable:
        from PIL import EpsImagePlugin

        if not EpsImagePlugin.has_ghostscript():  # Pillow renders EPS with Ghostscript only
            decodable.discard("EPS")
    # JPEG's opener also reads .mpo files (camera JPEGs with previews), registered as MPO.
    decodable.add("MPO")
    return frozenset(suffix for suffix, name in Image.registered_extensions().items() if name in decodable)


# ---------------------------------------------------------------------------- listing


def list_images(folder, *, recursive: bool = True, return_skipped: bool = False):
    """The image files of ``folder``, sub-folders included, sorted by path.

    An image file is one whose suffix (compared case-insensitively) belongs to a format
    Pillow can decode (:func:`image_suffixes`), e.g. ``.png``, ``.jpg``, ``.tif``,
    ``.bmp``, ``.webp``, ``.pgm``. Files are not opened here: a file with an image
    suffix that turns out unreadable fails when it is read, naming it.

    Skipped, and named: hidden files and folders (name starting with ``.``, e.g.
    ``.DS_Store`` or macOS ``._photo.jpg``), files with other suffixes, links to folders
    (not followed, so a link cannot make a loop), and sub-folders when ``recursive`` is
    False.

    Parameters
    ----------
    folder : str or path-like
        An existing folder.
    recursive : bool, default=True
        Also list the images of sub-folders, at any depth. The command line (``fit``,
        ``predict``, ``evaluate``) and :func:`~skfastflow.datasets.load_mvtec` always do.
    return_skipped : bool, default=False
        Also return the skipped entries. When False, skipped entries are named in one
        :class:`ImageWarning` instead.

    Returns
    -------
    paths : list of Path
        Image files, sorted by their path relative to ``folder`` (folder names compared
        component by component, so ``a.png`` < ``b/a.png`` < ``c.png``).
    skipped : list of SkippedFile
        Only with ``return_skipped=True``: what was left out and why, sorted by path.

    Raises
    ------
    ValueError
        If ``folder`` is not an existing folder.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from PIL import Image
    >>> from skfastflow.files import list_images
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> (folder / "day1").mkdir()
    >>> Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "a.png")
    >>> Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "day1" / "b.webp")
    >>> _ = (folder / "notes.txt").write_text("lot 7")
    >>> paths, skipped = list_images(folder, return_skipped=True)
    >>> [str(p.relative_to(folder)) for p in paths], [(s.path.name, s.reason) for s in skipped]
    (['a.png', 'day1/b.webp'], [('notes.txt', "not an image file (suffix '.txt')")])
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"folder {str(root)!r} does not exist or is not a folder; check the path.")
    suffixes = image_suffixes()
    paths: list[Path] = []
    skipped: list[SkippedFile] = []
    pending = [root]
    while pending:
        directory = pending.pop()
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith("."):
                skipped.append(SkippedFile(entry, "hidden folder" if entry.is_dir() else "hidden file"))
            elif entry.is_dir():
                if entry.is_symlink():
                    skipped.append(SkippedFile(entry, "link to a folder (not followed)"))
                elif recursive:
                    pending.append(entry)
                else:
                    skipped.append(SkippedFile(entry, "sub-folder (not searched)"))
            elif entry.suffix.lower() in suffixes and entry.is_file():
                paths.append(entry)
            else:
                suffix = f"suffix {entry.suffix!r}" if entry.suffix else "no suffix"
                kind = "not an image file" if entry.is_file() else "not a regular file"
                skipped.append(SkippedFile(entry, f"{kind} ({suffix})"))
    order = lambda path: path.relative_to(root).parts  # noqa: E731 - one use, a sort key
    paths.sort(key=order)
    skipped.sort(key=lambda item: order(item.path))
    if return_skipped:
        return paths, skipped
    if skipped:
        warnings.warn(
            ImageWarning(f"{describe_skipped(skipped)} in {str(root)!r}", source=str(root)),
            stacklevel=2,
        )
    return paths


def describe_skipped(skipped: list[SkippedFile], limit: int = 5) -> str:
    """One sentence naming skipped entries (the first ``limit``) and why.

    Parameters
    ----------
    skipped : list of SkippedFile
        As :func:`list_images` returns them.
    limit : int, default=5
        Entries named; the rest are counted.

    Returns
    -------
    sentence : str
        E.g. ``"skipped 2 entries: notes.txt (not an image file (suffix '.txt')); .DS_Store (hidden file)"``.
    """
    names = "; ".join(f"{item.path.name} ({item.reason})" for item in skipped[:limit])
    more = f"; and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"skipped {len(skipped)} {'entry' if len(skipped) == 1 else 'entries'}: {names}{more}"


@contextlib.contextmanager
def grouped_image_warnings(limit: int = 3):
    """Gather the :class:`ImageWarning` s of a block and give each kind once, naming its files.

    Reading a data set can raise the same warning for hundreds of files (JPEG masks, say).
    Inside the block, image warnings are held back; on leaving it, each distinct warning
    (its text with the file's name taken out) is given once, with the first ``limit``
    files it concerns named and the others counted. Other warnings pass unchanged.

    Uses :class:`warnings.catch_warnings`, which changes process-wide state: do not use
    it in several threads at once.

    Parameters
    ----------
    limit : int, default=3
        Files named per kind of warning.

    Examples
    --------
    >>> from skfastflow.files import grouped_image_warnings
    >>> with grouped_image_warnings():  # doctest: +SKIP
    ...     masks = [read_mask(path) for path in mask_paths]
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:  # also when the block fails: its warnings still count
        _warn_grouped(caught, limit)


def _warn_grouped(caught, limit: int) -> None:
    groups: dict[str, list] = {}
    for record in caught:
        message = record.message
        if isinstance(message, ImageWarning) and message.source:
            groups.setdefault(str(message).replace(message.source, "{}"), []).append(message)
        else:
            warnings.warn_explicit(message, record.category, record.filename, record.lineno, source=record.source)
    for group in groups.values():
        first = group[0]
        text = str(first)
        if len(group) > 1:
            names = ", ".join(repr(other.source) for other in group[1 : limit + 1])
            more = f" and {len(group) - 1 - limit} more" if len(group) - 1 > limit else ""
            text += f" The same holds for {len(group) - 1} other file(s): {names}{more}."
        warnings.warn(ImageWarning(text, source=first.source), stacklevel=4)


# ---------------------------------------------------------------------------- reading


def read_image(path) -> np.ndarray:
    """Read an image file as an image viewer shows it.

    See the module docstring for what that means for each kind of file: EXIF orientation,
    ICC profiles, CMYK / YCbCr / Lab, transparency, palettes, 1-, 16- and 32-bit and
    floating-point pixels, several frames.

    Parameters
    ----------
    path : str or path-like
        An image file of any format Pillow reads.

    Returns
    -------
    pixels : ndarray of shape (H, W) or (H, W, 3)
        ``(H, W)`` for grey pictures, ``(H, W, 3)`` RGB (sRGB) for colour ones, at the
        displayed height and width. dtype ``uint8`` (0..255) for 8-bit files, ``uint16``
        (0..65535) for 16-bit ones, ``float32`` in [0, 1] for floating-point ones.

    Raises
    ------
    ValueError
        If the path is missing or a folder, the file is not an image or is truncated or
        corrupt, too large for Pillow's decompression-bomb limit, or holds pixels with no
        display range (floats outside [0, 1], NaN, integers beyond 16 bits). The message
        names the file and what to do with it.

    Warns
    -----
    ImageWarning
        For a file read by a decision that may not be what was meant: transparent pixels,
        several frames, floating-point or 32-bit pixels, an unusable ICC profile or
        orientation tag, an unusual PNG gamma.

    Examples
    --------
    >>> import tempfile, os, numpy as np
    >>> from PIL import Image
    >>> from skfastflow.files import read_image
    >>> path = os.path.join(tempfile.mkdtemp(), "phone.jpg")
    >>> stored = Image.fromarray(np.zeros((48, 64, 3), np.uint8))  # stored sideways
    >>> exif = stored.getexif(); exif[274] = 6  # Orientation: rotate 90 degrees clockwise
    >>> stored.save(path, exif=exif)
    >>> read_image(path).shape  # displayed upright: 64 high, 48 wide
    (64, 48, 3)
    """
    path = os.fspath(path)
    with _opened(path) as image:
        frames = getattr(image, "n_frames", 1)
        image.load()
        return image_to_array(image, source=path, frames=frames)


def read_image_size(path) -> tuple[int, int]:
    """The displayed ``(height, width)`` of an image file, mostly from its header.

    What ``read_image(path).shape[:2]`` would be (EXIF orientation 5 to 8 swaps the
    stored sides), without decoding the pixels of most formats.

    Parameters
    ----------
    path : str or path-like
        An image file.

    Returns
    -------
    size : tuple of 2 ints
        Height and width in pixels.

    Raises
    ------
    ValueError
        As for :func:`read_image`, for a path or a file that cannot be opened.
    """
    path = os.fspath(path)
    with _opened(path) as image:
        width, height = image.size
        if image.format == "TIFF":  # Pillow turns TIFFs upright itself and gives their displayed size
            return height, width
        orientation = _orientation(image, path, "", quiet=True)  # read_image warns, not this
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


@contextlib.contextmanager
def _opened(path: str):
    """``Image.open(path)``, with every way a file can fail turned into a ValueError naming it."""
    check_image_path(path)
    try:
        # Through a file object, not the path: Pillow 13 then does not memory-map the file,
        # whose mapping ignores a TIFF's orientation 5 to 8 and scrambles its pixels.
        with open(path, "rb") as file, Image.open(file) as image:
            yield image
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"image file {path!r} is too large to read safely ({error}). If it is a genuine image, split it "
            "into tiles, or raise PIL.Image.MAX_IMAGE_PIXELS before reading it."
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, IndexError, KeyError) as error:
        # Pillow reports unknown formats, truncated and corrupt data with all of these types.
        raise ValueError(
            f"cannot read image file {path!r} ({error or type(error).__name__}): it is not an image, or it is "
            "truncated or corrupt. Replace the file (re-export or copy it again), or move it out of the folder."
        ) from error


def read_mask(path) -> np.ndarray:
    """Read a defect mask file as a bool array, by the same rule as :func:`read_image`.

    A pixel is a defect when its value lies above half the file's range: above 127.5 for
    8-bit files, 32767.5 for 16-bit files, 0.5 for floating-point files. For colour masks
    the brightest channel counts, so a red scratch on black is a defect. Half the range,
    not "non-zero", because JPEG masks and anti-aliased drawings have values between 0
    and 255 around every defect. A mask that holds only 0 and 1 (labels, which display as
    black) is read as 1 = defect.

    Parameters
    ----------
    path : str or path-like
        A mask image file, defects bright.

    Returns
    -------
    mask : ndarray of shape (H, W), dtype bool
        True at defect pixels, at the displayed height and width (EXIF orientation
        applied, as for the image the mask belongs to).

    Raises
    ------
    ValueError
        As for :func:`read_image`.

    Warns
    -----
    ImageWarning
        When the mask holds values between 0 and its top (255, 65535 or 1), or only 0
        and 1, naming the file; besides :func:`read_image`'s warnings.
    """
    path = os.fspath(path)
    pixels = read_image(path)
    if pixels.ndim == 3:
        pixels = pixels.max(axis=2)
    top = 1.0 if pixels.dtype.kind == "f" else float(np.iinfo(pixels.dtype).max)
    if pixels.dtype.kind != "f" and pixels.size and pixels.max() == 1:
        _warn(
            path,
            f"mask {path!r} holds only the values 0 and 1, so it displays as black; it is read as labels, "
            f"1 = defect. To be unambiguous, re-save it with defect pixels {top:g}.",
        )
        return pixels == 1
    if ((pixels > 0) & (pixels < top)).any():
        _warn(
            path,
            f"mask {path!r} holds values between 0 and {top:g} (a JPEG or anti-aliased mask); pixels above "
            f"{top / 2:g} are read as defect. Save masks as PNG with only 0 and {top:g} to make them exact.",
        )
    return pixels > top / 2


def image_to_array(image, *, source: str | None = None, frames: int = 1) -> np.ndarray:
    """An opened PIL image as the array :func:`read_image` returns for its file.

    Parameters
    ----------
    image : PIL.Image.Image
        An image, loaded or not; its current frame is read.
    source : str, optional
        The file it came from, named in messages (else "a PIL image").
    frames : int, default=1
        How many frames its file holds (``image.n_frames``); above 1 (and for a format
        whose frames are separate pictures) a warning says only the first is used.

    Returns
    -------
    pixels : ndarray of shape (H, W) or (H, W, 3)
        As for :func:`read_image`.

    Raises
    ------
    ValueError
        For pixels with no display range (see :func:`read_image`).
    """
    name = f"image file {source!r}" if source is not None else "a PIL image"
    image.load()  # first: loading a TIFF turns it upright and drops its orientation tag
    if frames > 1 and image.format not in _SINGLE_PICTURE_FORMATS:
        _warn(
            source,
            f"{name} holds {frames} frames (pages or animation); only the first is used, as a viewer "
            "shows first. To inspect the others, save each frame as its own file.",
        )
    orientation = _orientation(image, source, name)
    _warn_about_gamma(image, source, name)
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        if image.info.get("icc_profile"):
            _warn(source, f"{name} embeds a colour profile, which is not applied to its {mode} pixels (lcms "
                  "converts 8-bit ones only); they are read as stored.")
    if mode.startswith("I;16"):
        pixels = np.asarray(image).astype(np.uint16)
    elif mode == "I":
        pixels = _sixteen_bit(np.asarray(image), image, source, name)
    elif mode == "F":
        pixels = _unit_float(np.asarray(image), source, name)
    else:
        pixels = _eight_bit(image, source, name)
    return np.ascontiguousarray(_upright(pixels, orientation))


def check_image_path(path) -> None:
    """Refuse a path that is not an existing file, before anything is read.

    Parameters
    ----------
    path : str or path-like

    Raises
    ------
    ValueError
        If ``path`` is a folder or does not exist; the message says what to pass instead.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(
            f"{path!r} is a folder, not an image file; pass the image files in it, e.g. "
            f"skfastflow.files.list_images({path!r})."
        )
    if not os.path.isfile(path):
        raise ValueError(f"image file {path!r} does not exist; check the path.")


def _warn(source: str | None, message: str) -> None:
    # stacklevel 3: the caller of read_image / read_mask / image_to_array (approximately).
    warnings.warn(ImageWarning(message, source=source), stacklevel=3)


def _orientation(image, source, name, quiet: bool = False) -> int:
    """The EXIF orientation (1..8) of ``image``; 1, with a warning unless ``quiet``, when absent or unusable."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for damaged EXIF blocks
        if quiet:
            return 1
        _warn(source, f"{name} has an EXIF block Pillow cannot parse ({error}); it is read as stored, without "
              "orientation. Re-save it with a photo editor to repair the metadata.")
        return 1
    if value not in range(1, 9):
        if quiet:
            return 1
        _warn(source, f"{name} has an EXIF orientation of {value!r}, not one of 1..8; it is read as stored.")
        return 1
    return int(value)


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation: the stored rows and columns as displayed (EXIF 2.3, tag 274)."""
    if orientation in (5, 6, 7, 8):  # the stored rows are displayed as columns
        pixels = pixels.swapaxes(0, 1)
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation in (2, 3):
        pixels = pixels[:, ::-1]
    if orientation in (3, 4):
        pixels = pixels[::-1]
    return pixels


def _warn_about_gamma(image, source, name) -> None:
    gamma = image.info.get("gamma")
    colour_managed = "icc_profile" in image.info or "srgb" in image.info
    if gamma is not None and not colour_managed and abs(gamma - _USUAL_PNG_GAMMA) > 0.01:
        _warn(source, f"{name} declares a gamma of {gamma:g} (usual: 0.4545); the gamma is ignored, as most "
              "viewers outside web browsers do, so the pixels are read as stored.")


def _sixteen_bit(pixels: np.ndarray, image, source, name) -> np.ndarray:
    """32-bit integer pixels (Pillow mode I) as uint16, when they fit 0..65535."""
    low, high = (int(pixels.min()), int(pixels.max())) if pixels.size else (0, 0)
    if low < 0 or high > _SIXTEEN_BIT_RANGE:
        raise ValueError(
            f"{name} holds integer pixels from {low} to {high}, beyond the 16-bit range 0..65535 that "
            f"images have, so there is no agreed way to show them. {_RESAVE[0].upper()}{_RESAVE[1:]} or TIFF, mapping "
            "the values you want to inspect onto 0..65535 the same way for every image."
        )
    bits = getattr(image, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    if bits is not None and max(np.atleast_1d(bits)) > 16:
        _warn(source, f"{name} has 32-bit integer pixels, which have no agreed display range; as they all "
              "fit 0..65535 they are read as 16-bit (65535 = white). If that is not what they mean, "
              f"{_RESAVE} or TIFF.")
    return pixels.astype(np.uint16)


def _unit_float(pixels: np.ndarray, source, name) -> np.ndarray:
    """Floating-point pixels as float32 in [0, 1], refused when they are outside it."""
    if not np.isfinite(pixels).all():
        raise ValueError(
            f"{name} holds NaN or infinite pixels (missing measurements). Fill them (e.g. with the "
            f"surrounding values) and {_RESAVE} or TIFF, with the values you want to inspect mapped onto 0..65535."
        )
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{name} holds floating-point pixels from {low:g} to {high:g}: measurements such as "
            "heights, not brightness, and viewers disagree on how to show them. Re-save it as a 16-bit PNG or "
            "TIFF, mapping a fixed range of values (the same for every image, e.g. the part's height "
            "tolerance) onto 0..65535; a range stretched per image would hide defects."
        )
    _warn(source, f"{name} holds floating-point pixels; they lie in [0, 1] and are read as brightness, "
          "0 = black, 1 = white. If they are measurements, re-save it as a 16-bit PNG or TIFF with a fixed "
          "mapping onto 0..65535.")
    return pixels.astype(np.float32, copy=False)


def _eight_bit(image, source, name) -> np.ndarray:
    """8-bit modes (and the colour spaces Pillow decodes to 8 bits) as displayed uint8 grey or sRGB."""
    mode = image.mode
    icc = image.info.get("icc_profile")
    transparent = "transparency" in image.info
    grey_palette = mode in ("P", "PA") and _palette_is_grey(image)
    if mode == "CMYK" and icc:
        converted = _to_srgb(image, icc, source, name)
        image, icc = (converted, None) if converted is not None else (image.convert("RGB"), None)
    if mode == "1":
        image = image.convert("L")
    elif mode in ("P", "PA"):
        image = image.convert("RGBA" if mode == "PA" or transparent else "RGB")
    elif mode == "L" and transparent:
        image = image.convert("LA")
    elif mode == "RGB" and transparent:
        image = image.convert("RGBA")
    elif mode in ("La", "LA"):
        image = image.convert("LA")
    elif mode in ("RGBa", "RGBA"):
        image = image.convert("RGBA")
    elif image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # RGBX, CMYK without a profile, YCbCr, LAB, HSV
    alpha = None
    if image.mode in ("LA", "RGBA"):
        alpha = np.asarray(image.getchannel("A"))
        image = image.convert(image.mode[:-1])
    if icc:
        converted = _to_srgb(image, icc, source, name)
        if converted is not None:
            image = converted
    pixels = np.asarray(image)
    if grey_palette and pixels.ndim == 3:
        pixels = pixels[..., 0]
    if alpha is not None and (alpha < _EIGHT_BIT_RANGE).any():
        _warn(source, f"{name} has transparent pixels; they are read as if shown over black. To choose "
              "another background, re-save it without transparency.")
        weight = alpha.astype(np.float32) / _EIGHT_BIT_RANGE
        if pixels.ndim == 3:
            weight = weight[..., None]
        pixels = np.rint(pixels * weight).astype(np.uint8)
    return pixels


def _palette_is_grey(image) -> bool:
    colours = np.asarray(image.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
    return bool(colours.size) and bool((colours == colours[:, :1]).all())


def _to_srgb(image, icc: bytes, source, name):
    """``image`` (L, RGB or CMYK) converted from its embedded profile to sRGB, or None when unusable."""
    try:
        if image.mode == "L":
            table = _grey_table(icc)
            return None if table is None else image.point(table)
        transform = _srgb_transform(icc, image.mode)
    except (OSError, ImageCms.PyCMSError, ValueError, TypeError) as error:
        _warn(source, f"{name} embeds a colour profile that cannot be used ({error}); its pixels are read "
              "as sRGB. Re-save it converted to sRGB to be sure of its colours.")
        return None
    return None if transform is None else ImageCms.applyTransform(image, transform)


@functools.lru_cache(maxsize=16)
def _srgb_transform(icc: bytes, mode: str, flags: int = 0):
    """A cached transform from profile ``icc`` to sRGB for ``mode`` images; None when it is sRGB already."""
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    if "srgb" in ImageCms.getProfileDescription(profile).lower().replace(" ", ""):
        return None
    return ImageCms.buildTransform(profile, ImageCms.createProfile("sRGB"), mode, "RGB", flags=flags)


@functools.lru_cache(maxsize=16)
def _grey_table(icc: bytes) -> list[int] | None:
    """The sRGB grey level of each of the 256 levels of a grey profile; None for sRGB-named profiles.

    Computed once per profile, without lcms's optimisation: its optimised 8-bit grey curves
    are up to 10 levels off near black.
    """
    transform = _srgb_transform(icc, "L", ImageCms.Flags.NOOPTIMIZE)
    if transform is None:
        return None
    levels = Image.frombytes("L", (256, 1), bytes(range(256)))
    return np.asarray(ImageCms.applyTransform(levels, transform))[0, :, 1].tolist()
