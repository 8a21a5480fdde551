"""Line-profile features of spectra: what an astronomer would measure first.

The input of the white-dwarf search's feature baseline (`experiments/line_baseline.py`; Guo
et al. 2022 trained a random forest on such features, Vincent et al. 2025 gradient
boosting).  For every line below, against a local pseudo-continuum:

- `<line>_ew`     equivalent width in A, positive = absorption, negative = emission;
- `<line>_depth`  1 - core flux / continuum (core: median of the 5 pixels nearest the line,
                  so a line a few pixels wide reads shallower than its true minimum: by
                  exp(-dl^2 / 2 sigma^2), dl ~ 1 pixel, 4% at sigma = 4 A at Hβ);
- `<line>_fwhm`   full width at half depth in A, of the absorption (or emission) profile;
- for Hα-Hδ, `<line>_wing10`, `<line>_wing40`: 1 - flux / continuum at +-10 A and +-40 A
  from the core (median of 5 pixels each side), divided by the depth.  A white dwarf's
  Balmer wings reach +-100-150 A, an A star's +-30-60 A, a hot subdwarf's less: breadth,
  whatever the depth (wing40 is 0.35 for a Lorentzian of half width 30 A, 0.00 for a
  Gaussian of sigma 4 A).

The pseudo-continuum is a power law (straight in log F vs log lambda) through the median
of the good pixels of a blue and a red side band; a power law because over a +-150 A window
a straight line in F lies ~1% off a hot star's curved continuum, which is ~3 A of spurious
equivalent width, while the power law is off by ~0.1%.  What is left is a small emission-
like bias on a featureless Planck curve: Hβ EW -0.3 A at 20,000 K, -1.2 A at 6,000 K (the
colours tell the classifier which).  Windows and bands (vacuum A):

  line       centre   window +-  blue band     red band
  ha         6564.6   150        6330-6400     6730-6800
  hb         4862.7   150        4610-4670     5040-5100
  hg         4341.7   120        4180-4215     4500-4560
  hd         4102.9    95        3990-4005     4200-4225
  he         3971.2    20        3900-3918     3990-4005    (Hε, blended with Ca II H)
  cak        3934.8    13        3900-3918     3990-4005    (Ca II K)
  hei4027    4027.3    20        3990-4005     4050-4065
  hei4473    4472.7    20        4430-4448     4500-4520
  heii4687   4687.0    20        4650-4663     4712-4730
  hei4923    4923.3    20        4890-4900     4950-4970
  hei5017    5017.1    20        4975-4993     5040-5060
  mgb        5177.0    15        5125-5150     5200-5225    (Mg b triplet 5168.8-5185.0)
  hei5877    5877.3     9        5840-5862     5910-5930
  nad        5894.6     9        5840-5862     5910-5930    (Na D 5891.6 + 5897.6)
  hei6680    6679.9    20        6640-6657     6705-6725

Balmer windows are as wide as a white dwarf's lines, so at the blue end they overlap the
neighbouring lines' wings and bands (a DA has no true continuum between Hδ and Hε): these
are pseudo-continua, measured the same way for every spectrum, not physical ones.  The
narrow lines sitting in a Balmer window (He I 4027 in Hδ, 4923 in Hβ, 6680 in Hα) get
their own close bands, so their local continuum follows the Balmer wing.

Continuum shape, from the median flux in line-free bands B4600 (4550-4610, between the
wings of Hγ and Hβ even for a white dwarf), B5500 (5450-5550), B6100 (6050-6150), B7450
(7400-7500) and B8040 (8000-8080) -- none in LAMOST's 5700-5900 A dichroic join (He I
5877 and Na D are, and carry its residuals):

- `slope_4600_5500`: the power-law index d ln F / d ln lambda between B4600 and B5500, the
  blue slope.  It is redward of the Balmer jump (3646 A) and of the crowded high Balmer
  lines (< 3900 A), so it follows the continuum's temperature, not the jump.
- `logf_6100_5500`, `logf_7450_5500`, `logf_8040_5500`: log10 flux ratios, the colours.

Robustness.  Bad pixels are mask True, non-finite flux, or ivar <= 0 / non-finite.  Every
continuum, core and wing value is a median of good pixels; the equivalent width and the
FWHM use the flux after a 3-pixel running median (which skips bad pixels), with longer bad
runs interpolated over, so a single-pixel spike or dead pixel changes next to nothing.
A feature is NaN when it cannot be measured: a continuum band with fewer than a third of
its pixels (or fewer than 3) good, a window with fewer than half good (counted over the
nominal window, so a line off the grid is NaN too), a non-positive continuum, or the
width or wings of a line whose |depth| is below MIN_DEPTH (no line to measure).  NaN is
what scikit-learn's histogram gradient boosting treats as missing.  The S/N is
deliberately not a feature: a classifier would learn the survey's selection of faint
white dwarfs instead of their spectra.
"""

import numpy as np

from astrotl.preprocess import spectra

# (name, centre, half window, blue band, red band), vacuum A; see the table above.
LINES = (
    ("ha", 6564.6, 150.0, (6330.0, 6400.0), (6730.0, 6800.0)),
    ("hb", 4862.7, 150.0, (4610.0, 4670.0), (5040.0, 5100.0)),
    ("hg", 4341.7, 120.0, (4180.0, 4215.0), (4500.0, 4560.0)),
    ("hd", 4102.9, 95.0, (3990.0, 4005.0), (4200.0, 4225.0)),
    ("he", 3971.2, 20.0, (3900.0, 3918.0), (3990.0, 4005.0)),
    ("cak", 3934.8, 13.0, (3900.0, 3918.0), (3990.0, 4005.0)),
    ("hei4027", 4027.3, 20.0, (3990.0, 4005.0), (4050.0, 4065.0)),
    ("hei4473", 4472.7, 20.0, (4430.0, 4448.0), (4500.0, 4520.0)),
    ("heii4687", 4687.0, 20.0, (4650.0, 4663.0), (4712.0, 4730.0)),
    ("hei4923", 4923.3, 20.0, (4890.0, 4900.0), (4950.0, 4970.0)),
    ("hei5017", 5017.1, 20.0, (4975.0, 4993.0), (5040.0, 5060.0)),
    ("mgb", 5177.0, 15.0, (5125.0, 5150.0), (5200.0, 5225.0)),
    ("hei5877", 5877.3, 9.0, (5840.0, 5862.0), (5910.0, 5930.0)),
    ("nad", 5894.6, 9.0, (5840.0, 5862.0), (5910.0, 5930.0)),
    ("hei6680", 6679.9, 20.0, (6640.0, 6657.0), (6705.0, 6725.0)),
)
BALMER_WINGS = ("ha", "hb", "hg", "hd")
WING_OFFSETS = (10.0, 40.0)
COLOUR_BANDS = {"4600": (4550.0, 4610.0), "5500": (5450.0, 5550.0), "6100": (6050.0, 6150.0),
                "7450": (7400.0, 7500.0), "8040": (8000.0, 8080.0)}

CORE_PIXELS = 5        # the core (and each wing point) is the median of this many pixels
MIN_DEPTH = 0.02       # below this |depth| there is no line to take a width of
MIN_BAND_GOOD = 1 / 3  # good-pixel fraction a continuum band needs (and >= 3 pixels)
MIN_WINDOW_GOOD = 0.5  # good-pixel fraction an equivalent-width window needs
CHUNK = 1024           # rows per pass: bounds memory at ~50 MB whatever the batch


def _names():
  names = []
  for name, *_ in LINES:
    names += [f"{name}_ew", f"{name}_depth", f"{name}_fwhm"]
    if name in BALMER_WINGS:
      names += [f"{name}_wing{int(d)}" for d in WING_OFFSETS]
  return tuple(names + ["slope_4600_5500", "logf_6100_5500", "logf_7450_5500",
                        "logf_8040_5500"])


FEATURE_NAMES = _names()


def line_features(flux, ivar, mask, wavelength=None) -> np.ndarray:
  """Line and continuum features (FEATURE_NAMES) of spectra on one wavelength grid.

  Args:
    flux, ivar, mask: (n, npix) or (npix,) arrays; mask True = bad pixel (None: none
      flagged; ivar None: no ivar, every finite pixel counts).
    wavelength: (npix,) increasing vacuum wavelengths in A; default the common grid
      (`spectra.wavelength_grid(npix)`).  Lines or bands off the grid give NaN.
  Returns:
    float32 (n, len(FEATURE_NAMES)), or (len(FEATURE_NAMES),) for a single spectrum;
    NaN where a feature cannot be measured (see the module docstring).  Never warns.
  """
  flux = np.asarray(flux)
  single = flux.ndim == 1
  flux = np.atleast_2d(flux)
  npix = flux.shape[-1]
  if mask is not None:
    mask = np.broadcast_to(np.asarray(mask, bool), flux.shape)
  if ivar is not None:
    ivar = np.broadcast_to(np.asarray(ivar), flux.shape)
  wavelength = spectra.wavelength_grid(npix) if wavelength is None else wavelength
  layout = _layout(np.asarray(wavelength, np.float64))
  out = np.empty((len(flux), len(FEATURE_NAMES)), np.float32)
  with np.errstate(all="ignore"):
    for start in range(0, len(flux), CHUNK):
      rows = slice(start, start + CHUNK)
      out[rows] = _chunk(flux[rows], None if ivar is None else ivar[rows],
                         None if mask is None else mask[rows], layout)
  out[~np.isfinite(out)] = np.nan
  return out[0] if single else out


def _layout(wave):
  """Pixel slices of every band and window on this wavelength grid (computed per call:
  a few dozen binary searches)."""
  def span(lo, hi):
    return slice(int(np.searchsorted(wave, lo, "left")), int(np.searchsorted(wave, hi, "right")))

  def near(centre):
    # CORE_PIXELS pixels centred on the one nearest `centre`; empty if off the grid.
    if not wave[0] <= centre <= wave[-1]:
      return slice(0, 0)
    c = int(np.argmin(np.abs(wave - centre)))
    h = CORE_PIXELS // 2
    return slice(max(c - h, 0), c + h + 1)

  lines = []
  for name, centre, half, blue, red in LINES:
    wings = ([(near(centre - d), near(centre + d)) for d in WING_OFFSETS]
             if name in BALMER_WINGS else [])
    lines.append(dict(centre=centre, half=half, window=span(centre - half, centre + half),
                      blue=span(*blue), red=span(*red),
                      # band centres in log lambda: the median of a monotonic continuum over
                      # a log-sampled band is its value at the band's log-midpoint
                      lnb=0.5 * np.log(blue[0] * blue[1]), lnr=0.5 * np.log(red[0] * red[1]),
                      core=near(centre), wings=wings))
  colours = {k: span(*b) for k, b in COLOUR_BANDS.items()}
  dwave = np.gradient(wave) if len(wave) > 1 else np.ones(len(wave))
  return dict(wave=wave, lnwave=np.log(wave), dwave=dwave, lines=lines, colours=colours)


def _chunk(flux, ivar, mask, layout):
  # Bad pixels become NaN; every step below skips or propagates them.
  bad = ~np.isfinite(flux)
  if mask is not None:
    bad |= mask
  if ivar is not None:
    bad |= ~np.isfinite(ivar) | ~(ivar > 0)
  x = np.where(bad, np.nan, flux)
  lnw, wave, dwave = layout["lnwave"], layout["wave"], layout["dwave"]
  cols = []
  for line in layout["lines"]:
    mb = _band_median(x[:, line["blue"]], MIN_BAND_GOOD)
    mr = _band_median(x[:, line["red"]], MIN_BAND_GOOD)
    lnb = np.log(np.where(mb > 0, mb, np.nan))
    slope = (np.log(np.where(mr > 0, mr, np.nan)) - lnb) / (line["lnr"] - line["lnb"])

    def ratio(sl, lnb=lnb, slope=slope, lnb0=line["lnb"]):
      # flux / power-law continuum over the pixels of `sl`
      return x[:, sl] / np.exp(lnb[:, None] + slope[:, None] * (lnw[sl] - lnb0))

    win = line["window"]
    # Equivalent width and FWHM integrate pixels: a 3-pixel running median first, so a
    # single hot or dead pixel cannot count, then longer bad runs interpolated over (only
    # in the rows that have one: most have none).
    s = _median3(x, win)
    good = np.isfinite(s)
    dw = dwave[win]
    # against the nominal window, so a window half off the grid is not enough either
    enough = good @ dw >= MIN_WINDOW_GOOD * 2 * line["half"]
    holes = ~good.all(axis=1)
    if holes.any():
      s[holes] = spectra.fill_masked(s[holes], ~good[holes])
    a = 1.0 - s / np.exp(lnb[:, None] + slope[:, None] * (lnw[win] - line["lnb"]))
    ew = np.where(enough, a @ dw, np.nan)
    depth = 1.0 - _band_median(ratio(line["core"]), 0.5)
    measurable = np.abs(depth) >= MIN_DEPTH
    fwhm = _fwhm(a / np.where(measurable, depth, np.nan)[:, None], wave[win], line["centre"])
    cols += [ew, depth, np.where(enough, fwhm, np.nan)]
    for left, right in line["wings"]:
      wing = 1.0 - _band_median(np.concatenate([ratio(left), ratio(right)], 1), 0.5)
      cols.append(np.where(measurable, wing / depth, np.nan))
  m = {k: _band_median(x[:, sl], MIN_BAND_GOOD) for k, sl in layout["colours"].items()}
  m = {k: np.where(v > 0, v, np.nan) for k, v in m.items()}
  lo, hi = COLOUR_BANDS["4600"], COLOUR_BANDS["5500"]
  cols.append(np.log(m["5500"] / m["4600"]) / (0.5 * np.log(hi[0] * hi[1] / (lo[0] * lo[1]))))
  cols += [np.log10(m[k] / m["5500"]) for k in ("6100", "7450", "8040")]
  return np.stack(cols, axis=1)


def _median3(x, sl):
  """Running median of 3 over the columns `sl` of x, NaN-aware: fmin/fmax skip a NaN, so
  a lone bad pixel takes a neighbour's value, a good one beside a bad one keeps its own,
  and only a run of 3 bad stays NaN.  Grid-edge pixels are kept as they are."""
  lo, hi = max(sl.start - 1, 0), min(sl.stop + 1, x.shape[1])
  y = x[:, lo:hi].astype(np.float64)
  if y.shape[1] < 3:
    return y[:, sl.start - lo:y.shape[1] - (hi - sl.stop)]
  a, b, c = y[:, :-2], y[:, 1:-1], y[:, 2:]
  out = y.copy()
  out[:, 1:-1] = np.fmax(np.fmin(a, b), np.fmin(np.fmax(a, b), c))
  return out[:, sl.start - lo:out.shape[1] - (hi - sl.stop)]


def _band_median(x, need):
  """Median of the finite values of each row of x; NaN where fewer than a fraction `need`
  of the row, or fewer than min(3, all), are finite.  A sort with the bad pixels pushed
  to the end: np.nanmedian loops over rows in Python."""
  n, m = x.shape
  if m == 0:
    return np.full(n, np.nan)
  good = np.isfinite(x)
  v = np.sort(np.where(good, x, np.inf), axis=1)
  k = good.sum(axis=1)
  rows = np.arange(n)
  med = 0.5 * (v[rows, np.maximum((k - 1) // 2, 0)] + v[rows, np.minimum(k // 2, m - 1)])
  return np.where((k >= need * m) & (k >= min(3, m)), med, np.nan)


def _fwhm(r, wave, centre):
  """Width in A where r (the profile over its core depth) first falls below 1/2 on each
  side of the pixel nearest `centre`, interpolated between pixels; NaN if it never does
  inside the window."""
  if r.shape[1] < 2:
    return np.full(len(r), np.nan)
  c = int(np.argmin(np.abs(wave - centre)))
  right = _half_point(r[:, c:], wave[c:])
  left = _half_point(r[:, :c + 1][:, ::-1], wave[:c + 1][::-1])
  return right - left


def _half_point(r, wave):
  below = r < 0.5
  j = np.argmax(below, axis=1)
  found = below.any(axis=1)
  j1 = np.maximum(j, 1)
  rows = np.arange(len(r))
  r0, r1 = r[rows, j1 - 1], r[rows, j1]
  # r0 is NaN after a bad run: take the first pixel below half
  t = np.where(np.isfinite(r0), np.clip((r0 - 0.5) / (r0 - r1), 0.0, 1.0), 1.0)
  w = wave[j1 - 1] + t * (wave[j1] - wave[j1 - 1])
  # The core pixel itself below half (noise): the half point is the core.
  w = np.where(j == 0, wave[0], w)
  return np.where(found, w, np.nan)
