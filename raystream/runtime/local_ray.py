"""Starting the local Ray that raystream uses when no cluster is given, listening on loopback only.

On Linux, ``ray.init()`` makes the machine's routable IP the node's address
and its gRPC servers (the GCS, the raylet, every worker) listen on all
interfaces (``*:port``), so anyone who can reach the host could submit work
to it. Ray has one switch that keeps a node on the machine itself:
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, what Ray does by default on macOS
and Windows. It makes ``127.0.0.1`` the node's address, and Ray then binds
the GCS, the raylet, the workers and the runtime-env agent to loopback
(measured with Ray 2.60: ``tests/integration/test_local_ray_binding.py``).
Passing ``_node_ip_address="127.0.0.1"`` does not do it: Ray replaces a
loopback address by the routable one unless that switch is off.

Ray reads the switch from the environment when ``ray`` is first imported,
which is before raystream could set it, so :func:`start_local_ray` sets both
the variable (for the processes Ray starts) and Ray's copy of it (for this
process), for the duration of ``ray.init`` only: a driver that later joins a
real cluster is not affected, and a local Ray cannot have other nodes anyway.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import ray

__all__ = ["LOOPBACK_SWITCH", "start_local_ray"]

#: Ray's environment variable: "0" keeps every node on the machine itself, bound to loopback.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

_logger = logging.getLogger(__name__)


def start_local_ray(**init_kwargs: Any) -> None:
    """Start a new local Ray whose servers listen on 127.0.0.1 only, and connect to it.

    Always a new instance (``address="local"``): a Ray started elsewhere with
    ``ray start`` is joined only when asked (``RAY_ADDRESS=auto``).

    Args:
        init_kwargs: More arguments for ``ray.init`` (``num_cpus``,
            ``include_dashboard``...); ``address`` is not one of them.
    """
    with _loopback_only():
        ray.init(address="local", **init_kwargs)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    from ray._private import ray_constants

    saved_env = os.environ.get(LOOPBACK_SWITCH)
    saved_constant = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if saved_constant is None:  # A Ray that renamed it: the binding test fails, and says so.
        _logger.warning("this Ray has no ENABLE_RAY_CLUSTER; its local servers may listen on every interface")
    else:
        ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[LOOPBACK_SWITCH] = "0"
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(LOOPBACK_SWITCH, None)
        else:
            os.environ[LOOPBACK_SWITCH] = saved_env
        if saved_constant is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved_constant
