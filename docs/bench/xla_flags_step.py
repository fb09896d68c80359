"""ResNet-20 scanned-chunk step time at batch 128 on synthetic data (the
gpu_check timing), for the XLA_FLAGS of the environment: run once per setting,
e.g. XLA_FLAGS=--xla_cpu_use_onednn=true python docs/bench/xla_flags_step.py
"""
import sys, json
sys.path.insert(0, ".")
from proxnag_jax import engine, models
from train import gpu_check
mesh = engine.make_mesh()
m = models.get_model("resnet20", 10)
r = gpu_check.time_batch(m, mesh, 128, steps=8, chunk=8, repeats=2, n_images=2048)
print(json.dumps({k: round(v, 2) for k, v in r.items()}))
