"""The recurrent A/B: exploding gradients through time, and its two fixes, on velocity-masked CartPole.

    python scripts/recurrent_ab.py                    # 5 arms x 3 seeds x 100k env steps (~30 min, 2 cores)
    python scripts/recurrent_ab.py --seeds 1 --steps 10000

Arms: a vanilla tanh RNN with W_hh at spectral radius 3 (rnn_exploding), the same with global-norm clipping
(rnn_exploding_clipped), an LSTM and a GRU (gating), and the feed-forward huber_relu, which has no memory and
so cannot tell the pole's motion from one masked observation. Read bptt/grad_norm/t-<k> in TensorBoard's
"Exploding gradients and BPTT" category; `dqnlab doctor` on the experiment names the exploding arms.
Extra arguments are passed to `dqnlab ab` as they are.
"""

import sys

from dqnlab.cli import main

ARMS = ["rnn_exploding", "rnn_exploding_clipped", "lstm", "gru", "huber_relu"]
ENV = "dqnlab/CartPole-masked-v1"

if __name__ == "__main__":
    extra = sys.argv[1:]
    seeds = [] if "--seeds" in extra else ["--seeds", "3"]
    steps = [] if "--steps" in extra else ["--steps", "100000"]  # the vanilla cell's budget (recurrent.md)
    sys.exit(main(["ab", *ARMS, "--env", ENV, *seeds, *steps, *extra]))
