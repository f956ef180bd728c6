"""The official Python `mcp` SDK's OAuth client (OAuthClientProvider) against Airlock's authorization server.

argv: <base URL of the gateway stand-in> <control API URL> [client metadata document URL]. Discovery (401 challenge → protected-resource metadata →
authorization-server metadata) → dynamic registration (or the CIMD URL as client_id) → authorize (a browser: the approval page, approval through the
control API, the status URL's redirect) → token (`iss` checked by the SDK) → authorized request → refresh → revoke → 401.
"""
import asyncio, re, sys
from urllib.parse import urlparse, parse_qs

import httpx2 as httpx
from mcp.client.auth import OAuthClientProvider
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

base, api = sys.argv[1], sys.argv[2]
cimd = sys.argv[3] if len(sys.argv) > 3 else None


class Mem:
    def __init__(self):
        self.tokens = None
        self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, t):
        self.tokens = t

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, c):
        self.client = c


landing = {}


async def redirect_handler(url: str) -> None:
    async with httpx.AsyncClient() as c:
        page = await c.get(url)
        assert page.status_code == 200, page.text
        ticket = re.search(r'/_airlock/oauth/decide/([^"]+)"', page.text).group(1)
        pending = (await c.get(api + "/v1/approvals")).json()
        assert len(pending) == 1, pending
        r = await c.post(api + f"/v1/approvals/{pending[0]['id']}/approve", json={})
        assert r.status_code == 200, r.text
        st = await c.get(base + "/_airlock/oauth/status/" + ticket)
        assert st.status_code == 303, st.text
        landing["url"] = st.headers["location"]


async def callback_handler() -> AuthorizationCodeResult:
    q = parse_qs(urlparse(landing["url"]).query)
    return AuthorizationCodeResult(code=q["code"][0], state=q.get("state", [None])[0], iss=q.get("iss", [None])[0])


async def main():
    storage = Mem()
    provider = OAuthClientProvider(
        server_url=base + "/a/mcp",
        client_metadata=OAuthClientMetadata(
            client_name="python mcp sdk",
            redirect_uris=["http://localhost:3030/callback"],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        client_metadata_url=cimd,
    )
    async with httpx.AsyncClient(auth=provider) as c:
        r = await c.post(base + "/a/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        print("first", r.status_code, r.text)
        assert r.status_code == 200
        print("client", storage.client.client_id, storage.client.token_endpoint_auth_method)
        if cimd:
            assert storage.client.client_id == cimd, storage.client.client_id
        first = storage.tokens
        assert first.refresh_token
    # Refresh with the SDK: expire the stored access token locally.
    provider.context.token_expiry_time = 1
    async with httpx.AsyncClient(auth=provider) as c:
        r = await c.post(base + "/a/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "ping"})
        print("after refresh", r.status_code)
        assert r.status_code == 200
        assert storage.tokens.access_token != first.access_token, "refreshed"
    # Revoke (RFC 7009) and see 401.
    async with httpx.AsyncClient() as c:
        data = {"token": storage.tokens.refresh_token, "client_id": storage.client.client_id}
        if storage.client.client_secret:
            data["client_secret"] = storage.client.client_secret
        r = await c.post(base + "/a/revoke", data=data)
        assert r.status_code == 200, r.text
        r = await c.post(base + "/a/mcp", headers={"authorization": "Bearer " + storage.tokens.access_token}, json={})
        print("after revoke", r.status_code, r.text)
        assert r.status_code == 401
    print("PYTHON SDK FLOW OK")


asyncio.run(main())
