"""A loopback HTTP proxy in front of the S3 gateway that records every object deletion it
forwards (DeleteObjects keys, DeleteObject paths): how many times each object was deleted,
whichever node asked. Requests go through unchanged (the Host header too, so SigV4 holds)."""

from __future__ import annotations

import http.client
import re
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..support import free_port

_KEY = re.compile(rb"<Key>(.*?)</Key>", re.S)
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class DeletionCounter:
    def __init__(self, upstream: str) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.deleted: Counter[str] = Counter()  # "bucket/key" → deletions forwarded
        self._lock = threading.Lock()
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _record(self, method: str, path: str, body: bytes) -> None:
        url = urllib.parse.urlsplit(path)
        name = urllib.parse.unquote(url.path).lstrip("/")
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        keys: list[str] = []
        if method == "POST" and "delete" in query:
            bucket = name.split("/", 1)[0]
            keys = [f"{bucket}/{k.decode()}" for k in _KEY.findall(body)]
        elif method == "DELETE" and "/" in name:
            keys = [name]
        with self._lock:
            self.deleted.update(keys)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        counter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn = http.client.HTTPConnection(*counter.upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    if 200 <= resp.status < 300:
                        counter._record(self.command, self.path, body)
                    self.send_response(resp.status, resp.reason)
                    head = self.command == "HEAD"
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP and (head or k.lower() != "content-length"):
                            self.send_header(k, v)
                    if not head:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if not head:
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler
