"""The clipped-delta map: the 2016 loss over the reward scale x its clip bound, beside Huber (docs/sweeps.md).

    python scripts/sweep_clipped_delta.py --map docs/img/sweep_clipped_delta.png --force  # 30 x 2 x 10k
    python scripts/sweep_clipped_delta.py --seeds 1 --steps 3000

CartPole with rewards x1, x10, x100 (dqnlab's reward-scaled ids) x the bound (loss.bound: the clip of the
clipped-delta loss, kappa of Huber) from 0.1 to 1000; the two losses are the third axis, one map each.
Extra arguments go to `dqnlab sweep` as they are (--seeds and --steps replace the defaults).
"""

import sys

from dqnlab.sweep import run_script

ENVS = "env=CartPole-v1,dqnlab/CartPole-reward10-v1,dqnlab/CartPole-reward100-v1"
GRID = ["clipped_delta_relu", "huber_relu", "--grid", "loss.bound=log:0.1:1000:5", "--grid", ENVS]
# The map in docs/sweeps.md was measured on He-uniform kernels and zero biases (the presets before #21).
GRID += ["--set", "network.kernel_init=he_uniform", "--set", "network.bias_init_kind=constant"]
GRID += ["--set", "optimizer.epsilon=1e-7"]

if __name__ == "__main__":
    sys.exit(run_script(GRID, {"--seeds": "2", "--steps": "10000"}, sys.argv[1:], "sweep_clipped_delta.py"))
