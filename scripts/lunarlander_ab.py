"""The LunarLander A/B: the clipped-delta loss (the 2016 bug) against Huber (the fix) on LunarLander-v3, where
rewards of +-100 put about a fifth of the sampled TD errors beyond the clip bound of 1 while the agent learns.
3 seeds each at rl-zoo's budget of 100k env steps, in parallel local processes (12 minutes on 2 cores);
docs/results.md has the numbers. Needs the box2d extra: pip install -e ".[box2d]".

    python scripts/lunarlander_ab.py                  # writes runs/<timestamp>/, prints the table
    python scripts/lunarlander_ab.py --steps 50000 --seeds 5 --workers 2

Extra arguments are passed to `dqnlab ab` as they are.
"""

import sys

from dqnlab.cli import main

ARMS = ["lunarlander_clipped_delta", "lunarlander_huber"]
STEPS = 100_000  # env steps per run: rl-zoo's n_timesteps for LunarLander

if __name__ == "__main__":
    extra = sys.argv[1:]
    seeds = [] if "--seeds" in extra else ["--seeds", "3"]
    steps = [] if "--steps" in extra else ["--steps", str(STEPS)]
    sys.exit(main(["ab", *ARMS, *seeds, *steps, *extra]))
