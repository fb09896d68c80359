"""Pruning a Flax NNX model inside ``nnx.Optimizer`` with an ``nnx.jit`` step.

The model is the user's own (a small CNN written here with ``flax.nnx``);
the pruning method is an Optax transformation (``pj.pruning``) handed to
``nnx.Optimizer`` like any other: ``optimizer.update(model, grads,
loss=loss)`` runs the method's schedule and masks, and nothing else is
called. At the end ``pj.final_params`` gives the pruned weights, exactly at
the target sparsity, which are written back into the model.

  python examples/nnx_optimizer.py --data_dir ../shared/data \\
      --method proxnag --target 0.9 --dense_steps 1000 --steps 2000
"""

import argparse
import time

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import proxnag_jax as pj
from proxnag_jax import data as data_lib


class CNN(nnx.Module):
  """Two 3x3 convolutions with pooling and a linear classifier."""

  def __init__(self, rngs: nnx.Rngs, num_classes: int = 10):
    self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
    self.fc1 = nnx.Linear(7 * 7 * 32, 128, rngs=rngs)
    self.fc2 = nnx.Linear(128, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.avg_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
    x = nnx.avg_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
    x = nnx.relu(self.fc1(x.reshape((x.shape[0], -1))))
    return self.fc2(x)


def loss_and_acc(model, x, y):
  logits = model(x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == y)


@nnx.jit
def train_step(model, optimizer, x, y):
  (loss, acc), grads = nnx.value_and_grad(loss_and_acc, has_aux=True)(
      model, x, y)
  optimizer.update(model, grads, loss=loss, accuracy=acc)
  return loss


@nnx.jit
def accuracy(model, x, y):
  return loss_and_acc(model, x, y)[1]


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--data_dir", default=None)
  ap.add_argument("--method", default="proxnag")
  ap.add_argument("--target", type=float, default=0.9)
  ap.add_argument("--dense_steps", type=int, default=1000)
  ap.add_argument("--steps", type=int, default=2000)
  ap.add_argument("--batch_size", type=int, default=128)
  ap.add_argument("--dense_lr", type=float, default=0.02)
  ap.add_argument("--lr", type=float, default=0.01)
  ap.add_argument("--train_subset", type=int, default=0)
  ap.add_argument("--test_subset", type=int, default=0)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)

  ds = data_lib.load_dataset("mnist", args.data_dir, args.train_subset,
                             args.test_subset, download=False)
  mean, std = ds.mean_std
  x_train = data_lib.preprocess(jnp.asarray(ds.train_images), mean, std)
  y_train = jnp.asarray(ds.train_labels)
  x_test = data_lib.preprocess(jnp.asarray(ds.test_images), mean, std)
  y_test = jnp.asarray(ds.test_labels)
  rng = np.random.default_rng(args.seed)

  def batch():
    idx = rng.integers(0, len(y_train), args.batch_size)
    return x_train[idx], y_train[idx]

  model = CNN(nnx.Rngs(args.seed))
  dense = nnx.Optimizer(model, optax.sgd(args.dense_lr, momentum=0.9,
                                         nesterov=True),
                        wrt=nnx.Param)
  for _ in range(args.dense_steps):
    train_step(model, dense, *batch())
  dense_acc = float(accuracy(model, x_test, y_test))

  # The pruning method is the optimizer. Weight methods train the params
  # themselves, so the model is used as it is.
  tx = pj.pruning(args.method, target_sparsity=args.target,
                  total_steps=args.steps, learning_rate=args.lr,
                  seed=args.seed)
  if tx.method.forward is not pj.methods.base.identity_forward:
    raise SystemExit(f"{args.method} trains scores over frozen weights; "
                     "this example is for the methods that train weights.")
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  t0 = time.time()
  for t in range(args.steps):
    loss = train_step(model, optimizer, *batch())
    if (t + 1) % max(1, args.steps // 5) == 0:
      print(f"step {t + 1}/{args.steps}: loss {float(loss):.4f}, "
            f"{time.time() - t0:.0f} s")

  params = nnx.as_pure(nnx.state(model, nnx.Param))
  final = pj.final_params(tx, params, nnx.as_pure(optimizer.opt_state))
  nnx.update(model, final)
  out = {"method": args.method, "target": args.target,
         "dense_accuracy": dense_acc,
         "accuracy": float(accuracy(model, x_test, y_test)),
         "sparsity": float(pj.sparsity(final))}
  print(out)
  return out


if __name__ == "__main__":
  main()
