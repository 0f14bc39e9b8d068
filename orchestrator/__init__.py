"""Flowtide's control plane: cluster and pools, the Serve app, config, CLI, metrics."""

import os

# Keep Ray on loopback. Ray reads this when it is first imported, so it is set here,
# before any orchestrator module imports ray (see ../shared/FACTS.md).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
