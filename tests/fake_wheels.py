"""Tiny pure-Python wheels made in a test, and sockets that play an offline or a stuck index."""

from __future__ import annotations

import base64
import hashlib
import socket
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest},{len(data)}"


def make_wheel(folder: Path, name: str, version: str = "1.0", requires: Sequence[str] = (),
               files: Optional[Dict[str, str]] = None) -> Path:
    """Write ``name-version-py3-none-any.whl`` into ``folder``: one package ``name`` (dashes
    become underscores) whose ``__version__`` is ``version``, plus ``files``."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    contents = {f"{module}/__init__.py": f"__version__ = {version!r}\n", **(files or {})}
    metadata = "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                        *(f"Requires-Dist: {r}\n" for r in requires)])
    contents[f"{dist_info}/METADATA"] = metadata
    contents[f"{dist_info}/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: metriccd-tests\n"
                                      "Root-Is-Purelib: true\nTag: py3-none-any\n")
    record = [f"{path},{_record_hash(text.encode())}" for path, text in contents.items()]
    contents[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in contents.items():
            archive.writestr(path, text)
    return wheel


def closed_port() -> int:
    """A local TCP port nobody listens on (connections are refused: an offline index)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def stuck_index() -> Iterator[str]:
    """The URL of an index that accepts connections and never answers (pip waits)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/simple"
    finally:
        sock.close()
