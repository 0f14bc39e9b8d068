"""Prometheus metrics of one elastic job (``flowtide_train_*``, label ``job``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class TrainMetrics:
    """Owned by the job's coordinator; exposed by HTTP or ``generate_latest(registry)``."""

    def __init__(self, job_id: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, j = self.registry, job_id

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["job"], registry=r).labels(job=j)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["job"], registry=r).labels(job=j)

        self.steps_per_second = gauge("flowtide_train_steps_per_second", "Committed steps per second (last 10 s).")
        self.world_size = gauge("flowtide_train_world_size", "Peers in the current membership epoch.")
        self.epoch = gauge("flowtide_train_membership_epoch", "Membership epochs formed so far.")
        self.last_commit_step = gauge("flowtide_train_last_commit_step", "Last committed step.")
        self.last_commit_time = gauge(
            "flowtide_train_last_commit_timestamp_seconds", "Unix time of the last committed step."
        )
        self.loss = gauge("flowtide_train_loss", "Mean loss of the last committed step.")
        self.steps = counter("flowtide_train_steps", "Committed steps.")
        self.recoveries = counter("flowtide_train_recoveries", "Re-formations after a peer failure.")
        self.joins = counter("flowtide_train_joins", "Peers that joined a running job with transferred state.")
        self.releases = counter("flowtide_train_releases", "Peers released at a step boundary (preemption).")
        self.churn_lost = counter(
            "flowtide_train_churn_lost_seconds", "Wall time lost to re-formations beyond a normal step."
        )
