"""Class-activation maps (Grad-CAM, Selvaraju et al. 2017) for astrotl's 1D models.

A 1D model exposes its last convolutional feature map A (batch, L', C) in two ways:
its values are sown as `intermediates/features`, and it passes through
`self.perturb("features", ...)`, so the gradient of the output with respect to a zero
`perturbations/features` variable is the gradient with respect to A.  Grad-CAM weighs
each channel by its mean gradient and keeps the positive part:

    cam[l] = relu(sum_c mean_l'(d score / d A[l', c]) * A[l, c])

The score is the logit of the target class (classification) or the single output
(regression: any model with one output), times `sign`.  With sign = -1 the map shows
what lowers the score instead: for a regression, the evidence for a *smaller* value
(e.g. an earlier spectral subtype), which the relu of the plain map discards.  The map is interpolated linearly from L'
feature positions to the input's pixels and divided by its maximum, so every spectrum's
map lies in [0, 1] with max 1 (all zeros where nothing raises the score).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Main lines and bands of stellar spectra in Angstrom (air, rounded).  LAMOST wavelengths
# are vacuum, 1-2 A redder: about one pixel, below the maps' resolution.  Keys are labels.
LINES = {
    "Ca II K": 3934.0,
    "Ca II H": 3968.0,
    "H$\\delta$": 4102.0,
    "H$\\gamma$": 4340.0,
    "H$\\beta$": 4861.0,
    "Mg b": 5175.0,
    "Na D": 5893.0,
    "H$\\alpha$": 6563.0,
    "TiO 7050": 7050.0,
    "TiO 7600": 7600.0,
}


def _upsample(m, length: int):
  """(batch, L') -> (batch, length), feature-position centres stretched over the input."""
  n = m.shape[-1]
  src = (jnp.arange(n) + 0.5) * (length / n) - 0.5
  dst = jnp.arange(length, dtype=src.dtype)
  return jax.vmap(lambda row: jnp.interp(dst, src, row))(m)


@functools.partial(jax.jit, static_argnums=0)
def _cam(model, variables, flux, target, sign):
  variables = {k: v for k, v in variables.items() if k not in ("perturbations", "intermediates")}

  def score(perturbation):
    out, state = model.apply({**variables, "perturbations": {"features": perturbation}},
                             flux, train=False, mutable=["intermediates"])
    if out.shape[-1] == 1:
      s = out[:, 0]
    else:
      t = jnp.where(target < 0, jnp.argmax(out, -1), target)
      s = jnp.sum(out * jax.nn.one_hot(t, out.shape[-1], dtype=out.dtype), -1)
    # Examples are independent in eval mode, so the gradient of the sum is per example.
    return jnp.sum(sign * s), state["intermediates"]["features"][0]

  shape = jax.eval_shape(lambda x: model.apply(variables, x, train=False,
                                               mutable=["intermediates"]), flux)
  features_shape = shape[1]["intermediates"]["features"][0]
  zeros = jnp.zeros(features_shape.shape, features_shape.dtype)
  grads, features = jax.grad(score, has_aux=True)(zeros)
  weights = jnp.mean(grads, axis=1, keepdims=True)
  m = jax.nn.relu(jnp.sum(weights * features, axis=-1))
  m = _upsample(m.astype(jnp.float32), flux.shape[1])
  peak = jnp.max(m, axis=-1, keepdims=True)
  return jnp.where(peak > 0, m / jnp.where(peak > 0, peak, 1.0), 0.0)


def cam(model, variables, flux, target=None, sign=1.0, batch_size: int = 128) -> np.ndarray:
  """Grad-CAM of `model` for each spectrum in `flux` (batch, length), on its pixels.

  Args:
    model: a 1D astrotl model (`cnn1d`, `resnet1d`) with the `features` hooks.
    variables: {'params', 'batch_stats'} (extra collections are ignored).
    flux: (batch, length) model inputs.
    target: class index per spectrum (int or (batch,) ints) for a classifier; None =
      the predicted class.  Must be None for a regression (one-output) model.
    sign: +1 (default) or -1, one per spectrum or for all: -1 maps what lowers the score.
    batch_size: spectra per compiled call; the last chunk is padded, so one compilation.
  Returns:
    float32 (batch, length), non-negative, max 1 per spectrum (or all zeros).
  """
  flux = np.asarray(flux, np.float32)
  if flux.ndim != 2:
    raise ValueError(f"cam: flux must be (batch, length), got shape {flux.shape}")
  n = len(flux)
  if target is None:
    target = np.full(n, -1, np.int32)
  else:
    target = np.broadcast_to(np.asarray(target, np.int32), (n,))
    if np.any(target < 0):
      raise ValueError("cam: target class indices must be >= 0 (or target=None for argmax)")
  sign = np.broadcast_to(np.asarray(sign, np.float32), (n,))
  if not np.all(np.abs(sign) == 1):
    raise ValueError("cam: sign must be +1 or -1 (per spectrum or for all)")
  variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  if "features" not in _feature_names(model, variables, flux[:1]):
    raise ValueError(f"cam: model {type(model).__name__} does not sow `intermediates/features`; "
                     "add self.sow('intermediates', 'features', x) and "
                     "self.perturb('features', x) after its last conv layer")
  out_width = jax.eval_shape(lambda x: model.apply(variables, x, train=False), flux[:1]).shape[-1]
  if out_width == 1 and np.any(target >= 0):
    raise ValueError("cam: target must be None for a regression (one-output) model")
  if np.any(target >= out_width):
    raise ValueError(f"cam: target must be < the {out_width} classes, got {target.max()}")
  batch_size = min(batch_size, max(n, 1))
  outs = []
  for start in range(0, n, batch_size):
    chunk = [a[start:start + batch_size] for a in (flux, target, sign)]
    pad = batch_size - len(chunk[0])
    if pad:
      chunk = [np.concatenate([a, np.repeat(a[:1], pad, 0)]) for a in chunk]
    outs.append(np.asarray(_cam(model, variables, *chunk))[:batch_size - pad])
  return np.concatenate(outs) if outs else np.zeros((0, flux.shape[1]), np.float32)


def _feature_names(model, variables, x):
  _, state = jax.eval_shape(lambda x: model.apply(variables, x, train=False,
                                                  mutable=["intermediates"]), x)
  return state.get("intermediates", {})


def line_contrast(wavelength, cams, lines=None, half_width: float = 15.0) -> dict:
  """Mean map within +-half_width Angstrom of each line over the mean map of the spectrum.

  > 1 means the model attends to that line more than to an average pixel.  `cams` is
  (batch, length) or (length,); the result averages over the batch.  Lines outside the
  wavelength range are left out.
  """
  lines = LINES if lines is None else lines
  wavelength = np.asarray(wavelength, float)
  cams = np.atleast_2d(np.asarray(cams, float))
  overall = cams.mean(-1)
  out = {}
  for name, w in lines.items():
    near = np.abs(wavelength - w) <= half_width
    if near.any():
      with np.errstate(invalid="ignore", divide="ignore"):
        out[name] = float(np.nanmean(cams[:, near].mean(-1) / overall))
  return out


def plot_cam(wavelength, flux, cam, path, lines=None, title=None):
  """Saves a PNG of one spectrum coloured by its map, with the main lines marked.

  `cam` is one spectrum's map on the same pixels as `flux`; `lines` maps label ->
  wavelength (default LINES; {} for none).
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.collections import LineCollection

  lines = LINES if lines is None else lines
  wavelength, flux, cam = (np.asarray(a, float) for a in (wavelength, flux, cam))
  if not wavelength.shape == flux.shape == cam.shape or wavelength.ndim != 1:
    raise ValueError("plot_cam: wavelength, flux and cam must be 1D and the same length, got "
                     f"{wavelength.shape}, {flux.shape}, {cam.shape}")
  fig, (ax, bar) = plt.subplots(2, 1, figsize=(11, 4.2), sharex=True,
                                gridspec_kw={"height_ratios": [5, 1], "hspace": 0.05})
  points = np.stack([wavelength, flux], -1)
  segments = np.stack([points[:-1], points[1:]], 1)
  lc = LineCollection(segments, cmap="inferno_r", norm=plt.Normalize(0, 1), linewidths=1.0)
  lc.set_array(0.5 * (cam[:-1] + cam[1:]))
  ax.add_collection(lc)
  lo, hi = np.nanpercentile(flux, [0.5, 99.5])
  pad = 0.08 * (hi - lo or 1.0)
  ax.set_ylim(lo - pad, hi + 3 * pad)
  ax.set_xlim(wavelength[0], wavelength[-1])
  ax.set_ylabel("flux")
  bar.fill_between(wavelength, 0, cam, color="tab:red", lw=0)
  bar.set_ylim(0, 1.05)
  bar.set_ylabel("CAM")
  bar.set_xlabel("wavelength (Angstrom)")
  for i, (name, w) in enumerate(sorted(lines.items(), key=lambda kv: kv[1])):
    if wavelength[0] <= w <= wavelength[-1]:
      for a in (ax, bar):
        a.axvline(w, color="tab:blue", lw=0.6, ls="--", alpha=0.7)
      # alternate heights so close pairs (Ca II H & K) stay readable
      ax.text(w, hi + (2.2 if i % 2 else 1.2) * pad, name, fontsize=7, ha="center",
              color="tab:blue")
  fig.colorbar(lc, ax=[ax, bar], pad=0.01, label="Grad-CAM")
  if title:
    ax.set_title(title)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
