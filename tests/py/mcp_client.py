"""MCP client driven by the Rust e2e tests, built on the official Python SDK (`mcp`).

Every scenario prints JSON lines on stdout; the Rust test asserts on them. Errors are
reported as data (never swallowed into a pass): the Rust side decides what is expected.

Scenarios:
  smoke       connect (legacy initialize or a modern version), tools/list, tools/call
  kill        start a long tools/call, print {"event": "started"}, report how the call
              ended (the test kills the bridged child meanwhile), then reconnect and call again
  concurrent  two sessions in parallel, each with N concurrent tools/call (their JSON-RPC
              ids collide across sessions); report every result that came back to the wrong
              caller
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from typing import Any

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def describe(exc: BaseException) -> str:
    """Flatten exception groups into one readable string."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def text_of(result: Any) -> str:
    parts = []
    for c in getattr(result, "content", None) or []:
        t = getattr(c, "text", None)
        if t is not None:
            parts.append(t)
    return "\n".join(parts)


class Conn:
    """An authenticated Streamable HTTP client session."""

    def __init__(self, url: str, token: str, mode: str, timeout: float) -> None:
        self.http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        self.client = Client(
            streamable_http_client(url, http_client=self.http),
            mode=mode,
            read_timeout_seconds=timeout,
        )

    async def __aenter__(self) -> Client:
        await self.http.__aenter__()
        try:
            return await self.client.__aenter__()
        except BaseException:
            await self.http.__aexit__(None, None, None)
            raise

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.client.__aexit__(*exc)
        finally:
            await self.http.__aexit__(None, None, None)


async def smoke(a: argparse.Namespace) -> None:
    out: dict[str, Any] = {"event": "smoke", "mode": a.mode}
    try:
        async with Conn(a.url, a.token, a.mode, a.timeout) as c:
            out["protocol_version"] = c.protocol_version
            tools = await c.list_tools()
            out["tools"] = sorted(t.name for t in tools.tools)
            res = await c.call_tool(a.tool, json.loads(a.args))
            out["call"] = {"is_error": bool(res.is_error), "text": text_of(res)}
            out["ok"] = True
    except BaseException as e:  # reported, the Rust test asserts
        out["ok"] = False
        out["error"] = describe(e)
        out["traceback"] = traceback.format_exc()
    emit(out)


async def kill(a: argparse.Namespace) -> None:
    outcome: dict[str, Any] = {"event": "call_finished"}
    try:
        async with Conn(a.url, a.token, "legacy", a.timeout) as c:
            await c.list_tools()
            result: dict[str, Any] = {}

            async def long_call() -> None:
                start = time.monotonic()
                try:
                    res = await c.call_tool(a.tool, json.loads(a.args))
                    result.update(
                        outcome="error" if res.is_error else "ok",
                        detail=text_of(res),
                    )
                except TimeoutError as e:
                    result.update(outcome="timeout", detail=describe(e))
                except BaseException as e:
                    if isinstance(e, anyio.get_cancelled_exc_class()):
                        raise
                    result.update(outcome="error", detail=describe(e))
                result["elapsed"] = time.monotonic() - start

            async with anyio.create_task_group() as tg:
                tg.start_soon(long_call)
                await anyio.sleep(1.0)
                emit({"event": "started"})
            outcome.update(result)
    except BaseException as e:
        outcome.setdefault("outcome", "error")
        outcome["session_error"] = describe(e)
    emit(outcome)

    # Re-initialize and call again; the bridge may need a moment to restart the child.
    after: dict[str, Any] = {"event": "after", "ok": False, "attempts": 0}
    deadline = time.monotonic() + a.recover_secs
    while time.monotonic() < deadline:
        after["attempts"] += 1
        try:
            async with Conn(a.url, a.token, "legacy", a.timeout) as c:
                res = await c.call_tool(a.after_tool, json.loads(a.after_args))
                after.update(ok=not res.is_error, text=text_of(res))
                break
        except BaseException as e:
            after["error"] = describe(e)
            await anyio.sleep(0.5)
    emit(after)


async def concurrent(a: argparse.Namespace) -> None:
    report: dict[str, Any] = {"event": "concurrent", "sessions": {}}

    async def session(label: str) -> None:
        info: dict[str, Any] = {"ok": 0, "wrong": [], "errors": []}
        report["sessions"][label] = info
        try:
            async with Conn(a.url, a.token, "legacy", a.timeout) as c:
                info["protocol_version"] = c.protocol_version

                async def one(i: int) -> None:
                    msg = f"{label}-{i}"
                    try:
                        res = await c.call_tool("echo", {"message": msg})
                        text = text_of(res)
                        if text.endswith(msg) and not res.is_error:
                            info["ok"] += 1
                        else:
                            info["wrong"].append({"sent": msg, "got": text})
                    except BaseException as e:
                        if isinstance(e, anyio.get_cancelled_exc_class()):
                            raise
                        info["errors"].append({"sent": msg, "error": describe(e)})

                async with anyio.create_task_group() as tg:
                    for i in range(a.n):
                        tg.start_soon(one, i)
        except BaseException as e:
            info["session_error"] = describe(e)

    async with anyio.create_task_group() as tg:
        tg.start_soon(session, "A")
        tg.start_soon(session, "B")
    emit(report)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["smoke", "kill", "concurrent"])
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--mode", default="legacy", help="legacy or a modern protocol version (e.g. 2026-07-28)")
    p.add_argument("--tool", default="echo")
    p.add_argument("--args", default="{}")
    p.add_argument("--after-tool", default="echo")
    p.add_argument("--after-args", default='{"message": "after-restart"}')
    p.add_argument("--timeout", type=float, default=60.0, help="per-request read timeout (s)")
    p.add_argument("--recover-secs", type=float, default=30.0)
    p.add_argument("-n", type=int, default=20)
    a = p.parse_args()
    fn = {"smoke": smoke, "kill": kill, "concurrent": concurrent}[a.scenario]
    anyio.run(fn, a)


if __name__ == "__main__":
    main()
