// Sections whose features are not built yet: an honest empty state, no sample data.

import { h } from "../dom.js";
import { emptyState, viewHeader } from "./common.js";

const TEXT = {
  approvals: ["Approvals", "Nothing to approve.", "Per-server OAuth 2.1 arrives soon: when a cloud agent asks to use one of your servers, you will approve it here. Until then every exposed server accepts the gateway's bearer token."],
  clients: ["Clients", "No clients registered.", "Clients registered through OAuth (arriving with per-server OAuth 2.1) will be listed here, with what each may reach. Today any caller holding the bearer token is a client."],
  sandbox: ["Sandbox", "No sandbox worker.", "The sandboxed local worker for Claude Managed Agents is not part of this release; its settings will live here."],
  audit: ["Audit", "No audit log yet.", "A per-request audit log arrives with OAuth and the sandbox worker. Until then, the agent's own log (airlock up) records what it serves."],
};

export function placeholderView(name) {
  const [title, empty, body] = TEXT[name];
  return h("div", { class: "view", dataset: { view: name } }, viewHeader(title), h("section", { class: "card" }, emptyState(empty, body)));
}
