"""Network partitions for the chaos e2e tests (issue 15): a process in a network namespace of the test's
own, reaching the bed's loopback services over veth links that can be cut so that connections HANG.

    edge = Partition("t1234")                        # two namespaces: `inner` (the operator) and `edge`
    api = edge.link(6443, "127.96.0.1")              # inner -> 127.96.0.1:6443 -> host 127.0.0.1:6443
    edge.run(["python", ...])                        # argv for `ip netns exec <inner> ...`
    edge.cut(api); ...; edge.restore(api)
    edge.close()

Each link is a veth pair between `inner` and `edge` on a /30 of 127.0.0.0/8 (both ends are namespaces of
the test's own, so the host's routing is never touched: route_localnet on, and the local 127.0.0.0/8 route
of each namespace removed, but for 127.0.0.1 itself). In `edge`, a relay thread of the test's process
listens on the link's address and forwards each connection to 127.0.0.1:<port> in the host namespace.
Everything stays on 127.0.0.0/8 of this machine. Why two namespaces and not a veth to the host: the
host's own table `local` claims all of 127.0.0.0/8 for its loopback, so it cannot answer a 127.x peer on
a veth, and the bed binds every port on 127.0.0.1 only (tried: such requests time out).

`cut` takes the edge's end of the link down. The inner end keeps its route (NO-CARRIER, "linkdown") and a
permanent neighbour entry, so nothing fails fast: new connections' SYNs and established ones' segments are
dropped, as in a real partition, and TCP resumes them when `restore` brings the end back up.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
import threading

CLONE_NEWNET = 0x40000000


def _ip(*args: str, check: bool = True) -> str:
    r = subprocess.run(["ip", *args], text=True, capture_output=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def available() -> str | None:
    """None if this machine can build partitions, else why not (a reason to skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"ipool-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (OSError, RuntimeError) as error:
        return f"`ip netns add` is unavailable: {error}"
    return None


def _in_netns(name: str, make):
    """make() run in a thread that entered netns `name` (setns is per thread): a socket made there stays there."""
    out: list = []

    def enter():
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/run/netns/{name}") as f:
            if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                out.append(OSError(ctypes.get_errno(), f"setns into {name}"))
                return
        try:
            out.append(make())
        except Exception as error:  # noqa: BLE001 - handed to the caller
            out.append(error)

    t = threading.Thread(target=enter)
    t.start()
    t.join()
    if isinstance(out[0], Exception):
        raise out[0]
    return out[0]


class Link:
    def __init__(self, index: int, port: int, address: str, inner_address: str):
        self.index, self.port, self.address, self.inner_address = index, port, address, inner_address
        self.inner_dev, self.edge_dev = f"in{index}", f"edge{index}"
        self.listener: socket.socket | None = None
        self.connections = 0  # relayed so far
        self.pairs: list[tuple[socket.socket, socket.socket]] = []  # (edge side, host side) per connection


class Partition:
    """Two network namespaces (`inner`, `edge`) and the links between them; see the module docstring."""

    def __init__(self, tag: str):
        self.inner, self.edge = f"ipool-in-{tag}", f"ipool-edge-{tag}"
        self.links: list[Link] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        for ns in (self.inner, self.edge):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            self._sysctl(ns, "net.ipv4.conf.all.route_localnet", "1")
            self._sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")
            # 127.0.0.1 stays this namespace's own loopback; the rest of 127.0.0.0/8 may be routed
            _ip("-n", ns, "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")

    @staticmethod
    def _sysctl(ns: str, key: str, value: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"], check=True, timeout=30)

    def link(self, port: int, address: str) -> Link:
        """A link whose edge end is `address` (x.x.x.1 of a /30 in 127.0.0.0/8), relayed to 127.0.0.1:port."""
        base = address.rsplit(".", 1)[0]
        link = Link(len(self.links), port, address, f"{base}.{int(address.rsplit('.', 1)[1]) + 1}")
        _ip("link", "add", link.inner_dev, "netns", self.inner, "type", "veth", "peer", "name", link.edge_dev,
            "netns", self.edge)
        for ns, dev, addr in ((self.inner, link.inner_dev, link.inner_address), (self.edge, link.edge_dev, address)):
            self._sysctl(ns, f"net.ipv4.conf.{dev}.route_localnet", "1")
            self._sysctl(ns, f"net.ipv4.conf.{dev}.rp_filter", "0")
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        self._neighbours(link)
        link.listener = _in_netns(self.edge, lambda: self._listen(address, port))
        threading.Thread(target=self._accept, args=(link,), daemon=True, name=f"relay-{port}").start()
        self.links.append(link)
        return link

    def _neighbours(self, link: Link) -> None:
        """Permanent ARP entries both ways: a cut link drops packets instead of failing ARP after 3 s."""
        for ns, dev, peer_ns, peer_dev, peer_addr in (
                (self.inner, link.inner_dev, self.edge, link.edge_dev, link.address),
                (self.edge, link.edge_dev, self.inner, link.inner_dev, link.inner_address)):
            mac = _ip("-n", peer_ns, "-br", "link", "show", peer_dev).split()[2]
            _ip("-n", ns, "neigh", "replace", peer_addr, "lladdr", mac, "dev", dev, "nud", "permanent")

    @staticmethod
    def _listen(address: str, port: int) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        s.listen(128)
        s.settimeout(0.5)  # so that close() ends the accept loop
        return s

    def _accept(self, link: Link) -> None:
        while not self._closed:
            try:
                inner, _ = link.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            inner.settimeout(None)
            try:
                host = socket.create_connection(("127.0.0.1", link.port), timeout=10)
                host.settimeout(None)
            except OSError:
                inner.close()
                continue
            link.connections += 1
            link.pairs.append((inner, host))
            self._sockets += [inner, host]
            for a, b in ((inner, host), (host, inner)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                try:
                    s.shutdown(how)
                except OSError:
                    pass

    def run(self, argv: list[str]) -> list[str]:
        """argv run inside `inner`."""
        return ["ip", "netns", "exec", self.inner, *argv]

    def cut(self, link: Link) -> None:
        _ip("-n", self.edge, "link", "set", link.edge_dev, "down")

    def forget(self, link: Link) -> None:
        """While cut: the far side gives up on every connection of the link, as a server does after its TCP
        retries (or a NAT/load balancer after its idle timeout). Its reset is lost on the cut link, so the
        inner side's connections stay open, dead: a reader waiting on one (a watch) waits for ever."""
        for edge, host in link.pairs:
            edge.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not FIN
            for s in (edge, host):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        link.pairs.clear()

    def restore(self, link: Link) -> None:
        _ip("-n", self.edge, "link", "set", link.edge_dev, "up")
        self._neighbours(link)  # taking a device down flushes its own table, permanent entries too

    def close(self) -> None:
        self._closed = True
        for link in self.links:
            if link.listener:
                link.listener.close()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass
        for ns in (self.inner, self.edge):
            _ip("netns", "del", ns, check=False)  # its veth ends go with it
