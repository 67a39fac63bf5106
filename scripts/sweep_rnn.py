"""The vanilla-RNN map: W_hh's spectral radius at init x the global gradient clip (docs/sweeps.md,
docs/recurrent.md), on the velocity-masked CartPole.

    python scripts/sweep_rnn.py --map docs/img/sweep_rnn.png --force    # 18 cells x 2 seeds x 5k steps
    python scripts/sweep_rnn.py --seeds 1 --steps 3000

rnn_exploding (a tanh cell) with recurrent.recurrent_init_scale from 0.5 to 5 x train.grad_clip_norm off
(0), 1 and 10. 5k steps measure the backward pass, not learning (that takes ~100k). Extra arguments go
to `dqnlab sweep` as they are (--seeds and --steps replace the defaults).
"""

import sys

from dqnlab.sweep import run_script

GRID = ["rnn_exploding", "--grid", "recurrent.recurrent_init_scale=0.5,1,2,3,4,5"]
GRID += ["--grid", "train.grad_clip_norm=0,1,10"]

if __name__ == "__main__":
    sys.exit(run_script(GRID, {"--seeds": "2", "--steps": "5000"}, sys.argv[1:], "sweep_rnn.py"))
