"""PyTorch reference for the CPU comparison in docs/results.md (not part of the
library; needs `pip install torch==2.13.0` in a separate environment).

The same ResNet-20 (option-A shortcuts, BN momentum 0.1 = Flax 0.9), batch 128
of 32x32x3 inputs, SGD with Nesterov momentum 0.9 and weight decay 5e-4, one
train step = forward, cross-entropy, backward, update. Prints ms per step and
images/s (best of 3 timings of 20 steps after 5 warm-up steps).

  python docs/bench/torch_resnet20_step.py
"""

import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.b1 = nn.BatchNorm2d(cout)
    self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.b2 = nn.BatchNorm2d(cout)
    self.stride, self.pad = stride, cout - cin

  def forward(self, x):
    y = F.relu(self.b1(self.c1(x)))
    y = self.b2(self.c2(y))
    if self.stride != 1 or self.pad:
      x = x[:, :, ::self.stride, ::self.stride]
      x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
    return F.relu(y + x)


class ResNet20(nn.Module):
  def __init__(self):
    super().__init__()
    self.c = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.b = nn.BatchNorm2d(16)
    layers, cin = [], 16
    for stage, w in enumerate((16, 32, 64)):
      for i in range(3):
        layers.append(Block(cin, w, 2 if stage and not i else 1))
        cin = w
    self.layers = nn.Sequential(*layers)
    self.fc = nn.Linear(64, 10)

  def forward(self, x):
    x = self.layers(F.relu(self.b(self.c(x))))
    return self.fc(x.mean((2, 3)))


def main():
  torch.manual_seed(0)
  model = ResNet20()
  print("params", sum(p.numel() for p in model.parameters()))
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                        nesterov=True, weight_decay=5e-4)
  x = torch.randn(128, 3, 32, 32)
  y = torch.randint(0, 10, (128,))

  def step():
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()

  for _ in range(5):
    step()
  best = float("inf")
  for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(20):
      step()
    best = min(best, (time.perf_counter() - t0) / 20)
  print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: "
        f"{1000 * best:.1f} ms/step, {128 / best:.0f} images/s")


if __name__ == "__main__":
  main()
