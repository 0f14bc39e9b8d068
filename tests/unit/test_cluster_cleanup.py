"""LocalCluster's last sweep: processes that carry its tag die with it; others live."""

from __future__ import annotations

import os
import subprocess

from orchestrator.cluster import CLUSTER_TAG_ENV, _kill_tagged


def test_tagged_leftovers_are_killed_and_others_spared():
    ours = subprocess.Popen(["sleep", "60"], env={**os.environ, CLUSTER_TAG_ENV: "cluster-a"})
    other = subprocess.Popen(["sleep", "60"], env={**os.environ, CLUSTER_TAG_ENV: "cluster-b"})
    try:
        _kill_tagged("cluster-a")
        assert ours.wait(timeout=10) == -9
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
