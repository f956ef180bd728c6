"""OAuth end to end with the official Python SDK against the running agent.

argv: <MCP URL of an exposed server> <airlock binary> <AIRLOCK_HOME>. The SDK's OAuthClientProvider discovers
(401 → protected-resource metadata → authorization-server metadata), registers (DCR), opens the authorization URL
(this script plays the browser: it loads the approval page, the person approves with `airlock approve`, the status
URL redirects with the code), exchanges the code, calls a tool, refreshes, and after `airlock revoke` gets 401.
Prints one JSON line: {"ok": bool, ...}.
"""
import json
import os
import re
import subprocess
import sys
import traceback
from urllib.parse import parse_qs, urlparse

import anyio
import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

url, airlock, airlock_home = sys.argv[1], sys.argv[2], sys.argv[3]
origin = "{0.scheme}://{0.netloc}".format(urlparse(url))


def cli(*args: str) -> str:
    env = dict(os.environ, AIRLOCK_HOME=airlock_home)
    return subprocess.run([airlock, *args], check=True, capture_output=True, text=True, env=env).stdout


class Mem:
    tokens = None
    client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, t):
        self.tokens = t

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, c):
        self.client = c


landing: dict = {}
out: dict = {"event": "oauth"}


async def redirect_handler(auth_url: str) -> None:
    async with httpx2.AsyncClient() as c:
        page = await c.get(auth_url)
        assert page.status_code == 200, page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        ticket = re.search(r'/_airlock/oauth/decide/([^"]+)"', page.text).group(1)
        pending = json.loads(cli("approvals", "--json"))
        assert len(pending) == 1, pending
        out["approval"] = {k: pending[0][k] for k in ("client_name", "redirect_host", "server_id")}
        cli("approve", pending[0]["id"])
        st = await c.get(f"{origin}/_airlock/oauth/status/{ticket}")
        assert st.status_code == 303, st.text
        landing["url"] = st.headers["location"]


async def callback_handler() -> AuthorizationCodeResult:
    q = parse_qs(urlparse(landing["url"]).query)
    return AuthorizationCodeResult(code=q["code"][0], state=q.get("state", [None])[0], iss=q.get("iss", [None])[0])


async def call_time(provider) -> str:
    async with create_mcp_http_client(auth=provider) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy", read_timeout_seconds=60) as c:
            res = await c.call_tool("get_current_time", {"timezone": "UTC"})
            assert not res.is_error, res
            return "".join(getattr(x, "text", "") for x in res.content)


async def main() -> None:
    storage = Mem()
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="e2e python sdk",
            redirect_uris=["http://localhost:3030/callback"],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    try:
        out["first_call"] = await call_time(provider)
        out["client_id"] = storage.client.client_id
        first = storage.tokens.access_token
        provider.context.token_expiry_time = 1  # expired locally: the SDK refreshes
        out["second_call"] = await call_time(provider)
        out["refreshed"] = storage.tokens.access_token != first
        cli("revoke", storage.client.client_id)
        async with httpx2.AsyncClient() as c:
            r = await c.post(
                url,
                headers={"authorization": f"Bearer {storage.tokens.access_token}", "accept": "application/json, text/event-stream"},
                json={"jsonrpc": "2.0", "id": 9, "method": "ping"},
            )
            out["after_revoke"] = r.status_code
        out["ok"] = True
    except BaseException as e:  # reported; the Rust test asserts
        out["ok"] = False
        out["error"] = repr(e)
        out["traceback"] = traceback.format_exc()
    print(json.dumps(out), flush=True)


anyio.run(main)
