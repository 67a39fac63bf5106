"""The headline A/B: the clipped-delta loss (the 2016 bug) against Huber (the fix) and the plain squared
control, 3 seeds each, 50k env steps of CartPole-v1, in parallel local processes.

    python scripts/headline_ab.py                 # writes runs/<timestamp>/, prints the table
    python scripts/headline_ab.py --seeds 5 --env dqnlab/CartPole-reward100-v1

Extra arguments are passed to `dqnlab ab` as they are.
"""

import sys

from dqnlab.cli import main

ARMS = ["clipped_delta_relu", "huber_relu", "squared_relu"]

if __name__ == "__main__":
    extra = sys.argv[1:]
    seeds = [] if "--seeds" in extra else ["--seeds", "3"]
    sys.exit(main(["ab", *ARMS, *seeds, *extra]))
