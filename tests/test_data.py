"""Real data through both sources, and on-device augmentation."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxnag_jax import data


def test_npz_mnist_full(shared_data):
  ds = data.load_dataset("mnist", shared_data)
  assert ds.source == "npz"
  assert ds.train_images.shape == (60000, 28, 28, 1)
  assert ds.test_images.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.test_labels),
                                [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                 974, 1009])


def test_npz_cifar_reads_only_needed_shards(cifar_dir):
  ds = data.load_dataset("cifar10", cifar_dir, train_subset=1000,
                         test_subset=100)
  assert ds.train_images.shape == (1000, 32, 32, 3)
  assert len(ds.test_labels) == 100
  assert ds.augment


def test_tfds_mnist_matches_npz(tfds_dir, shared_data):
  tf = data.load_dataset("mnist", tfds_dir, train_subset=200,
                         test_subset=10000)
  assert tf.source == "tfds"
  npz = data.load_dataset("mnist", shared_data)
  # Same test set (TFDS stores it in its own order): same multiset.
  h = lambda im, l: hashlib.sha1(im.tobytes() + bytes([l])).hexdigest()
  assert sorted(map(h, tf.test_images, tf.test_labels)) == sorted(
      map(h, npz.test_images, npz.test_labels))
  train_hashes = set(map(h, npz.train_images, npz.train_labels))
  assert all(h(a, b) in train_hashes
             for a, b in zip(tf.train_images, tf.train_labels))


def test_missing_and_unknown(tmp_path):
  with pytest.raises(data.DataError, match="(?s)does not exist.*How to get"):
    data.load_dataset("mnist", str(tmp_path / "nope"), download=False)
  with pytest.raises(data.DataError, match="(?s)no .cifar10. data.*npz"):
    data.load_dataset("cifar10", str(tmp_path), download=False)
  with pytest.raises(data.DataError, match="valid datasets: .*cifar10"):
    data.load_dataset("cifar11", str(tmp_path))


def test_augment_deterministic_and_is_crop_of_padded():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 255, (16, 32, 32, 3)), jnp.uint8)
  k = jax.random.PRNGKey(3)
  a, b = data.augment(k, x), data.augment(k, x)
  np.testing.assert_array_equal(a, b)
  assert a.shape == x.shape and a.dtype == x.dtype
  assert not np.array_equal(a, data.augment(jax.random.PRNGKey(4), x))
  padded = np.pad(np.asarray(x), ((0, 0), (4, 4), (4, 4), (0, 0)))
  for i in range(16):   # each output is a crop of the padded image, maybe flipped
    ok = False
    for dy in range(9):
      for dx in range(9):
        crop = padded[i, dy:dy + 32, dx:dx + 32]
        if np.array_equal(crop, a[i]) or np.array_equal(crop[:, ::-1], a[i]):
          ok = True
    assert ok


def test_epoch_permutation_by_key():
  a = data.epoch_permutation(jax.random.PRNGKey(0), 100, 32)
  assert a.shape == (3, 32) and len(set(a.ravel())) == 96
  np.testing.assert_array_equal(a, data.epoch_permutation(
      jax.random.PRNGKey(0), 100, 32))


def test_validation_split_is_held_out_and_fixed_by_its_seed(mnist_dir):
  ds = data.load_dataset("mnist", mnist_dir, train_subset=1000)
  a = data.split_validation(ds, 200, seed=0)
  b = data.split_validation(ds, 200, seed=0)
  c = data.split_validation(ds, 200, seed=1)
  assert len(a.train_labels) == 800 and len(a.val_labels) == 200
  np.testing.assert_array_equal(a.val_images, b.val_images)
  assert not np.array_equal(a.val_images, c.val_images)
  # Disjoint, and together exactly the training set.
  key = lambda x: {hashlib.sha1(im.tobytes()).hexdigest() for im in x}
  # (MNIST has a few duplicate images: compare positions, not bytes.)
  assert len(key(a.val_images) & key(a.train_images)) <= 2
  assert len(key(a.val_images) | key(a.train_images)) == len(
      key(ds.train_images))
  # The test set is untouched; 0 means no split.
  np.testing.assert_array_equal(a.test_images, ds.test_images)
  assert data.split_validation(ds, 0) is ds
  with pytest.raises(data.DataError, match="val_size 1000"):
    data.split_validation(ds, 1000)


def test_test_subset_is_a_class_mixed_sample(cifar_dir):
  # CIFAR-10's test split is sorted by class: its first 256 rows are all
  # airplanes. The subset must be a fixed sample of every class.
  ds = data.load_dataset("cifar10", cifar_dir, train_subset=100,
                         test_subset=256)
  counts = np.bincount(ds.test_labels, minlength=10)
  assert len(ds.test_labels) == 256 and np.all(counts > 10), counts
  again = data.load_dataset("cifar10", cifar_dir, train_subset=100,
                            test_subset=256)
  np.testing.assert_array_equal(ds.test_images, again.test_images)
