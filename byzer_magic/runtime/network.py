"""NCCL's network interface, found from the node's Ray IP (``setup_nccl_socket_ifname_by_ip``), and free
ports of the loopback for the services a head starts.

Nodes whose interfaces are named differently (eth0 here, ens3 there) cannot agree on one
``NCCL_SOCKET_IFNAME``; each worker instead looks up the interface that carries its own node's IP.
"""
from __future__ import annotations

import os
import socket

from byzer_magic.errors import ByzerError


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different ports free on ``host`` now. The sockets are held until all are bound: ports
    taken one after another may repeat once each socket is closed (a head's start failed on that: Ray
    refuses two of its services on one port)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def interface_for_ip(ip: str) -> str | None:
    """The name of the network interface holding ``ip`` (IPv4 or IPv6), or None."""
    import psutil  # noqa: PLC0415

    for name, addresses in psutil.net_if_addrs().items():
        for addr in addresses:
            if addr.family in (socket.AF_INET, socket.AF_INET6) and addr.address.split("%")[0] == ip:
                return name
    return None


def set_nccl_socket_ifname(ip: str | None = None) -> str:
    """Set ``NCCL_SOCKET_IFNAME`` (and gloo's) to the interface carrying this node's Ray IP."""
    if ip is None:
        import ray.util  # noqa: PLC0415

        ip = ray.util.get_node_ip_address()
    name = interface_for_ip(ip)
    if name is None:
        raise ByzerError(f"setup_nccl_socket_ifname_by_ip: no network interface carries this node's IP {ip}")
    os.environ["NCCL_SOCKET_IFNAME"] = name
    os.environ["GLOO_SOCKET_IFNAME"] = name
    return name
