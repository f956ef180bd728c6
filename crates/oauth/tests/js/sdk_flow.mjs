// The official TypeScript MCP SDK's OAuth client (`auth()` of @modelcontextprotocol/sdk, what mcp-remote and the
// MCP Inspector use) against Airlock's authorization server.
//
// argv: <sdk dir> <base URL of the gateway stand-in> <control API URL>. Discovery (protected-resource metadata →
// authorization-server metadata) → dynamic registration → authorize (a browser: the approval page, approval through
// the control API, the status URL's redirect) → token → authorized request → refresh → revoke → 401.
import { pathToFileURL } from 'node:url';
import path from 'node:path';

const [sdkDir, base, api] = process.argv.slice(2);
const { auth } = await import(pathToFileURL(path.join(sdkDir, 'dist/esm/client/auth.js')).href);

function check(cond, msg) {
  if (!cond) {
    console.error('FAILED:', msg);
    process.exit(1);
  }
}

class Provider {
  constructor() {
    this.client = undefined;
    this.saved = undefined;
    this.verifier = undefined;
    this.landing = undefined;
  }
  get redirectUrl() {
    return 'http://localhost:33418/oauth/callback';
  }
  get clientMetadata() {
    return {
      client_name: 'typescript mcp sdk',
      redirect_uris: [this.redirectUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }
  clientInformation() { return this.client; }
  saveClientInformation(c) { this.client = c; }
  tokens() { return this.saved; }
  saveTokens(t) { this.saved = t; }
  saveCodeVerifier(v) { this.verifier = v; }
  codeVerifier() { return this.verifier; }
  async redirectToAuthorization(url) {
    // The browser: open the page, the person approves (control API), follow the status URL.
    const page = await fetch(url);
    const html = await page.text();
    check(page.status === 200, `authorize page ${page.status}: ${html}`);
    const ticket = /\/_airlock\/oauth\/decide\/([^"]+)"/.exec(html)[1];
    const pending = await (await fetch(`${api}/v1/approvals`)).json();
    check(pending.length === 1, JSON.stringify(pending));
    const ok = await fetch(`${api}/v1/approvals/${pending[0].id}/approve`, { method: 'POST' });
    check(ok.status === 200, `approve ${ok.status}`);
    const st = await fetch(`${base}/_airlock/oauth/status/${ticket}`, { redirect: 'manual' });
    check(st.status === 303, `status ${st.status}`);
    this.landing = new URL(st.headers.get('location'));
  }
}

const serverUrl = `${base}/a/mcp`;
const call = (token) =>
  fetch(serverUrl, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: '{}' });

const p = new Provider();
check((await auth(p, { serverUrl })) === 'REDIRECT', 'first auth() redirects');
check(p.landing.searchParams.get('iss') === `${base}/a`, `iss ${p.landing}`);
const code = p.landing.searchParams.get('code');
check((await auth(p, { serverUrl, authorizationCode: code })) === 'AUTHORIZED', 'code exchanged');
const first = p.saved;
check(first.refresh_token, 'a refresh token');
check((await call(first.access_token)).status === 200, 'authorized call');
// With tokens saved, auth() refreshes.
check((await auth(p, { serverUrl })) === 'AUTHORIZED', 'refreshed');
check(p.saved.access_token !== first.access_token, 'a new access token');
check((await call(p.saved.access_token)).status === 200, 'call after refresh');
// Revoke (RFC 7009), then 401.
const body = new URLSearchParams({ token: p.saved.refresh_token, client_id: p.client.client_id });
const rv = await fetch(`${base}/a/revoke`, { method: 'POST', body });
check(rv.status === 200, `revoke ${rv.status}`);
check((await call(p.saved.access_token)).status === 401, '401 after revoke');
console.log('TS SDK FLOW OK', p.client.client_id);
