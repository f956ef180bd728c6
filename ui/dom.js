// Tiny DOM helper. Everything from the API is attacker-controlled (server names, commands,
// paths, diagnostics), so this module only ever creates elements, sets properties or
// attributes, and appends text nodes. It refuses inline event handlers and HTML sinks.

const FORBIDDEN_PROPS = new Set(["innerHTML", "outerHTML", "srcdoc", "insertAdjacentHTML"]);
const URL_ATTRS = new Set(["href", "src", "action", "formaction", "xlink:href"]);
const SVG_NS = "http://www.w3.org/2000/svg";

function checkName(name) {
  if (typeof name !== "string" || /^on/i.test(name) || FORBIDDEN_PROPS.has(name)) {
    throw new Error(`dom.h: refusing to set ${String(name)}`);
  }
}

function safeUrl(value) {
  const s = String(value);
  // Only same-origin paths, fragments, http(s) and blob: (downloads we create ourselves).
  if (/^(\/(?!\/)|#|https?:|blob:)/i.test(s)) {
    return s;
  }
  throw new Error("dom.h: refusing a URL with an unexpected scheme");
}

function append(el, child) {
  if (child === null || child === undefined || child === false) {
    return;
  }
  if (Array.isArray(child)) {
    for (const c of child) {
      append(el, c);
    }
    return;
  }
  if (child instanceof Node) {
    el.appendChild(child);
    return;
  }
  el.appendChild(document.createTextNode(String(child)));
}

function apply(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) {
      continue;
    }
    checkName(name);
    if (name === "class") {
      el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : String(value));
    } else if (name === "dataset") {
      for (const [k, v] of Object.entries(value)) {
        el.dataset[k] = String(v);
      }
    } else if (name === "text") {
      el.textContent = String(value);
    } else if (URL_ATTRS.has(name)) {
      el.setAttribute(name, safeUrl(value));
    } else if (name === "value" || name === "checked" || name === "disabled" || name === "hidden") {
      el[name] = value;
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
}

/** h("div", {class: "x", "aria-label": name}, "text", otherNode, [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

/** Same as h for SVG elements (icons only; never data). */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    checkName(name);
    el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

/** Adds an event listener (the only way handlers are attached: never attributes). */
export function on(el, type, fn) {
  el.addEventListener(type, fn);
  return el;
}

/** Replaces all children of el. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}
