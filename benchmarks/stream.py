"""Reading a video from disk against reading it as a stream from a loopback HTTP server, both
through PyAV: what ``predict --input http://...`` pays for the network path itself."""

from __future__ import annotations

import functools
import http.server
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # no line per request on stderr
        pass


@contextmanager
def served(path: Path) -> Iterator[str]:
    """``path``'s URL on an HTTP server on 127.0.0.1 (a free port) for the block."""
    handler = functools.partial(_QuietHandler, directory=str(path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def read_disk(path: Path, frames: int | None = None) -> tuple[float, int]:
    """Seconds to open the file and decode every frame (or the first ``frames``) to an RGB
    tensor, and the frames."""
    from unipercept.data.video import open_frames

    start = time.perf_counter()
    with open_frames(path) as source:
        count = sum(1 for _ in itertools.islice(source, frames))
    return time.perf_counter() - start, count


def read_stream(url: str, frames: int | None = None) -> tuple[float, int]:
    """The same through :class:`~unipercept.data.video.StreamSource` (connect included)."""
    from unipercept.data.video import StreamSource

    start = time.perf_counter()
    source = StreamSource(url)
    try:
        count = sum(1 for _ in itertools.islice(source, frames))
    finally:
        source.close()
    return time.perf_counter() - start, count
