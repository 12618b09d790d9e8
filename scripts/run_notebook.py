"""Execute a notebook headless in a real kernel (nbclient) and save the executed copy; print its text
outputs as it goes, and fail (exit 1) on the first cell error."""
from __future__ import annotations

import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main(source: str, target: str) -> int:
    notebook = nbformat.read(source, as_version=4)
    client = NotebookClient(notebook, timeout=1800, kernel_name="python3", resources={"metadata": {"path": "."}})
    try:
        client.execute()
        return 0
    except CellExecutionError as err:
        print(str(err)[-3000:], file=sys.stderr)
        return 1
    finally:
        nbformat.write(notebook, target)
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                text = output.get("text") or output.get("data", {}).get("text/plain", "")
                if text:
                    print(text if isinstance(text, str) else "".join(text), end="" if str(text).endswith("\n") else "\n")
        print(f"executed notebook saved to {target}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
