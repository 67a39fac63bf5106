"""Shared by the tests that check every logged tag is defined in docs/metrics.md."""

import re
from pathlib import Path

DOC = Path(__file__).parent.parent / "docs" / "metrics.md"


def undocumented(tags) -> list[str]:
    """The tags neither named in docs/metrics.md's tables nor matching a `<var>`/`<layer>` pattern there."""
    documented = set(re.findall(r"^\| `([^`]+)` \|", DOC.read_text(), re.M))
    missing = []
    for tag in tags:
        streams = "value_hidden|advantage_hidden|value|advantage"  # a dueling network's (network.dueling)
        generic = re.sub(rf"/((hidden|conv)_\d+|q_head|{streams})/(kernel|bias)$", "/<var>", tag)
        generic = re.sub(r"/rnn/(kernel|recurrent_kernel|bias)$", "/<var>", generic)
        generic = re.sub(r"/((hidden|conv)_\d+|rnn|value_hidden|advantage_hidden)$", "/<layer>", generic)
        generic = re.sub(r"/t-\d+$", "/t-<k>", generic)
        if tag not in documented and generic not in documented:
            missing.append(tag)
    return missing
