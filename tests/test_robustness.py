"""Runs that never lie: bad configs and data fail before anything is written,
checkpoints are verified and never hold NaN, the completion marker comes
last, one writer per workdir, metrics after resume, masked Prox-NAG
iterates, and the command line's user errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proxnag_jax as pj
import helpers
from configs import proxnag_lenet5_mnist
from proxnag_jax import commands
from proxnag_jax import data
from proxnag_jax import hostio
from proxnag_jax import experiment
from proxnag_jax import methods

QUIET = dict(log=lambda *_: None)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_dense_cfg = helpers.lenet5_smoke


# ---------------------------------------------------------------------------
# Validate everything before writing anything.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("field,value,match", [
    ("num_epochs", 0, "num_epochs must be positive"),
    ("batch_size", -1, "batch_size must be positive"),
    ("learning_rate", float("nan"), "learning_rate is nan"),
    ("weight_decay", -1e-4, "weight_decay must be >= 0"),
    ("train_subset", -5, "train_subset must be >= 0"),
    ("momentum", 1.5, r"momentum must be in \[0, 1\)"),
    ("val_size", 600,
     "val_size .* must be smaller than config.data.train_subset"),
    ("chunk_steps", 0, "chunk_steps must be positive"),
])
def test_bad_train_config_fails_before_the_workdir(tmp_path, mnist_dir, field,
                                                   value, match):
  wd = str(tmp_path / "w")
  with pytest.raises(ValueError, match=match):
    commands.train(_dense_cfg(mnist_dir, **{field: value}), wd, **QUIET)
  assert not os.path.exists(os.path.join(wd, "config.json"))


def test_bad_prune_config_fails_before_the_workdir(tmp_path, mnist_dir):
  def cfg(**over):
    c = proxnag_lenet5_mnist.get_config("smoke")
    c.data.dir = mnist_dir
    for k, v in over.items():
      a, b = k.split(".")
      c[a][b] = v
    return c

  cases = [
      ({"prune.exclude": ("conv1[",)}, "not a valid regular expression"),
      ({"prune.dense_checkpoint": str(tmp_path / "nope")}, "does not exist"),
      ({"proxnag.monitor_every": 0}, "monitor_every must be >= 1"),
      ({"proxnag.l1_step": -1e-3}, "must be non-negative|must be >= 0"),
      ({"dense.num_epochs": 0}, "num_epochs must be positive"),
      ({"prune.budget_epochs": float("nan")}, "budget_epochs is nan"),
      ({"run.speed_repeats": 0}, "speed_repeats must be positive"),
      ({"prune.method": "dsr", "dsr.dense": ("(",)},
       "invalid regular expression"),
  ]
  for i, (over, match) in enumerate(cases):
    wd = str(tmp_path / f"p{i}")
    with pytest.raises(ValueError, match=match):
      commands.prune(cfg(**over), wd, **QUIET)
    assert not os.path.exists(os.path.join(wd, "config.json")), over


def test_a_workdir_whose_run_never_started_takes_the_corrected_config(
    tmp_path):
  wd = str(tmp_path / "w")
  a = helpers.lenet5_smoke("")
  assert not experiment.prepare_workdir(wd, a)
  b = helpers.lenet5_smoke("")
  b.train.learning_rate = 0.01
  # Only config.json there: not a run yet, so the new config replaces it.
  assert not experiment.prepare_workdir(wd, b)
  # The same config again (e.g. a second sweep worker): nothing to discard;
  # anything besides the config and the lock files means a run got going.
  open(os.path.join(wd, hostio.PREPARE_LOCK_FILE), "w").close()
  assert not experiment.prepare_workdir(wd, b)
  os.makedirs(os.path.join(wd, "claims"))
  assert experiment.prepare_workdir(wd, b)
  os.rmdir(os.path.join(wd, "claims"))
  assert json.load(open(os.path.join(wd, "config.json")))["train"][
      "learning_rate"] == 0.01
  with open(os.path.join(wd, "trace.jsonl"), "w") as f:
    f.write("{}\n")
  with pytest.raises(ValueError, match="different config.*allow_changes"):
    experiment.prepare_workdir(wd, a)
  assert experiment.prepare_workdir(wd, a, allow_changes=True)
  rec = json.loads(open(os.path.join(wd, "config_changes.jsonl")).read())
  assert rec["changed"]["train.learning_rate"] == [0.01,
                                                   a.train.learning_rate]


def test_a_run_resumes_when_only_methods_it_does_not_use_change(tmp_path):
  """Another method's settings (a new field, a changed default) leave a
  run's workdir resumable; its own method's settings do not."""
  from configs import sweep_resnet20_cpu  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path / "w")
  a = proxnag_lenet5_mnist.get_config("smoke")
  experiment.prepare_workdir(wd, a)
  with open(os.path.join(wd, "trace.jsonl"), "w") as f:
    f.write("{}\n")               # a run got going
  b = proxnag_lenet5_mnist.get_config("smoke")
  b.admm.rho = 123.0
  with b.unlocked():
    b.sbp.new_setting = 1
  assert experiment.prepare_workdir(wd, b)
  b.proxnag.monitor_every = 7
  with pytest.raises(ValueError, match="proxnag.monitor_every"):
    experiment.prepare_workdir(wd, b)
  # A sweep compares the sub-configs of its methods and variants' methods.
  s = sweep_resnet20_cpu.get_config("smoke")
  s.methods = ("magnitude",)
  t = sweep_resnet20_cpu.get_config("smoke")
  t.methods = ("magnitude",)
  t.base.admm.rho = 123.0
  t.base.proxnag.monitor_every = 7
  cs = experiment.comparable_config(json.loads(s.to_json_best_effort()))
  ct = experiment.comparable_config(json.loads(t.to_json_best_effort()))
  assert cs == ct and "magnitude" in cs["base"] and "admm" not in cs["base"]
  t.base.magnitude = dict(t.base.magnitude)
  t.methods = ("magnitude", "proxnag")
  assert experiment.config_diff(
      cs, experiment.comparable_config(json.loads(t.to_json_best_effort())))


def test_a_run_keeps_its_own_methods_settings_only(tmp_path):
  """``pruning_config``: the chosen method's sub-config alone (the factory's
  defaults where the config file has none); a run started from a config
  that carried every method's settings resumes under the trimmed one."""
  a = proxnag_lenet5_mnist.get_config("smoke")
  a.prune.method = "gmp"
  a.gmp.every = 3
  t = experiment.pruning_config(a)
  assert t.gmp.every == 3 and "proxnag" not in t and "admm" not in t
  assert "gmp" in a and "proxnag" in a           # the input is left as it was
  with a.unlocked():
    del a["gmp"]
  assert experiment.pruning_config(a).gmp == methods.method_config("gmp")
  wd = str(tmp_path / "w")
  full = proxnag_lenet5_mnist.get_config("smoke")
  experiment.prepare_workdir(wd, full)          # an older run: every method
  with open(os.path.join(wd, "trace.jsonl"), "w") as f:
    f.write("{}\n")
  assert experiment.prepare_workdir(wd, experiment.pruning_config(full))
  with pytest.raises(ValueError, match="unknown method"):
    full.prune.method = "nope"
    experiment.pruning_config(full)


def test_a_run_resumes_when_its_method_gains_a_setting_at_its_default(
    tmp_path):
  """An older run's config lacks a setting its method has since gained: at
  the factory's default it compares equal (the run resumes); set to another
  value, or an old value of a setting whose default changed, it differs."""
  wd = str(tmp_path / "w")
  a = proxnag_lenet5_mnist.get_config("smoke")
  a.prune.method = "rw_admm"
  experiment.prepare_workdir(wd, a)
  with open(os.path.join(wd, "config.json")) as f:
    old = json.load(f)
  del old["rw_admm"]["stages"]                 # written before it existed
  old["rw_admm"]["eps"] = 0.5                  # an old, non-default value
  with open(os.path.join(wd, "config.json"), "w") as f:
    json.dump(old, f)
  with open(os.path.join(wd, "trace.jsonl"), "w") as f:
    f.write("{}\n")               # a run got going
  b = proxnag_lenet5_mnist.get_config("smoke")
  b.prune.method = "rw_admm"
  b.rw_admm.eps = 0.5
  assert experiment.prepare_workdir(wd, b)      # stages=() is the default
  b.rw_admm.stages = (0.5,)
  with pytest.raises(ValueError, match="rw_admm.stages"):
    experiment.prepare_workdir(wd, b)
  b.rw_admm.stages = ()
  b.rw_admm.eps = methods.method_config("rw_admm").eps
  with pytest.raises(ValueError, match="rw_admm.eps"):
    experiment.prepare_workdir(wd, b)


def test_flat_layout_configs_and_flags_read_as_todays():
  """Configs and flags of the flat layout before the per-component one:
  each field at its path today, by kind of config (a pruning config's own
  momentum is prune.momentum, a dense config's train.momentum)."""
  old_dense = {"model": "lenet5", "dataset": "mnist", "data_dir": "d",
               "seed": 1, "batch_size": 64, "chunk_steps": 4,
               "num_epochs": 2, "momentum": 0.8}
  assert experiment.upgrade_config(old_dense) == {
      "model": {"name": "lenet5"}, "seed": 1,
      "data": {"name": "mnist", "dir": "d", "batch_size": 64},
      "run": {"chunk_steps": 4}, "train": {"num_epochs": 2, "momentum": 0.8}}
  old_prune = {**{k: v for k, v in old_dense.items() if k != "num_epochs"},
               "method": "snip", "target_sparsity": 0.9,
               "prune_exclude": ["^fc/"], "dense": dict(old_dense),
               "snip": {}}
  new = experiment.upgrade_config(old_prune)
  assert new["prune"] == {"method": "snip", "target_sparsity": 0.9,
                          "exclude": ["^fc/"], "momentum": 0.8}
  assert new["dense"] == {"num_epochs": 2, "momentum": 0.8}
  assert new["snip"] == {} and experiment.upgrade_config(new) == new
  sweep_cfg = {"data_dir": "d", "methods": ["snip"], "base": old_prune}
  up = experiment.upgrade_config(sweep_cfg)
  assert up["data"] == {"dir": "d"} and up["base"] == new
  for arg, kind, want in (
      ("--config.data_dir=x", "train", "--config.data.dir=x"),
      ("--config.momentum=0.5", "train", "--config.train.momentum=0.5"),
      ("--config.momentum=0.5", "prune", "--config.prune.momentum=0.5"),
      ("--config.dense.num_epochs=3", "prune", None),
      ("--config.data_dir=x", "sweep", "--config.data.dir=x"),
      ("--config.base.budget_epochs=2", "sweep",
       "--config.base.prune.budget_epochs=2"),
      ("--config.methods=a", "sweep", None)):
    assert experiment.legacy_flag(arg, kind) == want, arg


def test_config_changes_name_the_nested_field():
  old = {"base": {"proxnag": {"l1_step": 2e-3, "lr": 0.01}, "seed": 0},
         "methods": ["a"]}
  new = {"base": {"proxnag": {"l1_step": 1e-2, "lr": 0.01}, "seed": 0,
                  "extra": 1}, "methods": ["a", "b"]}
  assert experiment.config_diff(old, new) == {
      "base.extra": [None, 1], "base.proxnag.l1_step": [2e-3, 1e-2],
      "methods": [["a"], ["a", "b"]]}
  assert experiment.config_diff(old, old) == {}


def test_library_api_names_the_bad_argument():
  with pytest.raises(TypeError, match="learning_rate must be a number"):
    pj.proxnag("0.1", 1e-4)
  with pytest.raises(TypeError, match="l1 must be a number"):
    pj.proxnag(0.1, "big")


# ---------------------------------------------------------------------------
# Data checks.
# ---------------------------------------------------------------------------


def _npz(d, n_train=256, n_labels=None, label_max=9, n_test=64):
  os.makedirs(d, exist_ok=True)
  rng = np.random.default_rng(0)
  np.savez(os.path.join(d, "train.npz"),
           image=rng.integers(0, 255, (n_train, 28, 28, 1), np.uint8),
           label=rng.integers(0, label_max + 1, n_labels or n_train))
  np.savez(os.path.join(d, "test.npz"),
           image=rng.integers(0, 255, (n_test, 28, 28, 1), np.uint8),
           label=rng.integers(0, 10, n_test))
  return d


def test_malformed_data_is_refused_with_the_file_named(tmp_path):
  bad = _npz(str(tmp_path / "a" / "mnist"), n_train=400, n_labels=1024)
  with pytest.raises(data.DataError, match="400 images but 1024 labels"):
    data.load_dataset("mnist", os.path.dirname(bad), download=False)
  bad = _npz(str(tmp_path / "b" / "mnist"), label_max=12)
  with pytest.raises(data.DataError, match="labels .* run from 0 to 12"):
    data.load_dataset("mnist", os.path.dirname(bad), download=False)
  bad = _npz(str(tmp_path / "c" / "mnist"), n_train=0)
  with pytest.raises(data.DataError, match="train split .* is empty"):
    data.load_dataset("mnist", os.path.dirname(bad), download=False)
  bad = _npz(str(tmp_path / "d" / "mnist"))
  f = os.path.join(bad, "train.npz")
  with open(f, "r+b") as fh:
    fh.truncate(os.path.getsize(f) // 2)
  with pytest.raises(data.DataError, match="cannot read .*train.npz"):
    data.load_dataset("mnist", os.path.dirname(bad), download=False)


def test_missing_data_says_where_to_put_it(tmp_path, monkeypatch):
  # Offline (or without the download extras), fetching by name fails fast
  # with a message that says what to do. (Offline forced: the test must not
  # download on a machine that happens to be online.)
  monkeypatch.setattr(data, "_online", lambda timeout=3.0: False)
  with pytest.raises(data.DataError, match="fetching it by name failed"):
    data.load_dataset("mnist", str(tmp_path / "empty"))
  with pytest.raises(data.DataError, match="does not exist"):
    data.load_dataset("mnist", str(tmp_path / "empty"), download=False)


# ---------------------------------------------------------------------------
# Checkpoints that never lie.
# ---------------------------------------------------------------------------


def _tree(v):
  # Random values (incompressible), offset by v.
  w = jax.random.normal(jax.random.PRNGKey(0), (64, 64)) + v
  return {"w": w, "step": jnp.int32(v)}


def _data_files(ckpt_dir, step):
  out = []
  for root, _, files in os.walk(os.path.join(ckpt_dir, str(step))):
    out += [os.path.join(root, f) for f in files]
  return out


def test_corrupted_checkpoint_falls_back_to_the_previous_good_one(tmp_path):
  d = str(tmp_path / "ck")
  warnings = []
  ck = hostio.Checkpointer(d, log=warnings.append)
  ck.save(1, _tree(1.0), {"step": 1})
  ck.save(2, _tree(2.0), {"step": 2})
  # Flip bytes in the array data of step 2 (not the metadata).
  victims = [f for f in _data_files(d, 2)
             if os.sep + "d" + os.sep in f and os.path.getsize(f) > 4096]
  assert victims, _data_files(d, 2)
  for f in victims:
    with open(f, "r+b") as fh:
      raw = bytearray(fh.read())
      for i in range(len(raw) // 3, len(raw) // 3 + 64):
        raw[i] ^= 0xFF
      fh.seek(0)
      fh.write(raw)
  state, meta = ck.restore(_tree(0.0))
  assert meta["step"] == 1
  np.testing.assert_array_equal(state["w"], _tree(1.0)["w"])
  assert any("step 2" in w for w in warnings)
  # Truncated metadata of step 1 too: nothing good is left, said clearly.
  metas = [f for f in _data_files(d, 1) if f.split(os.sep)[-2] == "meta"]
  for f in metas:
    open(f, "w").write("{")
  with pytest.raises(hostio.CheckpointError, match="no checkpoint .* intact"):
    ck.restore(_tree(0.0))
  ck.close()


def test_a_nan_state_is_never_saved(tmp_path):
  d = str(tmp_path / "ck")
  ck = hostio.Checkpointer(d, log=lambda *_: None)
  ck.save(1, _tree(1.0), {"step": 1})
  with pytest.raises(hostio.TrainingDiverged, match="step 1 in"):
    bad = _tree(2.0)
    ck.save(2, {**bad, "w": bad["w"].at[3, 5].set(jnp.nan)}, {"step": 2})
  assert ck.latest_step() == 1
  # A NaN used on purpose outside the checked part (e.g. Prox-NAG's "unset"
  # loss average in its method state) does not block saving.
  good = _tree(3.0)
  ck.save(3, {**good, "unset": jnp.float32(jnp.nan)}, {"step": 3},
          must_be_finite=good)
  assert ck.latest_step() == 3
  ck.close()


def test_summary_is_the_last_thing_written(tmp_path, mnist_dir, monkeypatch):
  wd = str(tmp_path / "w")

  def boom(*a, **k):
    raise RuntimeError("killed while saving final/")

  monkeypatch.setattr(hostio, "save_tree", boom)
  with pytest.raises(RuntimeError, match="killed"):
    commands.train(_dense_cfg(mnist_dir, num_epochs=1), wd, **QUIET)
  assert not os.path.exists(os.path.join(wd, "summary.json"))
  monkeypatch.undo()
  s = commands.train(_dense_cfg(mnist_dir, num_epochs=1), wd, **QUIET)
  assert os.path.exists(os.path.join(wd, "summary.json"))
  assert os.path.isdir(os.path.join(wd, "final")) and s["epochs"] == 1


# ---------------------------------------------------------------------------
# One writer per workdir.
# ---------------------------------------------------------------------------


def test_second_writer_is_refused(tmp_path):
  wd = str(tmp_path / "w")
  with hostio.workdir_lock(wd):
    with pytest.raises(hostio.WorkdirLocked, match="in use by pid"):
      with hostio.workdir_lock(wd):
        pass
  with hostio.workdir_lock(wd):     # released: a new writer gets it
    pass
  # Another process holding it.
  code = ("import sys, time; sys.path.insert(0, %r); "
          "from proxnag_jax import hostio\n"
          "with hostio.workdir_lock(%r):\n"
          "  print('locked', flush=True); time.sleep(30)" % (ROOT, wd))
  p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                       text=True)
  try:
    assert p.stdout.readline().strip() == "locked"
    with pytest.raises(hostio.WorkdirLocked, match=f"pid {p.pid}"):
      with hostio.workdir_lock(wd):
        pass
  finally:
    p.kill()
    p.wait()
  with hostio.workdir_lock(wd):     # the kernel released the dead holder's
    pass


# ---------------------------------------------------------------------------
# Masked Prox-NAG iterates.
# ---------------------------------------------------------------------------


def test_masked_proxnag_sparse_iterate_is_masked_at_once():
  params = {"k": jnp.ones((4, 4)), "b": jnp.ones(4)}
  masks = {"k": jnp.eye(4, dtype=bool), "b": jnp.ones(4, bool)}
  tx = pj.with_masks(pj.proxnag(0.1, 0.0), masks)
  st = tx.init(params)       # params not masked at init
  sp = pj.sparse_params(st)
  assert np.all(np.asarray(sp["k"])[~np.eye(4, dtype=bool)] == 0)
  grads = jax.tree.map(jnp.ones_like, params)
  _, st = tx.update(grads, st, params)
  sp = pj.sparse_params(st)
  assert np.all(np.asarray(sp["k"])[~np.eye(4, dtype=bool)] == 0)
  new = {"k": jnp.zeros((4, 4), bool).at[0].set(True), "b": masks["b"]}
  st = pj.set_masks(st, new)
  sp = pj.sparse_params(st)
  assert np.all(np.asarray(sp["k"])[1:] == 0)


# ---------------------------------------------------------------------------
# The command line: a user error is one paragraph and exit status 2.
# ---------------------------------------------------------------------------


def _cli(*args, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "train.train", *args],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300)


def test_cli_user_error_is_a_message_not_a_traceback(tmp_path, mnist_dir):
  wd = str(tmp_path / "w")
  r = _cli("--config", "configs/lenet5_mnist.py:smoke", "--workdir", wd,
           f"--config.data.dir={mnist_dir}", "--config.train.num_epochs=0")
  assert r.returncode == 2, r.stderr[-2000:]
  assert "num_epochs must be positive" in r.stderr
  assert "Traceback" not in r.stderr and "note:" not in r.stderr
  assert not os.path.exists(os.path.join(wd, "config.json"))
  # The flat layout's flags of before are read as today's, with a note.
  r = _cli("--config", "configs/lenet5_mnist.py:smoke", "--workdir", wd,
           f"--config.data_dir={mnist_dir}", "--config.num_epochs=0")
  assert r.returncode == 2 and "num_epochs must be positive" in r.stderr
  assert ("--config.data_dir -> --config.data.dir; --config.num_epochs -> "
          "--config.train.num_epochs") in r.stderr
  r = _cli("--config", "configs/lenet5_mnist.py:smok", "--workdir", wd)
  assert r.returncode != 0 and "unknown config variant 'smok'" in r.stderr
  r = _cli("--config", "configs/lenet5_mnist.py:smoke", "--workdir", wd,
           f"--config.data.dir={mnist_dir}", "--config.train.num_epochs=0",
           "--debug")
  assert r.returncode != 0 and "Traceback" in r.stderr


def test_cli_refuses_settings_of_a_method_the_run_does_not_use(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run(
      [sys.executable, "-m", "train.prune", "--config",
       "configs/proxnag_lenet5_mnist.py:smoke", "--workdir",
       str(tmp_path / "w"), "--config.prune.method=snip",
       "--config.proxnag.l1_step=1e-3"], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert "--config.proxnag.l1_step set a method this run does not use" in (
      r.stderr)
  assert "Traceback" not in r.stderr


@pytest.mark.parametrize("flag, says", [
    ("--config.prune.finetune_lr=1e6",
     "--config.prune.finetune_lr (proxnag has learning rates of its own"),
    ("--config.proxnag.l1_step=1e-3",
     "--config.proxnag.l1_step (read only with schedule='paper')"),
    ("--config.proxnag.l1_init=1e-3",
     "--config.proxnag.l1_init (lam_start='auto' computes"),
    ("--config.dense.num_epochs=3",
     "--config.dense.num_epochs (the dense model comes from "
     "config.prune.dense_checkpoint"),
])
def test_cli_refuses_a_setting_the_run_would_ignore(tmp_path, flag, says):
  """Every field a pruning run is given either takes effect or is refused
  before anything is written: here fields Prox-NAG's target schedule, or a
  run from a dense checkpoint, never reads."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  wd = str(tmp_path / "w")
  r = subprocess.run(
      [sys.executable, "-m", "train.prune", "--config",
       "configs/proxnag_lenet5_mnist.py:smoke", "--workdir", wd,
       "--config.prune.dense_checkpoint=checkpoints/lenet5_mnist_dense15",
       flag],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert says in r.stderr and "would not read it" in r.stderr
  assert "Traceback" not in r.stderr
  assert not os.path.exists(wd)


def test_validate_refuses_ignored_settings_in_a_config():
  """A config (not only a flag) that sets a field the run would ignore is
  refused: a paper-schedule setting under the target schedule, a field
  other than a training setting in its dense sub-config."""
  from configs import proxnag_lenet5_mnist  # pylint: disable=g-import-not-at-top
  c = proxnag_lenet5_mnist.get_config("smoke")
  experiment.validate_pruning(c)
  c.proxnag.fill_budget = True
  with pytest.raises(ValueError, match=r"config.proxnag.fill_budget = True "
                     r"would be ignored: read only with schedule='paper'"):
    experiment.validate_pruning(c)
  c.proxnag.schedule = "paper"
  c.proxnag.scale_invariant = False
  experiment.validate_pruning(c)                       # read by the paper schedule
  c.proxnag.threshold = "rms"             # (the default is 'start')
  with pytest.raises(ValueError, match="read only with scale_invariant"):
    experiment.validate_pruning(c)
  c = proxnag_lenet5_mnist.get_config("smoke")
  with c.dense.unlocked():
    c.dense.batch_size = 32
  with pytest.raises(ValueError, match=r"config.dense.batch_size: "
                     "config.dense holds the dense model's training"):
    experiment.validate_pruning(c)


@pytest.mark.parametrize("args, says", [
    (("--config", "configs/lenet5_mnist.py", "--config.nofield=1"),
     "--config.nofield: the config has no field 'nofield'"),
    (("--config", "configs/lenet5_mnist.py", "--config.train.num_epoch=1"),
     "did you mean 'num_epochs'?"),
    (("--config", "configs/no_such_config.py"),
     "No such file or directory: 'configs/no_such_config.py'"),
    (("--config", "configs/__init__.py"), "the file has no get_config()"),
])
def test_cli_config_errors_are_one_paragraph_and_exit_2(tmp_path, args,
                                                        says):
  """An unknown or misspelt field, a config file that does not exist or
  has no get_config: exit 2, one paragraph, no traceback, nothing written."""
  wd = str(tmp_path / "w")
  r = _cli(*args, "--workdir", wd)
  assert r.returncode == 2, r.stderr[-2000:]
  assert says in r.stderr
  assert "Traceback" not in r.stderr
  assert not os.path.exists(wd)


def test_bench_refuses_settings_it_cannot_time(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run(
      [sys.executable, "-m", "train.bench", "--config",
       "configs/lenet5_mnist.py:smoke", "--workdir", str(tmp_path / "b"),
       "--steps=0"], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert "--steps=0: must be at least 1" in r.stderr
  assert "Traceback" not in r.stderr


def test_dense_config_refuses_fields_its_optimizer_or_schedule_ignores():
  from configs import lenet5_mnist  # pylint: disable=g-import-not-at-top
  for field, value, says in (
      ("l1", 1e-3, "config.train.l1 would be ignored"),
      ("fista", True, "config.train.fista would be"),
      ("lr_steps", (5,), "config.train.lr_steps would be")):
    c = lenet5_mnist.get_config("smoke")
    c.train[field] = value
    with pytest.raises(ValueError, match=says):
      experiment.validate_config(c)
  c = lenet5_mnist.get_config("smoke")
  c.train.optimizer, c.train.l1 = "proxnag", 1e-3   # read with proxnag
  experiment.validate_config(c)
  c.train.nesterov = False
  with pytest.raises(ValueError,
                     match="config.train.nesterov would be ignored"):
    experiment.validate_config(c)


def test_every_command_module_imports_beside_the_others():
  """A test, notebook or tool that imports several commands' modules in one
  process must not fail on a flag two of them define (``--run``)."""
  train_dir = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "train")
  names = sorted(f[:-3] for f in os.listdir(train_dir)
                 if f.endswith(".py") and f != "__init__.py")
  for order in (names, names[::-1]):
    code = "import importlib\n" + "".join(
        f"importlib.import_module('train.{n}')\n" for n in order)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=False, timeout=300,
                         cwd=os.path.dirname(train_dir))
    assert out.returncode == 0, out.stderr[-2000:]
