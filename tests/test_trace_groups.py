"""proxnag_jax.trace_groups: channel groups of any model, found by tracing.

The traced groups must equal the hand-written ones of every registered
family; on models this project does not define by hand (a bottleneck
residual block, a MobileNet inverted residual, Inception and DenseNet
concatenations, a
transformer block with attention heads, an NNX CNN) the groups are found or
refused with a reason, and the shrunk network computes what the masked one
does; an exported shrunk network reloads without the model's code.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import proxnag_jax as pj
from proxnag_jax import models
from proxnag_jax import surgery
from proxnag_jax import trace_groups as tg


def _norm(slots, variables):
  out = set()
  for s in slots:
    nd = np.ndim(surgery._get(variables, s))  # pylint: disable=protected-access
    out.add((s.collection, tuple(s.path), s.axis % nd, s.repeat))
  return frozenset(out)


def _as_sets(groups, variables):
  return {(_norm(g.producers, variables), _norm(g.consumers, variables),
           g.prunable, g.size) for g in groups}


@pytest.mark.parametrize("name,shape", [
    ("lenet5", (28, 28, 1)), ("lenet5_bn", (28, 28, 1)),
    ("lenet300_100", (28, 28, 1)), ("conv2", (32, 32, 3)),
    ("vgg16", (32, 32, 3)), ("resnet20", (32, 32, 3)),
    ("resnet20_b", (32, 32, 3))])
def test_traced_groups_equal_the_hand_written_ones(name, shape):
  model = models.get_model(name)
  v = models.init_model(model, jax.random.PRNGKey(0), (1,) + shape)
  rep = tg.traced_groups(lambda w, x: model.apply(w, x, train=False), v,
                         jnp.zeros((2,) + shape))
  assert _as_sets(rep.groups, v) == _as_sets(
      surgery.channel_groups(model, v), v)
  if name == "resnet20":     # option A: the padded streams, with why
    assert set(rep.reasons.values()) == {
        "the channel axis is padded (e.g. a parameter-free shortcut)"}


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 with BatchNorm and a projection shortcut."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda n: nn.BatchNorm(use_running_average=not train, name=n)
    y = nn.relu(bn("bn0")(nn.Conv(16, (3, 3), use_bias=False,
                                  name="stem")(x)))
    h = nn.relu(bn("bn1")(nn.Conv(8, (1, 1), use_bias=False, name="a")(y)))
    h = nn.relu(bn("bn2")(nn.Conv(8, (3, 3), use_bias=False, name="b")(h)))
    h = bn("bn3")(nn.Conv(32, (1, 1), use_bias=False, name="c")(h))
    s = bn("bns")(nn.Conv(32, (1, 1), use_bias=False, name="proj")(y))
    h = nn.relu(h + s)
    return nn.Dense(10, name="head")(jnp.mean(h, axis=(1, 2)))


class InvertedResidual(nn.Module):
  """MobileNetV2: expand 1x1, depthwise 3x3, project 1x1, residual."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda n: nn.BatchNorm(use_running_average=not train, name=n)
    y = nn.relu6(bn("bn0")(nn.Conv(16, (3, 3), use_bias=False,
                                   name="stem")(x)))
    h = nn.relu6(bn("bn1")(nn.Conv(48, (1, 1), use_bias=False,
                                   name="expand")(y)))
    h = nn.relu6(bn("bn2")(nn.Conv(48, (3, 3), feature_group_count=48,
                                   use_bias=False, name="dw")(h)))
    h = bn("bn3")(nn.Conv(16, (1, 1), use_bias=False, name="project")(h))
    return nn.Dense(10, name="head")(jnp.mean(y + h, axis=(1, 2)))


class Inception(nn.Module):
  """Two branches concatenated along the channels."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    a = nn.relu(nn.Conv(8, (1, 1), name="branch1")(x))
    b = nn.relu(nn.Conv(12, (3, 3), name="branch3")(x))
    h = nn.relu(nn.Conv(16, (3, 3), name="mix")(jnp.concatenate([a, b], -1)))
    return nn.Dense(10, name="head")(h.reshape((h.shape[0], -1)))


class ViTBlock(nn.Module):
  """A pre-norm transformer block on 8 tokens of width 32, 4 heads."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    t = nn.Dense(32, name="embed")(x.reshape((x.shape[0], 8, -1)))
    a = nn.MultiHeadDotProductAttention(num_heads=4, name="attn")(
        nn.LayerNorm(name="ln1")(t))
    t = t + a
    h = nn.gelu(nn.Dense(64, name="mlp1")(nn.LayerNorm(name="ln2")(t)))
    t = t + nn.Dense(32, name="mlp2")(h)
    return nn.Dense(10, name="head")(jnp.mean(t, axis=1))


def _random_variables(model, x):
  """(Jitted: one program, not one per initializer and leaf shape.)"""

  def init(x):
    v = model.init(jax.random.PRNGKey(0), x)
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 1000))
    # Nonzero BatchNorm statistics and shifts, so every slot matters.
    return jax.tree.map(lambda a: a + 0.1 * jax.random.normal(next(keys),
                                                              a.shape), v)
  return jax.jit(init)(x)


def _shrink_is_exact(fn, v, x, groups):
  """Removes ~40% of every prunable group's channels: the shrunk network
  equals the masked one, and has fewer parameters."""
  rng = np.random.default_rng(0)
  keep = {}
  for g in groups:
    if g.prunable:
      k = rng.random(g.size) < 0.6
      k[0] = True
      keep[g.name] = k
  want = fn(surgery.zero_channels(v, groups, keep), x)
  small_apply, small = tg.shrink_traced(fn, v, x[:2], keep)
  got = jax.jit(small_apply)(small, x)
  np.testing.assert_allclose(got, want, rtol=1e-4,
                             atol=1e-4 * float(jnp.max(jnp.abs(want))))
  assert surgery.count_params(small) < surgery.count_params(v)
  return small_apply, small


def _by_name(groups):
  return {g.name: g for g in groups}


def _traced(model, shape):
  """``(fn, variables, x, report, groups by name)`` of ``model`` on a batch
  of 4 inputs of ``shape``, with random nonzero variables."""
  x = jnp.ones((4,) + shape)
  v = _random_variables(model, x)
  fn = lambda w, y: model.apply(w, y)
  rep = tg.traced_groups(fn, v, x[:2])
  return fn, v, x, rep, _by_name(rep.groups)


def test_bottleneck_block():
  fn, v, x, rep, g = _traced(Bottleneck(), (8, 8, 3))
  assert set(g) == {"stem", "a", "b", "c"} and not rep.reasons
  # The residual stream: the expansion and the projection write it.
  kernels = {s.path[0] for s in g["c"].kernels()}
  assert kernels == {"c", "proj"}
  assert {s.path[0] for s in g["c"].consumers} == {"head"}
  assert {s.path[0] for s in g["stem"].consumers} == {"a", "proj"}
  _shrink_is_exact(fn, v, x, rep.groups)


def test_inverted_residual_depthwise():
  fn, v, x, rep, g = _traced(InvertedResidual(), (8, 8, 3))
  # The depthwise conv's channels are the expansion's: one group, read by
  # the projection; the stream joins the stem and the projection.
  assert set(g) == {"stem", "expand"}
  assert {s.path[0] for s in g["expand"].kernels()} == {"expand", "dw"}
  assert {s.path[0] for s in g["expand"].consumers} == {"project"}
  assert {s.path[0] for s in g["stem"].kernels()} == {"stem", "project"}
  _shrink_is_exact(fn, v, x, rep.groups)


def _costs_are_exact(fn, v, x, groups):
  """The cost model on traced groups (one term per group for a leaf that
  holds several): the shrunk network's parameter count, exactly."""
  rng = np.random.default_rng(1)
  keep = {g.name: np.r_[True, rng.random(g.size - 1) < 0.5]
          for g in groups if g.prunable}
  _, small = tg.shrink_traced(fn, v, x[:2], keep)
  terms = surgery.cost_terms(v, groups, "params")
  assert float(surgery.shrunk_cost(terms, groups, keep)) == pytest.approx(
      surgery.count_params(small), rel=1e-6)


def test_concatenation_groups_at_offsets():
  """Inception-style: each branch is its own group, read by the mixing
  conv's input axis at its offset."""
  fn, v, x, rep, g = _traced(Inception(), (8, 8, 3))
  assert set(g) == {"branch1", "branch3", "mix"} and not rep.reasons
  assert g["branch1"].consumers == (surgery.Slot("params", ("mix", "kernel"),
                                                 2, 1, 0, 20),)
  assert g["branch3"].consumers == (surgery.Slot("params", ("mix", "kernel"),
                                                 2, 1, 8, 20),)
  assert g["mix"].consumers[0].repeat == 64      # the flatten of 8 x 8
  _shrink_is_exact(fn, v, x, rep.groups)
  _costs_are_exact(fn, v, x, rep.groups)


class DenseBlock(nn.Module):
  """DenseNet-style: each layer reads the concatenation of all before it
  through BatchNorm; the head reads a flatten of the last concatenation."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda n: nn.BatchNorm(use_running_average=not train, name=n)
    h = nn.Conv(8, (3, 3), use_bias=False, name="stem")(x)
    for i in range(2):
      y = nn.Conv(4, (3, 3), use_bias=False, name=f"grow{i}")(
          nn.relu(bn(f"bn{i}")(h)))
      h = jnp.concatenate([h, y], -1)
    h = nn.relu(bn("bnf")(h))
    return nn.Dense(10, name="head")(h.reshape((h.shape[0], -1)))


def test_dense_block_concatenations_through_batchnorm():
  fn, v, x, rep, g = _traced(DenseBlock(), (6, 6, 3))
  assert set(g) == {"stem", "grow0", "grow1"} and not rep.reasons
  # The stem's channels: its own BatchNorm, the first 8 entries of the
  # later ones, read by every later conv and the head at offset 0.
  prod = {(s.path, s.offset, s.span) for s in g["stem"].producers
          if s.path[-1] == "scale"}
  assert prod == {(("bn0", "scale"), 0, 0), (("bn1", "scale"), 0, 12),
                  (("bnf", "scale"), 0, 16)}
  assert {(s.path[0], s.offset, s.span) for s in g["grow0"].consumers} == {
      ("grow1", 8, 12), ("head", 8, 16)}
  (head,) = [s for s in g["grow1"].consumers]
  assert (head.path[0], head.offset, head.span, head.repeat) == (
      "head", 12, 16, 36)
  _shrink_is_exact(fn, v, x, rep.groups)
  _costs_are_exact(fn, v, x, rep.groups)
  # Channel masks and norms read each group's own entries.
  keep = {"stem": np.arange(8) < 3, "grow0": np.arange(4) != 1,
          "grow1": np.ones(4, bool)}
  masks = surgery.channel_masks(v["params"], rep.groups, keep)
  np.testing.assert_array_equal(np.asarray(masks["bn1"]["scale"]),
                                np.r_[np.arange(8) < 3, np.arange(4) != 1])
  norms = surgery.channel_norms(v["params"], g["grow0"])
  assert norms.shape == (4,)


class AddCat(nn.Module):
  """A conv added onto a concatenation: its output channels are the
  branches' (split at the same offsets); two concatenations of different
  layouts added: refused."""
  split: tuple = (4, 4)

  @nn.compact
  def __call__(self, x):
    a = nn.Conv(4, (1, 1), name="a")(x)
    b = nn.Conv(4, (1, 1), name="b")(x)
    c = nn.Conv(8, (1, 1), name="c")(x)
    h = jnp.concatenate([a, b], -1) + c
    d = nn.Conv(self.split[0], (1, 1), name="d")(x)
    e = nn.Conv(self.split[1], (1, 1), name="e")(x)
    h = nn.relu(h + jnp.concatenate([d, e], -1))
    return nn.Dense(10, name="head")(jnp.mean(h, axis=(1, 2)))


def test_additions_onto_concatenations():
  x = jnp.ones((2, 4, 4, 3))
  m = AddCat()
  v = _random_variables(m, x)
  fn = lambda w, y: m.apply(w, y)
  rep = tg.traced_groups(fn, v, x)
  g = _by_name(rep.groups)
  assert set(g) == {"a", "b"} and not rep.reasons
  assert {(s.path, s.offset, s.span) for s in g["b"].kernels()} == {
      (("b", "kernel"), 0, 0), (("c", "kernel"), 4, 8),
      (("e", "kernel"), 0, 0)}
  _shrink_is_exact(fn, v, x, rep.groups)
  m = AddCat(split=(2, 6))
  v = m.init(jax.random.PRNGKey(0), x)
  rep = tg.traced_groups(lambda w, y: m.apply(w, y), v, x)
  assert not any(gr.prunable for gr in rep.groups)
  assert "concatenations of different channel sets" in rep.reasons["a"]


def test_transformer_block_heads_and_mlp():
  fn, v, x, rep, g = _traced(ViTBlock(), (8, 16))
  assert g["mlp1"].prunable
  assert {s.path[0] for s in g["mlp1"].consumers} == {"mlp2"}
  # Whole heads: the query, key and value kernels' head axis, read by the
  # output projection's head axis.
  heads = g["attn/query@1"]
  assert heads.size == 4 and heads.prunable
  assert {s.path for s in heads.kernels()} == {
      ("attn", n, "kernel") for n in ("query", "key", "value")}
  assert [s.path for s in heads.consumers] == [("attn", "out", "kernel")]
  # Query and key head dimensions together (their dot product), values'.
  assert {s.path[1] for s in g["attn/query@2"].kernels()} == {"query", "key"}
  assert g["attn/value@2"].prunable
  # The residual stream feeds LayerNorms: its statistics run over it.
  assert not g["embed"].prunable and "LayerNorm" in rep.reasons["embed"]
  _shrink_is_exact(fn, v, x, rep.groups)


class NNXCNN(nnx.Module):

  def __init__(self, rngs):
    self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
    self.conv2 = nnx.Conv(8, 16, (3, 3), rngs=rngs)
    self.fc = nnx.Linear(16 * 8 * 8, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.relu(self.conv2(x))
    return self.fc(x.reshape((x.shape[0], -1)))


def test_nnx_model_groups_shrink_and_portable_export(tmp_path):
  model = NNXCNN(nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  v = {"params": nnx.to_pure_dict(state)}
  keys = iter(jax.random.split(jax.random.PRNGKey(1), 100))
  v = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(next(keys),
                                                         a.shape), v)
  fn = tg.nnx_apply(graphdef)
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 3))
  rep = tg.traced_groups(fn, v, x[:2])
  g = _by_name(rep.groups)
  assert set(g) == {"conv1", "conv2"}
  assert {s.path[0] for s in g["conv1"].producers} == {"conv1", "bn1"}
  assert {s.path for s in g["conv1"].producers} >= {("bn1", "mean"),
                                                    ("bn1", "var")}
  assert g["conv2"].consumers[0].repeat == 64
  small_apply, small = _shrink_is_exact(fn, v, x, rep.groups)
  # The NNX model itself, shrunk in place: smaller kernels and feature
  # counts, the masked model's outputs.
  keep = {"conv1": np.arange(8) % 2 == 0, "conv2": np.arange(16) < 5}
  want = fn(surgery.zero_channels(v, rep.groups, keep), x)
  model = nnx.merge(graphdef, nnx.State(v["params"]))
  tg.shrink_nnx(model, keep, x[:2])
  assert model.conv1.out_features == 4 == model.bn1.num_features
  assert model.conv2.in_features == 4 and model.fc.in_features == 5 * 64
  np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)
  # Exported with a symbolic batch, reloaded without the model's code.
  path = str(tmp_path / "net")
  tg.export_portable(path, small_apply, small, x)
  fn2, v2 = tg.load_portable(path)
  np.testing.assert_allclose(fn2(v2, x[:3]), small_apply(small, x[:3]),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_cls", [InvertedResidual, DenseBlock])
def test_a_structured_method_on_a_traced_model(model_cls, tmp_path):
  """L1-filter pruning through ``pj.pruning`` with traced groups on a model
  surgery does not know (a depthwise block; a DenseNet block, whose
  channels are concatenated), then the smaller network, exported and
  reloaded without the model's code."""
  m, x = model_cls(), jax.random.normal(jax.random.PRNGKey(3),
                                        (16, 8, 8, 3))
  v = m.init(jax.random.PRNGKey(0), x)
  y = jnp.arange(16) % 10
  fn = lambda w, z: m.apply(w, z)
  rep = tg.traced_groups(fn, v, x[:2])
  # pj.structure traces a model surgery does not know: the same groups.
  st = pj.structure(m, v, (8, 8, 3))
  assert st["groups"] == rep.groups and st["costs"]["macs"]
  tx = pj.pruning("l1_filter", target_sparsity=0.5, total_steps=6,
                  learning_rate=0.01, **st)
  params, opt_state = pj.start(tx, v["params"])

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      logits = m.apply({**v, "params": p}, x)
      return jnp.mean(optax_xent(logits, y))
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(jnp.add, params, updates), opt_state

  for _ in range(6):
    params, opt_state = step(params, opt_state)
  final = pj.final_params(tx, params, opt_state)
  keep = surgery.kept_by_masks(jax.tree.map(lambda a: a != 0, final),
                               rep.groups)
  removed = sum(int((~k).sum()) for k in keep.values())
  total = sum(g.size for g in rep.groups if g.prunable)
  assert removed == total // 2          # half the channels, exactly
  variables = {**v, "params": final}
  small_apply, small = tg.shrink_traced(fn, variables, x[:2], keep)
  np.testing.assert_allclose(small_apply(small, x), fn(variables, x),
                             rtol=1e-4, atol=1e-4)
  # pj.export does the same for a model surgery does not know.
  f2, v2 = pj.export(tx, m, params, opt_state, v["batch_stats"],
                     example_input=x[:2])
  np.testing.assert_allclose(f2(v2, x), fn(variables, x), rtol=1e-4,
                             atol=1e-4)
  assert surgery.count_params(v2) < surgery.count_params(v)
  tg.export_portable(str(tmp_path / "net"), f2, v2, x[:2])
  f3, v3 = tg.load_portable(str(tmp_path / "net"))
  np.testing.assert_allclose(f3(v3, x[:5]), f2(v2, x[:5]), rtol=1e-5,
                             atol=1e-5)


def optax_xent(logits, labels):
  import optax  # pylint: disable=g-import-not-at-top
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
