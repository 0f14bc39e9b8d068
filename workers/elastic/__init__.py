"""Elastic, fault-tolerant data-parallel training on Ray: peers churn, survivors never restart.

Map: ``task`` (what to train) -> ``coordinator`` (membership epochs, one actor per job)
-> ``peer`` (one actor per node: compute, gather, commit) using ``backend`` (gloo or NCCL
groups, aborted when broken), ``sharding`` (which samples), ``step_math`` (bit-exact
gradient combination), ``state`` (hash and transfer), ``checkpoint`` (async atomic files)
and ``membership`` (the pure formation policy).
"""
