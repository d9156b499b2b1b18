"""pytest --nbmake: a work-around for a lost wake-up in the notebook client.

With pyzmq 27 / jupyter_client 8 / ipykernel 7, the client's asyncio socket sometimes misses the
wake-up for a kernel reply that has already arrived (seen after cells that open many ipywidgets
comms: the kernel is idle, the reply waits in the client socket). ``get_msg(timeout)`` then
returns it only when its timeout fires, through pyzmq's final non-blocking poll, so the cell takes
the whole nbmake timeout (300 s) and still passes (measured here: 1 run in 4 of notebook 01).
Polling in short slices makes that final non-blocking poll happen every tenth of a second: the
same messages, in the same order, without the stall. It changes only the test client in this
pytest process, never the kernel or the notebooks.
"""

from __future__ import annotations

import time
from queue import Empty

from jupyter_client.channels import AsyncZMQSocketChannel

_SLICE_S = 0.1


async def _get_msg_in_slices(self, timeout: float | None = None):
    """``AsyncZMQSocketChannel.get_msg`` with the wait cut into slices of at most 0.1 s."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = _SLICE_S if deadline is None else min(_SLICE_S, deadline - time.monotonic())
        if await self.socket.poll(max(1, int(left * 1000))):
            return await self._recv()
        if deadline is not None and time.monotonic() >= deadline:
            raise Empty


AsyncZMQSocketChannel.get_msg = _get_msg_in_slices
