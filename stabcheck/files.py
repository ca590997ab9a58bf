"""Writing a file so that no reader, and no crash, ever sees half of it.

>>> import tempfile
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "out" / "a.txt"
>>> write_atomic(path, "done"); path.read_text()
'done'
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def write_atomic(path: str | os.PathLike, content: str | bytes | Callable[[IO[bytes]], object]) -> None:
    """Write ``content`` (text, bytes, or a function that writes to a binary file) to ``path`` through a
    temporary file in the same folder, renamed over ``path`` when complete (the folder is created).

    The temporary is named ``.<name>.<random>.tmp``: a caller that serialises its writers under a lock
    may remove such files left by a killed writer. The file is readable by everyone (0644), as a
    plain ``open`` would make it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content.encode() if isinstance(content, str) else content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
