"""A child Python process that plays a notebook kernel: the test sends it cells (Python source), it
runs each in one namespace and answers with the cell's ``out`` and what the cell printed."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path

_REPL = r"""
import json, sys
ns = {}
for line in sys.stdin:
    ns["out"] = None
    try:
        exec(json.loads(line), ns)
        answer = {"ok": True, "out": ns.get("out")}
    except BaseException as err:
        answer = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    print("@@" + json.dumps(answer, default=str), flush=True)
"""


class Kernel:
    def __init__(self, env: dict[str, str], cwd: Path | None = None):
        """``cwd``: the repository's root unless given (Ray puts a driver's directory on its workers' path)."""
        self.proc = subprocess.Popen([sys.executable, "-c", _REPL], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=cwd or Path(__file__).parent.parent.parent)
        self.pid = self.proc.pid
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def run(self, cell: str, timeout: float = 300) -> tuple[dict, str]:
        """Run ``cell``; returns its answer ({"ok", "out"} or {"ok": False, "error"}) and its output."""
        self.proc.stdin.write(json.dumps(cell) + "\n")
        self.proc.stdin.flush()
        printed = []
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"the kernel did not finish {cell!r} in {timeout} s:\n{''.join(printed)}") from None
            if line is None:
                raise AssertionError(f"the kernel died running {cell!r}:\n{''.join(printed)}")
            if line.startswith("@@"):
                return json.loads(line[2:]), "".join(printed)
            printed.append(line)

    def ok(self, cell: str, timeout: float = 300):
        """Run ``cell``, which must succeed; returns its ``out``."""
        answer, printed = self.run(cell, timeout)
        assert answer["ok"], f"{answer['error']}\n{printed}"
        return answer["out"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
