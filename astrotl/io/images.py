"""Galaxy cutouts: FITS, PNG, JPEG, .npy files, .npz arrays and members of .zip archives.

Every reader returns a numpy array as stored (uint8 for PNG/JPEG, the file's dtype for
FITS/.npy) with shape (H, W) or (H, W, C), and raises `ImageError` naming the file (and
the archive member) for anything it cannot read or whose shape is not the expected one.
"""

import io
import pathlib
import zipfile

import numpy as np

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageError(ValueError):
  """An image could not be read.  `path` and `reason` are kept for error tables."""

  def __init__(self, path, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


def _suffix(name: str) -> str:
  name = name.lower()
  for s in FITS_SUFFIXES + PIL_SUFFIXES + (".npy",):
    if name.endswith(s):
      return s
  return pathlib.PurePath(name).suffix


def _decode_pil(data: bytes, where: str) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()  # decode now: Image.open is lazy and a truncated file fails only here
      if im.mode not in ("L", "RGB"):
        im = im.convert("RGBA" if "A" in im.mode else "RGB")
      return np.asarray(im)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise ImageError(where, f"not a readable PNG/JPEG image ({type(e).__name__}: {e})") from e


def _decode_fits(data: bytes, where: str, hdu) -> np.ndarray:
  from astropy.io import fits
  try:
    with fits.open(io.BytesIO(data), memmap=False) as hdul:
      if hdu is None:
        found = [h for h in hdul if getattr(h, "data", None) is not None and h.data.ndim >= 2]
        if not found:
          raise ImageError(where, "FITS file has no image HDU with 2 or more axes")
        arr = found[0].data
      else:
        arr = hdul[hdu].data
      arr = np.array(arr)
  except ImageError:
    raise
  except Exception as e:  # astropy raises OSError, TypeError, IndexError, ... for bad files
    raise ImageError(where, f"not a readable FITS image ({type(e).__name__}: {e})") from e
  # FITS cubes are (C, H, W); the rest of the package is channels-last.
  if arr.ndim == 3 and arr.shape[0] < min(arr.shape[1:]):
    arr = np.moveaxis(arr, 0, -1)
  return arr.astype(arr.dtype.newbyteorder("="))


def _decode_npy(data: bytes, where: str) -> np.ndarray:
  try:
    return np.load(io.BytesIO(data), allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise ImageError(where, f"not a readable .npy array ({type(e).__name__}: {e})") from e


def decode(data: bytes, name: str, where: str | None = None, hdu=None) -> np.ndarray:
  """Decodes image bytes; the format comes from `name`'s suffix, errors name `where`."""
  where = where or name
  suffix = _suffix(name)
  if suffix in FITS_SUFFIXES:
    if suffix.endswith(".gz"):
      import gzip
      try:
        data = gzip.decompress(data)
      except (OSError, EOFError) as e:
        raise ImageError(where, f"corrupt gzip stream ({e})") from e
    return _decode_fits(data, where, hdu)
  if suffix in PIL_SUFFIXES:
    return _decode_pil(data, where)
  if suffix == ".npy":
    return _decode_npy(data, where)
  raise ImageError(where, f"unknown image format {suffix!r}; use one of "
                   f"{', '.join(FITS_SUFFIXES + PIL_SUFFIXES + ('.npy',))}")


def _shape_ok(actual, shape) -> bool:
  return len(actual) == len(shape) and all(s is None or s == d for s, d in zip(shape, actual))


def check_shape(image: np.ndarray, shape, where: str) -> np.ndarray:
  """`image` unchanged if it matches `shape` (None entries match any size)."""
  if shape is not None and not _shape_ok(image.shape, shape):
    raise ImageError(where, f"image has shape {image.shape}, expected {tuple(shape)}")
  return image


def read_image(path, shape=None, hdu=None) -> np.ndarray:
  """One image file (FITS, PNG, JPEG or .npy); `shape` e.g. (106, 106, 3) is enforced."""
  path = pathlib.Path(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    raise ImageError(path, f"cannot read file ({e.strerror or e})") from e
  return check_shape(decode(data, path.name, str(path), hdu), shape, str(path))


def read_zip_images(path, members, shape=None):
  """Yields (member, image) for each named member of a zip archive, in order."""
  path = pathlib.Path(path)
  try:
    archive = zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise ImageError(path, f"not a readable zip archive ({e})") from e
  with archive:
    known = set(archive.namelist())
    for member in members:
      where = f"{path}:{member}"
      if member not in known:
        raise ImageError(where, "no such member in the archive")
      try:
        data = archive.read(member)
      except (OSError, zipfile.BadZipFile) as e:
        raise ImageError(where, f"cannot read archive member ({e})") from e
      yield member, check_shape(decode(data, member, where), shape, where)


def read_npz(path, keys=("images", "labels"), shape=None) -> dict:
  """Named arrays of an .npz (no pickles); `shape` is enforced on each row of 'images'."""
  path = pathlib.Path(path)
  try:
    with np.load(path, allow_pickle=False) as z:
      missing = [k for k in keys if k not in z.files]
      if missing:
        raise ImageError(path, f"missing arrays {missing}; the file has {sorted(z.files)}")
      out = {k: z[k] for k in (keys or z.files)}
  except ImageError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ImageError(path, f"not a readable .npz archive ({type(e).__name__}: {e})") from e
  if shape is not None and "images" in out and not _shape_ok(out["images"].shape[1:], shape):
    raise ImageError(f"{path}:images", f"images have shape {out['images'].shape[1:]}, "
                     f"expected {tuple(shape)}")
  return out
