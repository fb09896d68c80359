"""Dense training: `python -m train.train --config configs/X.py --workdir DIR`.

Config fields are overridden with `--config.<field>=value`; a `:smoke` suffix
on the config path picks its tiny variant. Re-running the same command
resumes from the last checkpoint in DIR.
"""

from proxnag_jax import commands
from train import cli

if __name__ == "__main__":
  cli.run(commands.train)
