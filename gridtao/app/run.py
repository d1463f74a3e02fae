"""``gridtao run``'s lifecycle: one agent on the main event loop, signals, restore on exit.

SIGINT and SIGTERM stop the agent (it restores every limit it changed, then publishes offline);
SIGHUP re-reads the configuration file and applies what can change live
(:mod:`gridtao.app.reload`). Runs on the caller's event loop, in its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import signal
from collections.abc import Callable
from typing import Any

from gridtao.app.agent import Agent, AgentOptions
from gridtao.config.agent import Config, ConfigError

__all__ = ["EXIT_LANE_FAILED", "EXIT_NOT_RESTORED", "run_agent"]

#: Exit status of a stop that could not put back every GPU limit found at start.
EXIT_NOT_RESTORED = 3
#: Exit status of an agent that stopped because its island lane failed (it could no longer hear
#: the grid): the limits were restored; a supervisor restarts it.
EXIT_LANE_FAILED = 4

log = logging.getLogger("gridtao")

#: How long a stop may take before the threads' stacks are written out (s).
STOP_DUMP_S = 15.0


async def run_agent(config: Config, *, options: AgentOptions | None = None,
                    stop: asyncio.Event | None = None,
                    reload_config: Callable[[], Config] | None = None) -> int:
    """Start an agent, serve until SIGINT/SIGTERM (or ``stop``, or its island lane fails), then
    restore; 0, :data:`EXIT_NOT_RESTORED` when a GPU's limit found at start could not be put
    back, else :data:`EXIT_LANE_FAILED` when the island lane failed.
    On SIGHUP, apply ``reload_config()`` (the file read again: :mod:`gridtao.app.reload`)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    agent: Agent | None = None  # SIGHUP before it exists: logged, not fatal

    def reload() -> None:
        if agent is None or reload_config is None:
            log.warning("SIGHUP: nothing to reload (%s)", "still starting" if agent is None
                        else "no configuration file: running on built-in defaults")
            return
        try:
            agent.reload(reload_config)
        except ConfigError as e:
            log.error("reload refused, nothing changed: %s", e)

    for sig, handler in ((signal.SIGINT, stop.set), (signal.SIGTERM, stop.set),
                         (signal.SIGHUP, reload)):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler)
    agent = Agent(config, options=options)
    try:
        # Start off the loop, so a stop signal is handled while it waits for the broker.
        starting: asyncio.Future[None] = loop.run_in_executor(None, agent.start)
        stopping: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
        pending: set[asyncio.Future[Any]] = {starting, stopping}
        try:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                agent.abort_start()
            await starting
        finally:
            stopping.cancel()
        if not stop.is_set():
            await agent.serve(stop)
    finally:
        # A stop normally ends within a second; one still going after STOP_DUMP_S writes every
        # thread's stack to stderr (the unit's journal) and goes on: the next one that hangs
        # names what it waits on.
        faulthandler.dump_traceback_later(STOP_DUMP_S)
        try:
            agent.close()
        finally:
            faulthandler.cancel_dump_traceback_later()
    if agent.restore_failed:
        return EXIT_NOT_RESTORED
    return EXIT_LANE_FAILED if agent.lane_failed else 0
