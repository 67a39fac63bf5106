"""The dead-ReLU map: huber_relu over the learning rate x the initial hidden bias (docs/sweeps.md).

    python scripts/sweep_dead_relu.py --map docs/img/sweep_dead_relu.png --force    # 50 cells x 2 seeds x 10k
    python scripts/sweep_dead_relu.py --seeds 1 --steps 3000                        # smaller

Ten learning rates from 1e-4 to 1e-1 (log-spaced) x five biases from 0 to -3. Extra arguments go to
`dqnlab sweep` as they are (--seeds and --steps replace the defaults); `--map FILE` draws the maps with
`dqnlab compare --map` once the sweep is done.
"""

import sys

from dqnlab.sweep import run_script

GRID = ["huber_relu", "--grid", "optimizer.learning_rate=log:1e-4:1e-1:10"]
GRID += ["--grid", "network.bias_init=0,-0.5,-1,-2,-3"]
# The map in docs/sweeps.md was measured on He-uniform kernels and constant biases (huber_relu before #21);
# a bias axis needs constant biases anyway.
GRID += ["--set", "network.kernel_init=he_uniform", "--set", "network.bias_init_kind=constant"]
GRID += ["--set", "optimizer.epsilon=1e-7"]

if __name__ == "__main__":
    sys.exit(run_script(GRID, {"--seeds": "2", "--steps": "10000"}, sys.argv[1:], "sweep_dead_relu.py"))
