"""Start a real Jupyter kernel, run code in it, collect what it publishes on iopub.

Used by the tests that prove nbqup's notebook behaviour in a real kernel (widgets,
magics, output routing, restart and shutdown).  Each kernel runs in its own folder with
its own ``IPYTHONDIR``, so no user profile or startup file leaks in.
"""

from __future__ import annotations

import json
import os
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

#: Seconds to wait for a kernel to start or for one cell to finish.
TIMEOUT = 30.0


@dataclass
class Message:
    """An iopub message with the (client side) time it was received."""

    msg: dict[str, Any]
    received: float

    @property
    def type(self) -> str:
        return str(self.msg["header"]["msg_type"])

    @property
    def parent_id(self) -> str | None:
        return self.msg.get("parent_header", {}).get("msg_id")

    @property
    def content(self) -> dict[str, Any]:
        return dict(self.msg["content"])


@dataclass
class Result:
    """What one execute request produced."""

    msg_id: str
    reply: dict[str, Any]
    messages: list[Message] = field(default_factory=list)  # iopub, this request's parent
    started: float = 0.0  # client times the request was sent and went idle
    ended: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reply.get("status") == "ok"

    def stream(self, name: str | None = None) -> str:
        return "".join(
            m.content["text"]
            for m in self.messages
            if m.type == "stream" and (name is None or m.content["name"] == name)
        )

    @property
    def stdout(self) -> str:
        return self.stream("stdout")

    @property
    def stderr(self) -> str:
        return self.stream("stderr")

    def data(self) -> list[dict[str, Any]]:
        """The MIME bundles of display_data and execute_result messages."""
        return [
            m.content["data"]
            for m in self.messages
            if m.type in ("display_data", "execute_result", "update_display_data")
        ]

    def error(self) -> str:
        errors = [m.content for m in self.messages if m.type == "error"]
        return "\n".join(f"{e['ename']}: {e['evalue']}" for e in errors)

    def payload_text(self) -> str:
        """Text of pager payloads (``%magic?`` help goes there)."""
        return "".join(
            p.get("data", {}).get("text/plain", "")
            for p in self.reply.get("payload", [])
            if p.get("source") == "page"
        )


class Kernel:
    """A kernel started in ``cwd``; ``run`` executes code and returns a :class:`Result`.

    Every iopub message received is kept in :attr:`log` (whichever request it belongs
    to: widget updates from a background thread carry the parent of the cell running),
    so a test can look at everything the kernel published between two times.
    """

    def __init__(self, cwd: Path) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["IPYTHONDIR"] = str(cwd / ".ipython")
        env.pop("MPLBACKEND", None)  # the kernel picks its inline backend
        env["PYTHONUNBUFFERED"] = "1"
        self.cwd = cwd
        self.km = KernelManager(kernel_name="python3", connection_file=str(cwd / "kernel.json"))
        # "python" in the kernel spec resolves to the interpreter running the tests
        self.km.start_kernel(cwd=str(cwd), env=env)
        self.kc: BlockingKernelClient = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=TIMEOUT)
        self.log: list[Message] = []

    # -- running code ------------------------------------------------------------------

    def _drain(self, until: float, stop: Any = None) -> None:
        """Collect iopub messages until ``stop(message)`` is true or ``until`` passes."""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            try:
                msg = self.kc.get_iopub_msg(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            m = Message(msg, time.monotonic())
            self.log.append(m)
            if stop is not None and stop(m):
                return

    def run(self, code: str, timeout: float = TIMEOUT, check: bool = True) -> Result:
        """Execute ``code``; wait for its reply and for the kernel to go idle.

        ``check``: raise AssertionError (with the kernel's error) if the code failed.
        """
        start_index = len(self.log)
        started = time.monotonic()
        msg_id = self.kc.execute(code, allow_stdin=False)
        deadline = started + timeout
        self._drain(
            deadline,
            lambda m: (
                m.type == "status"
                and m.parent_id == msg_id
                and m.content["execution_state"] == "idle"
            ),
        )
        reply = self.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        ended = time.monotonic()
        mine = [m for m in self.log[start_index:] if m.parent_id == msg_id]
        result = Result(msg_id, reply["content"], mine, started, ended)
        if check and not result.ok:
            raise AssertionError(
                f"kernel code failed:\n{code}\n--- {result.error()}\n{result.stderr}"
            )
        return result

    def value(self, expr: str, timeout: float = TIMEOUT) -> Any:
        """The value of a JSON-able expression evaluated in the kernel."""
        code = f"import json as _j\nprint('@@' + _j.dumps({expr}))"
        out = self.run(code, timeout).stdout
        line = next(ln for ln in out.splitlines() if ln.startswith("@@"))
        return json.loads(line[2:])

    def wait_for(self, expr: str, timeout: float = TIMEOUT, pause: float = 0.1) -> Any:
        """Poll ``expr`` in the kernel until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.value(expr)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(pause)

    def collect(self, seconds: float) -> list[Message]:
        """Collect iopub messages for ``seconds`` (the kernel may be idle or busy)."""
        start = len(self.log)
        self._drain(time.monotonic() + seconds)
        return self.log[start:]

    def between(self, t0: float, t1: float) -> list[Message]:
        return [m for m in self.log if t0 <= m.received <= t1]

    # -- life cycle --------------------------------------------------------------------

    def restart(self) -> None:
        """Kill and restart the kernel process (``restart_kernel(now=True)``)."""
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=TIMEOUT)
        self.collect(0.2)

    def shutdown(self, now: bool = False) -> float:
        """Shut the kernel down; returns how long ``shutdown_kernel`` took."""
        began = time.monotonic()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=now)
        took = time.monotonic() - began
        self.kc.stop_channels()
        return took

    def close(self) -> None:
        try:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=True)
        finally:
            self.kc.stop_channels()


def widget_messages(messages: list[Message]) -> list[Message]:
    """Widget traffic: comm_open and comm_msg messages."""
    return [m for m in messages if m.type in ("comm_open", "comm_msg")]
