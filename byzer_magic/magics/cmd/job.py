"""The job a sub-command names (``%byzerllm attach NAME`` and the others): found through the job API."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from byzer_magic.magics.magic import ByzerMagic
    from byzer_magic.runtime.kernel.jobs import JobHandle

NAME_HELP = "the job's name (%%byzerllm jobs lists them)"


def find_job(magic: "ByzerMagic", name: str) -> "JobHandle":
    """The job called ``name``, on the cluster or under the jobs folder; a ``ByzerError`` naming the
    known jobs if there is none."""
    from byzer_magic.runtime.kernel.jobs import get_job  # noqa: PLC0415

    magic.connect()
    return get_job(name, magic.session.jobs_dir)
