"""The processes of an embedded Ray head (runtime/cluster.py starts it): finding every one of them,
whatever Ray renamed it to, and ending them all (``ray stop`` would end every Ray on the machine)."""
from __future__ import annotations

import contextlib
import os

HEAD_ID_VAR = "BYZER_MAGIC_HEAD_ID"  # in the head's environment, so in that of every process it starts


def head_processes(record: dict, program: str = "") -> list:
    """The live processes of the embedded head ``record`` describes (cluster.py's ray_head.json),
    ``program``'s only if given: those whose environment carries its id (all it started, job drivers
    included, whatever Ray renamed them to), in its process session, or naming its temp dir. Never
    this process, nor another user's."""
    import psutil  # noqa: PLC0415

    head_id, sid, temp_dir = record.get("head_id"), record.get("sid"), record.get("temp_dir")
    found = []
    for proc in psutil.process_iter(["cmdline", "name", "uids", "status"]):
        try:
            if proc.pid == os.getpid() or proc.info["uids"].real != os.getuid() or \
                    proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = proc.info["cmdline"] or []
            ours = (temp_dir and any(_names(part, temp_dir) for part in cmdline)) \
                or (sid and os.getsid(proc.pid) == sid) or (head_id and proc.environ().get(HEAD_ID_VAR) == head_id)
            if ours and (not program or program in (proc.info["name"] or "") or any(program in c for c in cmdline[:2])):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _names(part: str, folder: str) -> bool:
    """``part`` of a command line is ``folder`` or a path inside it (not a sibling such as ``ray_head.log``)."""
    return part == folder or part.endswith("=" + folder) or folder + "/" in part


def kill_head(record: dict, grace: float = 10) -> None:
    """End every process of the head ``record`` describes (``ray stop`` would end every Ray on the
    machine, other users' and other heads' too): SIGTERM, then SIGKILL after ``grace`` seconds."""
    import psutil  # noqa: PLC0415

    for _ in range(3):  # a dying raylet may still start a worker: look again
        ours = head_processes(record)
        if not ours:
            return
        for proc in ours:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(ours, timeout=grace)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
