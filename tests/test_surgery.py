import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from astrotl import models, parallel, surgery, train


def _params(seed=0, num_classes=7):
  m = models.get("mlp", num_classes=num_classes)
  return m.init(jax.random.PRNGKey(seed), jnp.zeros((2, 16)))


def test_names_and_mask():
  p = _params()["params"]
  n = surgery.names(p)
  assert "block_0/dense/kernel" in n and "head/bn/scale" in n
  m = surgery.flatten(surgery.mask(p, "head/.*"))
  assert all(v == k.startswith("head/") for k, v in m.items())
  # full match: "dense/kernel" alone matches nothing
  assert not any(jax.tree.leaves(surgery.mask(p, "dense/kernel")))


def test_merge_takes_pretrained_values_and_skips():
  pre, fresh = _params(0)["params"], _params(1)["params"]
  out = surgery.merge(pre, fresh)
  np.testing.assert_array_equal(out["block_1"]["dense"]["kernel"], pre["block_1"]["dense"]["kernel"])
  pre4 = _params(0, num_classes=4)["params"]
  out = surgery.merge(pre4, fresh, skip=("head/.*",))
  np.testing.assert_array_equal(out["head"]["dense"]["kernel"], fresh["head"]["dense"]["kernel"])
  np.testing.assert_array_equal(out["block_0"]["bn"]["scale"], pre4["block_0"]["bn"]["scale"])


def test_merge_error_lists_every_bad_path():
  fresh = _params(1)["params"]
  pre = surgery.flatten(_params(0, num_classes=4)["params"])
  del pre["block_2/dense/bias"]
  pre["extra/w"] = np.zeros(3)
  with pytest.raises(surgery.SurgeryError) as e:
    surgery.merge(surgery.unflatten(pre), fresh)
  msg = str(e.value)
  assert "block_2/dense/bias" in msg and "extra/w" in msg
  for name in ("head/dense/kernel", "head/dense/bias", "head/bn/scale", "head/bn/bias"):
    assert name in msg
  # numpy dicts work too (imported weights)
  np_tree = jax.tree.map(np.asarray, _params(0)["params"])
  assert surgery.names(surgery.merge(np_tree, fresh)) == surgery.names(fresh)


def test_reinit_and_zeros():
  a, b = _params(0)["params"], _params(1)["params"]
  out = surgery.reinit(a, b, "block_1/.*")
  np.testing.assert_array_equal(out["block_1"]["dense"]["kernel"], b["block_1"]["dense"]["kernel"])
  np.testing.assert_array_equal(out["block_0"]["dense"]["kernel"], a["block_0"]["dense"]["kernel"])
  z = surgery.zeros(a, "head/(.*/)?(kernel|bias)")
  assert not np.any(z["head"]["dense"]["kernel"]) and np.all(z["head"]["bn"]["scale"] == 1)


def test_lr_multipliers_first_rule_wins_and_must_cover():
  p = _params()["params"]
  g = jax.tree.map(jnp.ones_like, p)
  tx = surgery.lr_multipliers(p, [("head/.*", 1.0), ("block_0/.*", 0.0), (".*", 0.5)])
  u, _ = tx.update(g, tx.init(p), p)
  assert np.all(u["head"]["dense"]["kernel"] == 1.0)
  assert np.all(u["block_0"]["dense"]["kernel"] == 0.0)
  assert np.all(u["block_2"]["dense"]["kernel"] == 0.5)
  with pytest.raises(surgery.SurgeryError, match="block_1/dense/kernel"):
    surgery.lr_multipliers(p, [("head/.*", 1.0)])


def test_zoobot_rules():
  p = _params()["params"]
  freeze, rules = surgery.zoobot_rules(p, n_blocks=1, lr_decay=0.5)
  frozen = surgery.flatten(surgery.mask(p, freeze))
  assert not frozen["head/dense/kernel"] and not frozen["block_3/bn/scale"]
  assert frozen["block_2/dense/kernel"] and frozen["block_0/bn/bias"]
  assert rules[0] == ("head/.*", 1.0) and rules[1] == ("block_3/.*", 0.5)
  assert surgery.zoobot_rules(p, n_blocks=0)[0] is not None
  assert surgery.zoobot_rules(p, n_blocks=10)[0] is None


def test_frozen_params_and_bn_stats_do_not_change_and_hold_no_state():
  mesh = parallel.make_mesh(jax.devices()[:2])
  model = models.get("mlp", num_classes=3)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16)))
  pattern = "block_[01]/.*"
  tx = surgery.freeze(optax.adam(1e-2), v["params"], pattern)
  opt_state = tx.init(v["params"])
  state_leaves = jax.tree_util.tree_flatten_with_path(opt_state)[0]
  frozen_in_state = [surgery.path_name(p) for p, _ in state_leaves
                     if "block_0" in surgery.path_name(p) or "block_1" in surgery.path_name(p)]
  assert frozen_in_state == []  # no Adam moments for frozen leaves
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=v["params"],
                           batch_stats=v["batch_stats"], opt_state=opt_state,
                           rng=jax.random.PRNGKey(1))
  state = parallel.replicate(state, mesh)
  before = jax.tree.map(np.array, {"p": v["params"], "s": v["batch_stats"]})
  step = train.make_train_step(model, tx, mesh, frozen=pattern)
  rng = np.random.default_rng(0)
  for _ in range(5):
    batch = {"x": rng.normal(3, 2, size=(8, 16)).astype(np.float32),
             "y": rng.integers(0, 3, 8), "valid": np.ones(8, bool)}
    state, _ = step(state, parallel.shard_batch(batch, mesh, 8))
  after = jax.tree.map(np.array, {"p": state.params, "s": state.batch_stats})
  for tree in ("p", "s"):
    for name, val in surgery.flatten(after[tree]).items():
      old = surgery.flatten(before[tree])[name]
      if name.startswith(("block_0/", "block_1/")):
        np.testing.assert_array_equal(val, old, err_msg=name)
      else:
        assert not np.array_equal(val, old), name


def test_freeze_everything_is_an_error():
  p = _params()["params"]
  with pytest.raises(surgery.SurgeryError, match="freezes every parameter"):
    surgery.freeze(optax.sgd(1.0), p, ".*")


def test_frozen_blocks_run_in_inference_mode_while_training():
  """A frozen block must normalise with its running statistics during training too,
  or it computes a different function in training than at test time."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  model = models.get("mlp", num_classes=3)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16)))
  assert train.frozen_blocks(v["params"], surgery._compile(["block_[0-3]/.*"])) == (
      "block_0", "block_1", "block_2", "block_3")
  assert train.frozen_blocks(v["params"], surgery._compile(["block_0/bn/.*"])) == ()
  # inputs far from the running statistics (mean 0, var 1): batch stats would differ a lot
  x = np.random.default_rng(0).normal(5, 3, size=(8, 16)).astype(np.float32)
  pattern = "block_[0-3]/.*"
  tx = surgery.freeze(optax.sgd(0.0), v["params"], pattern)
  state = parallel.replicate(train.TrainState(jnp.zeros((), jnp.int32), v["params"],
                                              v["batch_stats"], tx.init(v["params"]),
                                              jax.random.PRNGKey(1)), mesh)
  y = np.zeros(8, int)
  _, m = train.make_train_step(model, tx, mesh, frozen=pattern)(
      state, parallel.shard_batch({"x": x, "y": y, "valid": np.ones(8, bool)}, mesh, 8))
  # with lr 0, the training loss must equal the test-mode loss except for the head's BN
  net = model.clone(frozen=("block_0", "block_1", "block_2", "block_3"))
  out, _ = net.apply(v, x, train=True, mutable=["batch_stats"])
  want = float(np.mean(-jax.nn.log_softmax(out)[:, 0]))
  assert float(m["loss"]) == pytest.approx(want, rel=1e-5)
  frozen_out = model.apply(v, x, train=True, mutable=["batch_stats"])[0]
  assert not np.allclose(out, frozen_out)  # all-batch-stats training mode differs
