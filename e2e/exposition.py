"""A loopback /metrics endpoint whose body a test renders at every scrape, for the bed's Prometheus.

    server = serve_exposition(lambda path: "gateway_requests_total 3\\n")
    target = f"127.0.0.1:{server.server_address[1]}"; ...; stop_server(server)

One shared handler for the e2e tests' fake exporters (vLLM's series in the classic text format, a
gateway's counter, vLLM's recorded expositions) instead of one hand-written http.server class each.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

TEXT_0_0_4 = "text/plain; version=0.0.4"  # the classic text format: names as written, vllm:* stays vllm:*


def serve_exposition(render: Callable[[str], str | bytes], content_type: str | Callable[[str], str] = TEXT_0_0_4,
                     host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Serve GET <path> -> render(path) with `content_type` (or content_type(path)) on host:port (0: a free
    port) from a daemon thread; returns the server (its port: server.server_address[1])."""
    if not host.startswith("127."):
        raise ValueError(f"exporters listen on loopback only, not {host}")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = render(self.path)
            body = body.encode() if isinstance(body, str) else body
            self.send_response(200)
            self.send_header("Content-Type", content_type(self.path) if callable(content_type) else content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # no line on stderr per scrape
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"exposition-{server.server_address[1]}", daemon=True).start()
    return server


def stop_server(server: ThreadingHTTPServer) -> None:
    """Stop serving and close the socket."""
    server.shutdown()
    server.server_close()
