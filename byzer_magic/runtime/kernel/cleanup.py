"""What a job still holds on the cluster, and waiting until it holds nothing.

A job's driver (``job_entry``) owns the Ray Train controller, which owns the worker actors and their
placement group: when the driver exits (success, failure, ``stop``), Ray frees them all, but
asynchronously. ``JobHandle.stop()`` waits here until Ray's state API shows them gone, so that "stopped"
means "its CPUs/GPUs are free again". Detached helpers that Ray Train and Ray Data create once per
cluster (``AutoscalingCoordinator``, the datasets stats actor) outlive jobs by design; they are
reported by ``detached_helpers`` so that a test can check they do not pile up.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Leftovers:
    """A job's actors and placement groups that Ray has not freed yet."""
    actors: list[str] = field(default_factory=list)            # "ClassName(pid=...)"
    placement_groups: list[str] = field(default_factory=list)  # placement group ids

    def __bool__(self) -> bool:
        return bool(self.actors or self.placement_groups)

    def describe(self) -> str:
        parts = []
        if self.actors:
            parts.append(f"{len(self.actors)} actor(s): {', '.join(self.actors)}")
        if self.placement_groups:
            parts.append(f"{len(self.placement_groups)} placement group(s)")
        return "; ".join(parts) or "nothing"


def _state_address() -> str:
    # The dashboard's URL, always: without an address Ray's state API looks for "the" Ray instance on
    # this machine, and fails when there are several (other users', other heads).
    from byzer_magic.runtime import cluster  # noqa: PLC0415

    return cluster.connect().dashboard_url


def leftovers(ray_job_id: str) -> Leftovers:
    """The non-detached actors still alive and the placement groups not removed of Ray job
    ``ray_job_id`` (the driver's job id, ``JobDetails.job_id``; not the submission id)."""
    from ray.util.state import list_actors, list_placement_groups  # noqa: PLC0415

    address = _state_address()
    actors = list_actors(address=address, filters=[("job_id", "=", ray_job_id), ("state", "!=", "DEAD")],
                         detail=True, limit=10_000, raise_on_missing_output=False)
    groups = list_placement_groups(address=address, filters=[("creator_job_id", "=", ray_job_id),
                                                             ("state", "!=", "REMOVED")],
                                   detail=True, limit=10_000, raise_on_missing_output=False)
    return Leftovers(actors=[f"{a.class_name}(pid={a.pid})" for a in actors if not a.is_detached],
                     placement_groups=[g.placement_group_id for g in groups if not g.is_detached])


def wait_released(ray_job_id: str, timeout: float = 60, poll: float = 0.5) -> Leftovers:
    """Wait until job ``ray_job_id`` holds no actor or placement group; what it still holds after
    ``timeout`` seconds (empty when all was freed)."""
    deadline = time.time() + timeout
    while True:
        held = leftovers(ray_job_id)
        if not held or time.time() > deadline:
            return held
        time.sleep(poll)


def detached_helpers() -> Counter:
    """Alive detached actors by class name, all jobs together (each should be 1: a per-cluster helper)."""
    from ray.util.state import list_actors  # noqa: PLC0415

    alive = list_actors(address=_state_address(), filters=[("state", "=", "ALIVE")], detail=True,
                        limit=10_000, raise_on_missing_output=False)
    return Counter(a.class_name for a in alive if a.is_detached)
