"""Spectra on the common log-linear wavelength grid.

The grid is LAMOST's: log10(lambda / Angstrom) = LOGLAM0 + DLOGLAM * i, i = 0 .. NPIX-1,
which spans 3699.98 - 9099.6 Angstrom.  Also here: resampling onto it, the Tan and
continuum normalisations (numpy or jax.numpy through an `xp` argument), and the
LAMOST class-label mapping.
"""

import numpy as np

LOGLAM0 = 3.5682
DLOGLAM = 1e-4
NPIX = 3909


def loglam_grid(npix: int = NPIX) -> np.ndarray:
  """log10 wavelength of the common grid (float64)."""
  return LOGLAM0 + DLOGLAM * np.arange(npix, dtype=np.float64)


def wavelength_grid(npix: int = NPIX) -> np.ndarray:
  """Wavelength in Angstrom of the common grid (float64)."""
  return 10.0 ** loglam_grid(npix)


# --- resampling ------------------------------------------------------------------------

def resample(loglam, flux, ivar, mask=None, npix: int = NPIX):
  """Resamples one or a batch of spectra onto the common grid.

  Linear interpolation in log10(lambda) -- not flux-conserving.  LAMOST pixels are
  already 1e-4 dex wide, so this is a sub-pixel shift and keeps flux density units;
  for coarser or finer input, integrate first.  ivar is interpolated the same way
  (zero where either neighbour is bad), and a grid pixel is masked when either
  neighbouring input pixel is masked or it falls outside the input's range.

  Args:
    loglam, flux, ivar: (n,) or (batch, n) arrays; loglam increasing along the last axis.
    mask: optional bool array, True = bad pixel.
  Returns:
    (flux, ivar, mask) on the grid, float32/float32/bool, shape (..., npix).
  """
  return resample_pixels(grid_pixels(loglam), flux, ivar, mask, npix)


def grid_pixels(loglam) -> np.ndarray:
  """Position of each input pixel on the common grid, in grid pixels (float64 -> float32).

  Computed in float64 and offset to the grid's start, so the float32 result keeps
  ~1e-4 pixel precision: this is what the scan sends to the device.
  """
  return ((np.asarray(loglam, np.float64) - LOGLAM0) / DLOGLAM).astype(np.float32)


def resample_pixels(u, flux, ivar, mask=None, npix: int = NPIX, xp=np):
  """`resample` with input positions `u` in grid pixels (see `grid_pixels`).

  Works on numpy or, with xp=jax.numpy, inside jit; padded input rows are fine as long
  as the padding continues `u` upwards and is masked.
  """
  f32 = xp.float32
  u = xp.asarray(u, f32)
  flux = xp.asarray(flux, f32)
  ivar = xp.asarray(ivar, f32)
  bad = ~xp.isfinite(flux) | ~xp.isfinite(ivar) | (ivar <= 0)
  if mask is not None:
    bad = bad | xp.asarray(mask, bool)
  shape = flux.shape
  n = shape[-1]
  u2, f2, v2, b2 = (a.reshape(-1, n) for a in (u, flux, ivar, bad))
  grid = xp.arange(npix, dtype=f32)
  idx = xp.arange(n, dtype=f32)
  if xp is np:
    pos = np.stack([np.interp(grid, row, idx, left=-1.0, right=-1.0) for row in u2]).astype(f32)
  else:
    pos = _positions(u2, grid, idx)
  outside = (grid[None] < u2[:, :1]) | (grid[None] > u2[:, -1:]) | (pos < 0)
  lo = xp.clip(xp.floor(pos).astype(xp.int32), 0, n - 1)
  hi = xp.clip(lo + 1, 0, n - 1)
  w = xp.clip(pos - lo.astype(f32), 0.0, 1.0)
  f = xp.where(b2, 0.0, f2)
  v = xp.where(b2, 0.0, v2)
  take = lambda a, i: xp.take_along_axis(a, i, axis=1)
  out_flux = (1 - w) * take(f, lo) + w * take(f, hi)
  out_ivar = (1 - w) * take(v, lo) + w * take(v, hi)
  out_bad = outside | (take(b2, lo) & (w < 1.0)) | (take(b2, hi) & (w > 0.0))
  out_flux = xp.where(out_bad, 0.0, out_flux).astype(f32)
  out_ivar = xp.where(out_bad, 0.0, out_ivar).astype(f32)
  out_shape = shape[:-1] + (npix,)
  return out_flux.reshape(out_shape), out_ivar.reshape(out_shape), out_bad.reshape(out_shape)


def _positions(u2, grid, idx):
  """Input-pixel position of every grid pixel, in jit.

  Survey spectra are sampled log-linearly, so u is a straight line and the position is
  (grid - u0) / du.  jnp.interp's search costs as much as the rest of the resampling on
  XLA:CPU, so it runs only for a batch that holds a row off a straight line."""
  import jax
  import jax.numpy as jnp
  n = u2.shape[-1]
  u0 = u2[:, :1]
  du = (u2[:, -1:] - u2[:, :1]) / (n - 1)
  straight = jnp.max(jnp.abs(u2 - (u0 + du * idx)), axis=-1) < LINEAR_TOLERANCE

  def line():
    pos = (grid[None] - u0) / du
    return jnp.where((pos < 0) | (pos > n - 1), -1.0, pos)

  def search():
    return jax.vmap(lambda row: jnp.interp(grid, row, idx, left=-1.0, right=-1.0))(u2)

  return jax.lax.cond(jnp.all(straight), line, search)


LINEAR_TOLERANCE = 2e-3  # grid pixels: float32 rounding of u is ~3e-4 at u = 4000


# --- labels ----------------------------------------------------------------------------

# Default 7-class set of the white-dwarf search (Tan et al. 2023).  Keys are class names,
# values the spectral-type letters (first letter of a LAMOST SUBCLASS, dwarf/giant prefix
# removed) that map to them; 'WD' collects LAMOST's WD* subclasses and D[ABOQZC] types.
DEFAULT_CLASSES = {"OB": ("O", "B"), "A": ("A",), "F": ("F",), "G": ("G",), "K": ("K",),
                   "M": ("M",), "WD": ("WD",)}

# MK subtype as a number: ten per letter, O0 = 0, B0 = 10, A0 = 20, F0 = 30, G0 = 40,
# K0 = 50, M0 = 60 ... M9 = 69.  Decimal subtypes (K7.5) are kept.
SUBTYPE_BASE = {"O": 0, "B": 10, "A": 20, "F": 30, "G": 40, "K": 50, "M": 60}

_WD_TYPES = ("DA", "DB", "DO", "DQ", "DZ", "DC")
_PREFIXES = ("sd", "d", "g")


def spectral_letter(subclass: str):
  """'A1IV' -> 'A', 'dM5' -> 'M', 'WDMagnetic' / 'DA' -> 'WD'; None if not a MK/WD type."""
  s = (subclass or "").strip()
  if s.startswith("WD") or s[:2] in _WD_TYPES:
    return "WD"
  for p in _PREFIXES:
    if s.startswith(p) and len(s) > len(p) and s[len(p)] in SUBTYPE_BASE:
      s = s[len(p):]
      break
  if s and s[0] in SUBTYPE_BASE:
    return s[0]
  return None


def class_index(cls: str, subclass: str, classes=None):
  """Index of a LAMOST CLASS/SUBCLASS in `classes` (default DEFAULT_CLASSES), else None.

  Only CLASS == 'STAR' (or a white-dwarf subclass) is mapped; galaxies, QSOs, 'Unknown',
  and stellar subclasses outside the mapping (Carbon, DoubleStar, CV, ...) give None so
  the caller can report them instead of guessing.
  """
  classes = DEFAULT_CLASSES if classes is None else classes
  letter = spectral_letter(subclass)
  if letter is None or ((cls or "").strip().upper() != "STAR" and letter != "WD"):
    return None
  for i, letters in enumerate(classes.values()):
    if letter in letters:
      return i
  return None


def subtype_number(subclass: str):
  """MK subtype as a number (see SUBTYPE_BASE), e.g. 'G7' -> 47.0, 'dM5' -> 65.0; else None."""
  letter = spectral_letter(subclass)
  if letter is None or letter == "WD":
    return None
  s = subclass.strip()
  s = s[s.index(letter) + 1:]
  digits = ""
  for ch in s:
    if ch.isdigit() or (ch == "." and "." not in digits):
      digits += ch
    else:
      break
  digits = digits.rstrip(".")
  if not digits:
    return None
  return float(SUBTYPE_BASE[letter] + float(digits))


# --- normalisation ---------------------------------------------------------------------
#
# Every function here takes `xp`, the array module: numpy (default) for data preparation,
# or jax.numpy inside a jit-compiled scan step.  One implementation serves both, so the
# scan sees exactly the inputs the models were trained on.  Shapes are (..., npix).

TAN_NPIX = 3700
TAN_MEDIAN_WIDTH = 9
CONTINUUM_BLOCK = 200


def _cummax(a, xp):
  if xp is np:
    return np.maximum.accumulate(a, axis=-1)
  import jax  # pylint: disable=g-import-not-at-top
  return jax.lax.cummax(a, axis=a.ndim - 1)


def fill_masked(flux, mask, xp=np):
  """Replaces bad pixels by linear interpolation between the nearest good neighbours.

  Bad = `mask` True or flux not finite.  Bad runs at either end take the nearest good
  value; a row with no good pixel becomes all zeros.  Returns float32.
  """
  flux = xp.asarray(flux, dtype=xp.float32)
  bad = xp.asarray(mask, dtype=bool) | ~xp.isfinite(flux)
  good = ~bad
  n = flux.shape[-1]
  idx = xp.arange(n)
  prev = _cummax(xp.where(good, idx, -1), xp)
  # The next good pixel is the previous good one of the reversed row.
  nxt = n - 1 - xp.flip(_cummax(xp.where(xp.flip(good, -1), idx, -1), xp), -1)
  has_prev, has_next = prev >= 0, nxt < n
  p, q = xp.clip(prev, 0, n - 1), xp.clip(nxt, 0, n - 1)
  clean = xp.where(good, flux, 0.0)
  fp = xp.take_along_axis(clean, xp.broadcast_to(p, clean.shape), axis=-1)
  fq = xp.take_along_axis(clean, xp.broadcast_to(q, clean.shape), axis=-1)
  t = (idx - p) / xp.maximum(q - p, 1)
  inner = fp + (fq - fp) * t
  edge = xp.where(has_prev, fp, xp.where(has_next, fq, 0.0))
  value = xp.where(has_prev & has_next, inner, edge)
  return xp.where(good, flux, value).astype(xp.float32)


# Devillard's 19 compare-exchange network for the median of 9 (exact, like a sort, but
# 19 elementwise min/max pairs instead of a sort per pixel: on XLA:CPU the sort made the
# median filter cost as much as a whole network pass).
_MEDIAN9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
            (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def median_filter(x, width: int = TAN_MEDIAN_WIDTH, xp=np):
  """Running median along the last axis, edges reflected (scipy.ndimage mode='reflect')."""
  if width % 2 != 1:
    raise ValueError(f"median filter width must be odd, got {width}")
  h = width // 2
  pad = [(0, 0)] * (x.ndim - 1) + [(h, h)]
  # numpy's 'symmetric' padding repeats the edge sample, which is scipy's 'reflect'.
  padded = xp.pad(x, pad, mode="symmetric")
  n = x.shape[-1]
  windows = [padded[..., i:i + n] for i in range(width)]
  if width == 9:
    for a, b in _MEDIAN9:
      windows[a], windows[b] = xp.minimum(windows[a], windows[b]), xp.maximum(windows[a], windows[b])
    return windows[4]
  return xp.sort(xp.stack(windows, axis=-1), axis=-1)[..., h]


def tan_normalise(flux, mask=None, xp=np, npix: int = TAN_NPIX,
                  width: int = TAN_MEDIAN_WIDTH, robust: bool = False):
  """Tan et al. (2023) input: first `npix` grid pixels, min-max to [0, 1], median filter.

  Bad pixels (mask True or non-finite) are first filled by interpolation from their good
  neighbours, so a dead pixel cannot become the minimum.  Negative fluxes are kept: they
  are noise around zero flux and min-max maps them into range like any other value.  A
  constant or fully masked spectrum gives all zeros rather than NaN.  Returns float32
  (..., npix) in [0, 1].

  robust: median filter first, then min-max (input "tan_robust").  In Tan's order one
  cosmic ray or sky-line residual sets the maximum and squeezes the rest of the spectrum
  nearly flat; filtered first, a spike up to width // 2 pixels wide is gone before the
  scaling.  Same values otherwise (min-max is monotonic, so it commutes with the median).
  """
  if flux.shape[-1] < npix:
    raise ValueError(f"tan_normalise needs >= {npix} pixels, got {flux.shape[-1]}")
  flux = xp.asarray(flux)[..., :npix]
  mask = xp.zeros(flux.shape, bool) if mask is None else xp.asarray(mask)[..., :npix]
  f = fill_masked(flux, mask, xp)
  if robust:
    f = median_filter(f, width, xp)
  lo = xp.min(f, axis=-1, keepdims=True)
  span = xp.max(f, axis=-1, keepdims=True) - lo
  scaled = xp.where(span > 0, (f - lo) / xp.where(span > 0, span, 1.0), 0.0).astype(xp.float32)
  return scaled if robust else median_filter(scaled, width, xp)


def continuum_normalise(flux, ivar, mask=None, xp=np, block: int = CONTINUUM_BLOCK):
  """Flux divided by a robust smooth continuum (input of the Wang et al. 2021 ResNet).

  Continuum: the median of the good pixels in consecutive blocks of `block` pixels
  (200 px = 0.02 dex, about 190 A at 4000 A and 420 A at 9000 A), linearly interpolated
  between block centres.  Block medians follow the SED and the instrument response but
  not narrow lines; the broad Balmer wings of white dwarfs are partly absorbed into it,
  which keeps every class on the same footing without a per-class fitting step.
  A block with no good pixel, or with a median below 5% of the spectrum's overall
  median (a low-S/N blue end), takes the continuum interpolated from its neighbours.
  Bad pixels (mask, ivar <= 0, non-finite) are filled from good neighbours first and get
  ivar 0.  A spectrum with no good pixel or a non-positive overall median gives zeros.

  Returns (flux / continuum, ivar * continuum**2), float32, shape (..., npix).
  """
  flux = xp.asarray(flux, dtype=xp.float32)
  ivar = xp.asarray(ivar, dtype=xp.float32)
  bad = ~xp.isfinite(flux) | ~xp.isfinite(ivar) | ~(ivar > 0)
  if mask is not None:
    bad = bad | xp.asarray(mask, dtype=bool)
  n = flux.shape[-1]
  nblock = -(-n // block)
  lead = [(0, 0)] * (flux.ndim - 1)
  with_nan = xp.pad(xp.where(bad, xp.nan, flux), lead + [(0, nblock * block - n)],
                    constant_values=xp.nan)
  blocks = with_nan.reshape(flux.shape[:-1] + (nblock, block))
  # All-NaN blocks and rows are expected here and are repaired below.
  with np.errstate(all="ignore"):
    med = _nanmedian(blocks, xp)
    scale = _nanmedian(with_nan, xp)[..., None]
  ok = xp.isfinite(scale) & (scale > 0)
  valid = xp.isfinite(med) & (med > 0.05 * xp.where(ok, scale, 1.0))
  med = fill_masked(med, ~valid, xp)
  left, w = _block_weights(n, nblock, block)
  cont = (1 - w) * med[..., left] + w * med[..., np.minimum(left + 1, nblock - 1)]
  cont = xp.where(ok & (cont > 0), cont, 1.0)
  norm = xp.where(ok, fill_masked(flux, bad, xp) / cont, 0.0)
  nivar = xp.where(ok & ~bad, ivar * cont ** 2, 0.0)
  return norm.astype(xp.float32), nivar.astype(xp.float32)


def _nanmedian(a, xp):
  if xp is np:
    import warnings  # pylint: disable=g-import-not-at-top
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      return np.nanmedian(a, axis=-1)
  return xp.nanmedian(a, axis=-1)


def _block_weights(n, nblock, block):
  """Left block index and weight of the right one for each pixel (static numpy)."""
  centres = (np.arange(nblock) + 0.5) * block - 0.5
  pos = np.clip((np.arange(n) - centres[0]) / block, 0, nblock - 1)
  left = np.minimum(np.floor(pos).astype(np.int64), max(nblock - 2, 0))
  return left, (pos - left).astype(np.float32)


# --- what a network sees ---------------------------------------------------------------

# LAMOST's snr_g band; the S/N of a spectrum is the median of flux * sqrt(ivar) over its
# good pixels here, so spectra from any survey, simulated or degraded are measured alike.
SNR_BAND = (4000.0, 5500.0)


def snr_band(wavelength) -> np.ndarray:
  """Pixels of the S/N band (SNR_BAND, like LAMOST's snr_g) for wavelengths in A."""
  wavelength = np.asarray(wavelength)
  return (wavelength >= SNR_BAND[0]) & (wavelength <= SNR_BAND[1])


def band_median(x, band, mask):
  """Median of x over good pixels in the band ((npix,) or (n, npix)); over all good
  pixels if the band has none; NaN if none is good."""
  xb = np.where(np.broadcast_to(band, x.shape) & ~mask, x, np.nan)
  empty = np.all(np.isnan(xb), axis=-1)
  xb[empty] = np.where(mask[empty], np.nan, x[empty])
  with np.errstate(all="ignore"):
    return _nanmedian(xb, np)


def snr(flux, ivar, mask=None, wavelength=None):
  """S/N of spectra from their data: the median of flux * sqrt(ivar) over the good pixels
  of SNR_BAND (all good pixels if none is in it), 0 if no pixel is good.  (n, m) -> (n,),
  or (m,) -> a float; wavelength in A, default the common grid.  A host computation: a
  median is a sort on an accelerator, and numpy's selection is nearly free."""
  wavelength = wavelength_grid(np.shape(flux)[-1]) if wavelength is None else wavelength
  if np.ndim(flux) == 1:
    return _snr_one(flux, ivar, mask, wavelength)
  flux = np.atleast_2d(np.asarray(flux, np.float64))
  ivar = np.broadcast_to(np.asarray(ivar, np.float64), flux.shape)
  bad = ~np.isfinite(flux) | ~(ivar > 0)
  if mask is not None:
    bad = bad | np.broadcast_to(np.asarray(mask, bool), flux.shape)
  ratio = np.where(bad, 0.0, flux) * np.sqrt(np.where(bad, 0.0, ivar))
  return np.nan_to_num(band_median(ratio, snr_band(wavelength), bad), nan=0.0)


def _snr_one(flux, ivar, mask, wavelength):
  """`snr` of one spectrum: the same value in about two thirds of the time (the scan calls
  it for every file)."""
  flux = np.asarray(flux, np.float64)
  ivar = np.broadcast_to(np.asarray(ivar, np.float64), flux.shape)
  good = np.isfinite(flux) & (ivar > 0)
  if mask is not None:
    good &= ~np.broadcast_to(np.asarray(mask, bool), flux.shape)
  with np.errstate(all="ignore"):  # 0 * inf (an infinite ivar) is NaN, as in `snr`
    ratio = flux[good] * np.sqrt(ivar[good])
    in_band = ratio[snr_band(wavelength)[good]]
    values = in_band if np.any(~np.isnan(in_band)) else ratio
    if not values.size:
      return 0.0
    return float(np.nan_to_num(_nanmedian(values, np), nan=0.0))


def binned(a, size: int, xp=np):
  """Means of `size` consecutive pixels along the last axis (a trailing remainder is dropped)."""
  if size <= 1:
    return a
  n = a.shape[-1] // size * size
  return a[..., :n].reshape(a.shape[:-1] + (-1, size)).mean(-1)


INPUTS = ("tan", "tan_robust", "continuum")


def network_input(flux, ivar, mask, spec: dict, xp=np):
  """Network input from spectra on the common grid, as a model bundle's `input` says.

  spec: {"normalise": "tan", "pixels": 3700} (Tan et al.: first pixels, min-max, median
  filter), {"normalise": "tan_robust", ...} (the same, median filter first: spikes cannot
  set the scale) or {"normalise": "continuum", "clip": [lo, hi], "bin": 2} (Wang et al.: divided
  by a smooth continuum, clipped, binned).  Training, the scan and `load_model().predict`
  all call this, so a model always sees what it was trained on.
  """
  kind = spec.get("normalise", "tan")
  if kind in ("tan", "tan_robust"):
    return tan_normalise(flux, mask, xp, npix=int(spec.get("pixels", TAN_NPIX)),
                         robust=kind == "tan_robust")
  if kind == "continuum":
    x, _ = continuum_normalise(flux, ivar, mask, xp)
    if spec.get("clip") is not None:
      x = xp.clip(x, *spec["clip"])
    x = binned(x, int(spec.get("bin", 1)), xp)
    if spec.get("pixels"):
      x = x[..., :int(spec["pixels"])]
    return x.astype(xp.float32)
  raise ValueError(f"unknown spectrum normalisation {kind!r}; known: {', '.join(INPUTS)}")
