"""dqnlab: a DQN debugging testbed for seeing what backpropagation does inside a DQN.

The public API (a contract: docs/architecture.md)::

    import dqnlab
    cfg = dqnlab.load_preset("huber_relu")
    res = dqnlab.train(cfg, env="CartPole-v1", seed=0, steps=2_000, logdir="runs")
    res.status, res.run_dir, res.scalars("grad_zero_frac/q_head/kernel")
    dqnlab.read_run(res.run_dir)

Attributes are resolved lazily so that `import dqnlab` (and the light modules such as
`dqnlab.replay` or `dqnlab.config`) never pays for importing TensorFlow.
"""

from __future__ import annotations

import importlib
import os

# TensorFlow's C++ INFO/WARNING lines (CUDA probes on CPU-only machines, oneDNN notes) are noise here;
# errors still print. A user who wants them sets TF_CPP_MIN_LOG_LEVEL themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

_LAZY = {
    "load_preset": "dqnlab.config",
    "Config": "dqnlab.config",
    "ConfigError": "dqnlab.config",
    "train": "dqnlab.trainer",
    "RunResult": "dqnlab.rundir",
    "read_run": "dqnlab.rundir",
    "Panel": "dqnlab.panel",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dqnlab' has no attribute {name!r}")
