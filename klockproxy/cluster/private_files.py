"""Files only their owner may read: keys, tokens, kubeconfigs that hold credentials."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (credentials, keys).

    Created 0600 (never world-readable, even for a moment); an existing file is truncated
    and set to 0600 as well.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def replace_private(path: Path, data: bytes) -> None:
    """``write_private`` through a sibling temporary file renamed over ``path``.

    A reader (kubectl, a file watch) sees the old content or the new, never half of it.
    """
    tmp = path.with_name(path.name + ".tmp")
    write_private(tmp, data)
    os.replace(tmp, path)
