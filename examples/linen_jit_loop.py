"""Pruning LeNet-5 (Flax Linen) inside a hand-written ``jax.jit`` loop.

The whole pruning method is one Optax transformation (``pj.pruning``): its
schedule, masks and state live in the optimizer state, and nothing is called
after the update. The loop below is plain JAX; swap ``--method`` for any
method (``proxnag``, ``magnitude``, ``gmp``, ``snip``, ``admm``, ... or the
structured ``l1_filter`` / ``group_proxnag``, which export a smaller
network).

  python examples/linen_jit_loop.py --data_dir ../shared/data \\
      --method proxnag --target 0.9 --dense_steps 1000 --steps 2000

Prints the dense and pruned test accuracy, the sparsity reached and, for a
structured method, the exported network's parameter count.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import proxnag_jax as pj
from proxnag_jax import data as data_lib
from proxnag_jax import models


def loss_and_acc(model, params, x, y):
  logits = model.apply({"params": params}, x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def batches(key, n, batch_size):
  """Endless shuffled minibatch indices."""
  while True:
    key, k = jax.random.split(key)
    perm = np.asarray(jax.random.permutation(k, n))
    for i in range(n // batch_size):
      yield perm[i * batch_size:(i + 1) * batch_size]


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
  model = models.LeNet5()
  params = model.init(jax.random.PRNGKey(args.seed), x_train[:1])["params"]
  order = batches(jax.random.PRNGKey(args.seed + 1), len(y_train),
                  args.batch_size)

  # 1. Dense training with a plain Optax optimizer.
  dense_tx = optax.sgd(args.dense_lr, momentum=0.9, nesterov=True)
  opt_state = dense_tx.init(params)

  @jax.jit
  def dense_step(params, opt_state, idx):
    grads = jax.grad(lambda p: loss_and_acc(model, p, x_train[idx],
                                            y_train[idx])[0])(params)
    updates, opt_state = dense_tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(args.dense_steps):
    params, opt_state = dense_step(params, opt_state, next(order))
  dense_acc = float(loss_and_acc(model, params, x_test, y_test)[1])

  # 2. Pruning: the method is the optimizer.
  structured = {}
  if args.method in pj.methods.STRUCTURED_METHODS:
    structured = pj.structure(model, {"params": params},
                              ds.input_shape)
  idx0 = next(order)
  grad_fn = jax.grad(lambda p: loss_and_acc(model, p, x_train[idx0],
                                            y_train[idx0])[0])   # SNIP's batch
  tx = pj.pruning(args.method, target_sparsity=args.target,
                  total_steps=args.steps, learning_rate=args.lr,
                  seed=args.seed, grad_fn=grad_fn, **structured)
  params, opt_state = pj.start(tx, params)

  @jax.jit
  def prune_step(params, opt_state, idx):
    def loss_fn(p):
      return loss_and_acc(model, pj.model_params(tx, p, opt_state),
                          x_train[idx], y_train[idx])
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params, loss=loss,
                                   accuracy=acc)
    return optax.apply_updates(params, updates), opt_state, loss

  t0 = time.time()
  for t in range(args.steps):
    params, opt_state, loss = prune_step(params, opt_state, next(order))
    if (t + 1) % max(1, args.steps // 5) == 0:
      f = pj.final_params(tx, params, opt_state)
      print(f"step {t + 1}/{args.steps}: loss {float(loss):.4f}, sparsity "
            f"{float(pj.sparsity(f)):.4f}, {time.time() - t0:.0f} s")

  final = pj.final_params(tx, params, opt_state)
  out = {"method": args.method, "target": args.target,
         "dense_accuracy": dense_acc,
         "accuracy": float(loss_and_acc(model, final, x_test, y_test)[1]),
         "sparsity": float(pj.sparsity(final))}
  if tx.method.structured:
    small_model, variables = pj.export(tx, model, params, opt_state)
    logits = small_model.apply(variables, x_test)
    out.update(exported_params=pj.report.num_params(variables["params"]),
               dense_params=pj.report.num_params(params),
               exported_accuracy=float(jnp.mean(jnp.argmax(logits, -1)
                                                == y_test)))
  print(out)
  return out


if __name__ == "__main__":
  main()
