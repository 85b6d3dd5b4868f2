// brokerlink web UI: one small module, no build step. Every action goes through the JSON API
// with the user's bearer token (kept in sessionStorage); the pages are static shells.

import { apiErrorText, brokerErrorText, countdown, fieldErrorText, manualLine, relativeTime, syncSummary } from "./words.js";

const TOKENS = "brokerlink.tokens";
const POLL_MS = 2500;

// ---- integration types ---------------------------------------------------------------------

// The integration types' declarations (brokerlink_shared.contracts.plugins), embedded in the page:
// the type choices, names, the fields of a type without a hand-built form, and which types have
// a sign-in step come from them.
const TYPES = JSON.parse(document.getElementById("integration-types")?.textContent || "[]");

function typeInfo(type) {
  return TYPES.find((t) => t.type === type);
}

// ---- API client ----------------------------------------------------------------------------

// `message` is for people (words.js); the code and the API's own words stay in `code` and
// `detail` for the details disclosure.
class ApiError extends Error {
  constructor(status, body) {
    super(apiErrorText(status, body));
    this.status = status;
    this.body = body;
    this.code = (body && body.code) || (status ? `HTTP ${status}` : "network");
    this.detail = body && typeof body.detail === "string" ? body.detail : "";
  }
}

function tokens() {
  try {
    return JSON.parse(sessionStorage.getItem(TOKENS) || "null");
  } catch {
    return null;
  }
}

function saveTokens(t) {
  sessionStorage.setItem(TOKENS, JSON.stringify({ access: t.access_token, refresh: t.refresh_token }));
}

function signOut() {
  sessionStorage.removeItem(TOKENS);
  location.assign("/login");
}

// Ends the session on the server too (its tokens stop working everywhere), then locally.
async function signOutEverywhere(path = "/api/auth/logout") {
  try {
    await api("POST", path, undefined, { retry: false });
  } catch {
    // signed out already, or offline: forget the tokens anyway
  }
  signOut();
}

let refreshing = null;

async function renewToken() {
  const t = tokens();
  if (!t || !t.refresh) return false;
  refreshing ??= fetch("/api/auth/refresh", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: t.refresh }),
  })
    .then(async (r) => {
      if (!r.ok) return false;
      saveTokens(await r.json());
      return true;
    })
    .catch(() => false)
    .finally(() => {
      refreshing = null;
    });
  return refreshing;
}

async function api(method, path, body, { retry = true } = {}) {
  const headers = { Accept: "application/json" };
  const t = tokens();
  if (t) headers.Authorization = `Bearer ${t.access}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, null);
  }
  if (response.status === 401 && retry && t) {
    if (await renewToken()) return api(method, path, body, { retry: false });
    signOut();
    throw new ApiError(401, { detail: "signed out" });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text };
    }
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return { status: response.status, data };
}

// ---- small helpers -------------------------------------------------------------------------

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function toast(message) {
  const box = $("#toast");
  if (!box) return;
  box.textContent = message;
  box.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => box.classList.remove("show"), 5000);
}

function money(value, currency) {
  if (value === null || value === undefined) return "—";
  const n = Number(value);
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(n);
  } catch {
    return `${n.toFixed(2)} ${currency}`;
  }
}

function number(value) {
  if (value === null || value === undefined) return "—";
  return new Intl.NumberFormat(undefined, { maximumFractionDigits: 4 }).format(Number(value));
}

export { countdown, relativeTime };

function timeElement(iso, render = relativeTime) {
  const node = el("time", { "data-time": iso || "", title: iso ? new Date(iso).toLocaleString() : null });
  if (iso) node.setAttribute("datetime", iso);
  node.dataset.kind = render === countdown ? "countdown" : "relative";
  node.textContent = render(iso);
  return node;
}

function tickTimes() {
  for (const node of document.querySelectorAll("time[data-kind]")) {
    const iso = node.dataset.time;
    node.textContent = node.dataset.kind === "countdown" ? countdown(iso) : relativeTime(iso);
  }
}

// ---- statuses and sync lines ---------------------------------------------------------------

const BROKER_NAMES = Object.fromEntries(TYPES.map((t) => [t.type, t.short_label]));

function paintBadge(node, summary, type) {
  node.dataset.status = summary.key;
  const label = node.querySelector(".label");
  label.textContent = type ? `${BROKER_NAMES[type] || type} · ${summary.label}` : summary.label;
}

function badge(summary, type) {
  const node = el("span", { class: "badge" }, el("span", { class: "dot", "aria-hidden": "true" }), el("span", { class: "label" }));
  paintBadge(node, summary, type);
  return node;
}

// Sentence parts from words.js: strings, and { time } rendered as a ticking <time>.
function partsNode(parts, className = "sync-line") {
  const failed = parts[0] === "Last sync failed ";
  return el("span", { class: failed ? `${className} failed` : className }, ...parts.map((p) => (typeof p === "string" ? p : timeElement(p.time))));
}

// A person's sentence first; the code and the raw words behind a disclosure.
function errorNode(text, code, raw) {
  const node = el("span", { class: "error-message" }, text);
  if (code || raw) {
    node.append(
      el(
        "details",
        { class: "why" },
        el("summary", { text: "Details" }),
        code ? el("code", { text: `code ${code}` }) : null,
        raw && raw !== text ? ` ${raw}` : null,
      ),
    );
  }
  return node;
}

// Repaints (every poll) keep a Details disclosure the reader opened open.
function keepOpen(container, replacement) {
  if (container?.querySelector("details")?.open) replacement?.querySelector("details")?.setAttribute("open", "");
}

function syncErrorNode(sync, context) {
  if (!sync || !sync.last_error) return null;
  if (sync.last_attempt !== "failed" && !["error", "disconnected", "reauth_required"].includes(sync.status)) return null;
  return errorNode(brokerErrorText(sync.last_error_code, sync.last_error, context), sync.last_error_code, sync.last_error);
}

function configContext(type, config) {
  const c = config || {};
  return { kind: type, host: c.host, port: c.port, client_id: c.client_id, account_code: c.account_code };
}

// ---- field errors --------------------------------------------------------------------------

// "config.port" from a 422 `loc` (["body", "IB", "config", "port"]) or our `field`.
function fieldErrors(err) {
  const out = [];
  const body = err && err.body;
  if (!body) return out;
  if (Array.isArray(body.detail)) {
    for (const d of body.detail) {
      const loc = (d.loc || []).filter((p, i) => !(i === 0 && (p === "body" || p === "query")) && !typeInfo(p));
      out.push({ field: loc.join("."), message: fieldErrorText(d), code: d.type });
    }
  } else if (body.field) {
    out.push({ field: body.field, message: err.message, code: body.code });
  }
  return out;
}

function clearErrors(form) {
  for (const p of form.querySelectorAll(".field-error")) p.textContent = "";
  for (const i of form.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
  for (const p of form.querySelectorAll(".form-error")) p.replaceChildren();
}

const FIELD_LABELS = { client_id: "Client ID", account_code: "Account code", app_key: "App key", app_secret: "App secret", account_number: "Account number", backups: "Backup gateways" };

function fieldLabel(field) {
  const name = field.split(".").filter((p) => !/^\d+$/.test(p)).pop() || "";
  return FIELD_LABELS[name] || name.charAt(0).toUpperCase() + name.slice(1).replace(/_/g, " ");
}

// Shows each error next to its input (`#<prefix>-<name>-error`); the rest in the form error.
function showErrors(form, err, prefixFor, formError) {
  const rest = [];
  const codes = [];
  let first = null;
  for (const { field, message, code } of fieldErrors(err)) {
    if (code) codes.push(field ? `${field}: ${code}` : code);
    const backup = /(?:^|\.)backups\.(\d+)\.(host|port)$/.exec(field);
    if (backup) {
      const input = form.querySelector(`#ib-backups li:nth-child(${Number(backup[1]) + 1}) input.${backup[2]}`);
      if (input) {
        input.setAttribute("aria-invalid", "true");
        rest.push(`Backup gateway ${Number(backup[1]) + 1}, ${backup[2]}: ${message}`);
        first ??= input;
        continue;
      }
    }
    const name = field.split(".").pop();
    const prefix = prefixFor(field);
    const slot = prefix && document.getElementById(`${prefix}-${name}-error`);
    const input = slot && (form.querySelector(`[name="${name}"]:not([disabled])`) || (name === "backups" ? $("#ib-backup-add") : null));
    if (slot && input && !input.closest("[hidden]")) {
      slot.textContent = message;
      input.setAttribute("aria-invalid", "true");
      const described = (input.getAttribute("aria-describedby") || "").split(" ");
      if (!described.includes(slot.id)) input.setAttribute("aria-describedby", [...described, slot.id].join(" ").trim());
      first ??= input;
    } else {
      rest.push(field ? `${fieldLabel(field)}: ${message}` : message);
    }
  }
  if (!fieldErrors(err).length) {
    rest.push(err.message);
    if (err.code) codes.push(err.code);
  }
  if (formError) formError.replaceChildren(...(rest.length || codes.length ? [errorNode(rest.join(" "), codes.join(", "), err.detail)] : []));
  (first || formError)?.focus?.();
}

// ---- login / register ----------------------------------------------------------------------

async function login(email, password, code) {
  const body = code ? { email, password, code } : { email, password };
  const { data } = await api("POST", "/api/auth/login", body, { retry: false });
  saveTokens(data);
}

function loginError(err) {
  const code = err.body?.code;
  if (code === "two_factor_required") return "Enter the code from your authenticator app.";
  if (code === "two_factor_invalid") return err.message;
  if (err.status === 429) return "Too many attempts. Try again later.";
  return err.status === 401 ? "Wrong email or password." : err.message;
}

// Where `?next=` asks to go after signing in: a page of this site only. The URL parser reads
// `//host`, `/\host`, `/.//host` and absolute URLs as the browser would, and the whole parsed
// URL is what is followed (its path alone can read `//host` again), so another site never
// qualifies; what does not parse goes home.
function pageAfterSignIn() {
  const next = new URLSearchParams(location.search).get("next");
  if (!next) return "/";
  try {
    const url = new URL(next, location.origin);
    return url.origin === location.origin ? url.href : "/";
  } catch {
    return "/";
  }
}

function initLogin() {
  const form = $("#login-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    try {
      await login(form.email.value, form.password.value, form.code.value.trim());
      location.assign(pageAfterSignIn());
    } catch (err) {
      if (String(err.body?.code).startsWith("two_factor")) {
        $("#login-code-field").hidden = false;
        form.code.focus();
      }
      $("#login-error").textContent = loginError(err);
    }
  });
}

function initRegister() {
  const form = $("#register-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    const body = { name: form.name.value, email: form.email.value, password: form.password.value };
    try {
      await api("POST", "/api/auth/register", body, { retry: false });
      await login(body.email, body.password);
      location.assign("/");
    } catch (err) {
      showErrors(form, err, () => "register", $("#register-error"));
    }
  });
}

function requireSignIn() {
  if (!tokens()) {
    location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
    return false;
  }
  $("#sign-out")?.addEventListener("click", () => signOutEverywhere());
  api("GET", "/api/auth/me")
    .then(({ data }) => {
      $("#user-name").textContent = data.name;
    })
    .catch(() => {});
  return true;
}

// Poll `fn` every POLL_MS while the page is visible; resumes at once when it becomes visible.
function pollWhileVisible(fn, ms = POLL_MS) {
  let timer = null;
  const run = async () => {
    clearTimeout(timer);
    if (document.visibilityState === "visible") {
      try {
        await fn();
      } catch (err) {
        if (err.status !== 401) console.warn(err);
      }
    }
    timer = setTimeout(run, ms);
  };
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") run();
  });
  run();
}

// ---- accounts page -------------------------------------------------------------------------

const state = { accounts: new Map(), open: null, integration: null };

function accountSummary(a) {
  return syncSummary(a.integration_type, a.sync);
}

function syncCell(a) {
  return a.integration_type ? partsNode(accountSummary(a).line) : partsNode(manualLine(a.last_updated), "muted");
}

function accountRow(a) {
  const integration = a.integration_type ? badge(accountSummary(a), a.integration_type) : el("span", { class: "muted", text: "None" });
  const name = el("button", { type: "button", class: "link", "data-open": a.id, text: a.name });
  return el(
    "tr",
    { "data-account-id": a.id },
    el("th", { scope: "row" }, name),
    el("td", { text: a.account_type === "BANK" ? "Bank" : "Investment" }),
    el("td", { text: a.currency }),
    el("td", { class: "num balance", text: money(a.current_balance, a.currency) }),
    el("td", { class: "integration" }, integration),
    el("td", { class: "updated" }, syncCell(a)),
    el("td", {}, el("button", { type: "button", "data-open": a.id, "aria-label": `Edit ${a.name}`, text: "Edit" })),
  );
}

async function loadAccounts() {
  const { data } = await api("GET", "/api/accounts");
  state.accounts = new Map(data.map((a) => [a.id, a]));
  const rows = $("#account-rows");
  rows.replaceChildren(...data.map(accountRow));
  $("#accounts-empty").hidden = data.length > 0;
  loadTotals().catch((err) => console.warn(err));
  return data;
}

// Net worth: one total only where every account shares a currency (no exchange rates are
// applied), and always each currency's own total.
async function loadTotals() {
  const { data } = await api("GET", "/api/accounts/totals");
  const box = $("#totals");
  if (!box) return;
  const parts = data.by_currency.map((t) => el("span", { class: "part", "data-currency": t.currency }, `${t.currency}: ${money(t.total, t.currency)} (${t.accounts} account${t.accounts === 1 ? "" : "s"})`));
  if (!data.by_currency.length) {
    box.replaceChildren(el("span", { class: "muted", text: "No accounts yet." }));
  } else if (data.net_worth !== null) {
    box.replaceChildren(el("span", {}, "Total: ", el("span", { class: "total", id: "net-worth", text: money(data.net_worth, data.net_worth_currency) })), ...(parts.length > 1 ? parts : []));
  } else {
    box.replaceChildren(
      el("span", {}, "Totals per currency: "),
      ...parts,
      el("span", { class: "hint", id: "no-total", text: "No single total: your accounts are in several currencies and no exchange-rate source is configured." }),
    );
  }
}

// Live status: the health route carries the same sync facts as the account list; repaint
// rows (and the open dialog) in place, and reload balances when a sync succeeded.
async function pollHealth() {
  const { data } = await api("GET", "/api/integrations/health");
  let moved = false;
  for (const row of data) {
    const account = state.accounts.get(row.account_id);
    if (!account) continue;
    if (account.sync?.last_success_at !== row.sync.last_success_at) moved = true;
    account.sync = row.sync;
    account.integration_status = row.status;
    const tr = document.querySelector(`tr[data-account-id="${row.account_id}"]`);
    if (tr) {
      const b = tr.querySelector(".badge");
      if (b) paintBadge(b, accountSummary(account), account.integration_type);
      tr.querySelector(".updated").replaceChildren(syncCell(account));
    }
  }
  if (state.open !== null && state.integration?.type) {
    const row = data.find((r) => r.account_id === state.open);
    if (row && row.type === state.integration.type) {
      Object.assign(state.integration, { status: row.status, sync: row.sync, token_refresh_expires_at: row.token_refresh_expires_at });
      paintIntegrationState();
    }
  }
  if (moved) await loadAccounts();
}

function initCreate() {
  const form = $("#create-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    const body = {
      name: form.name.value.trim(),
      currency: form.currency.value.trim().toUpperCase(),
      account_type: form.account_type.value,
    };
    if (form.account_number.value.trim()) body.account_number = form.account_number.value.trim();
    try {
      const { data } = await api("POST", "/api/accounts", body);
      form.reset();
      await loadAccounts();
      toast(`Account "${data.name}" created.`);
      document.querySelector(`tr[data-account-id="${data.id}"] button[data-open]`)?.focus();
    } catch (err) {
      showErrors(form, err, () => "create", $("#create-error"));
    }
  });
}

function initRefreshAll() {
  const button = $("#refresh-all");
  button.addEventListener("click", async () => {
    button.disabled = true;
    const box = $("#refresh-job");
    const bar = $("#refresh-progress");
    const text = $("#refresh-job-text");
    box.hidden = false;
    try {
      let { data: job } = await api("POST", "/api/integrations/refresh");
      const deadline = Date.now() + 120000;
      for (;;) {
        bar.max = Math.max(1, job.total);
        bar.value = job.done + job.failed;
        text.textContent = `${job.done} / ${job.failed} / ${job.total} (done / failed / total)`;
        if (job.pending <= 0 || Date.now() > deadline) break;
        await new Promise((r) => setTimeout(r, 1000));
        ({ data: job } = await api("GET", `/api/integrations/refresh/${job.job_id}`));
      }
      text.textContent = `Refreshed: ${job.done} done, ${job.failed} failed, ${job.total} total`;
      await loadAccounts();
      await pollHealth();
    } catch (err) {
      text.textContent = `Refresh all failed: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  });
}

// ---- migration banner ----------------------------------------------------------------------
// Items the legacy import could not attach with certainty (GET /api/integrations/pending-links).
// An IB connection goes to one account; a Schwab login to one or more of its accounts. Only
// suggestions the broker verified are preselected; attaching or discarding is one click.

const PENDING_KIND = {
  link: "Not linked",
  conflict: "Differs from an account's own settings",
  quarantine: "Could not be read",
};

function pendingChooser(item, accounts) {
  const suggested = item.suggested_account_ids || [];
  const verified = new Set(item.verified_account_ids || []);
  const byId = new Map(accounts.map((a) => [a.id, a]));
  const ordered = [
    ...suggested.filter((id) => byId.has(id)).map((id) => byId.get(id)),
    ...accounts.filter((a) => !suggested.includes(a.id)),
  ];
  const label = (a) => `${a.name}${a.account_number ? ` (${a.account_number})` : ""}${verified.has(a.id) ? " — seen by Schwab" : ""}`;
  if (item.type === "SCHWAB") {
    const boxes = ordered.map((a) =>
      el("label", { class: "pending-choice" },
        el("input", { type: "checkbox", value: a.id, checked: verified.has(a.id) }),
        ` ${label(a)}${suggested.includes(a.id) && !verified.has(a.id) ? " — suggested" : ""}`),
    );
    const group = el("fieldset", { class: "pending-choices" }, el("legend", { text: "Attach to" }), ...boxes);
    return { node: group, chosen: () => [...group.querySelectorAll("input:checked")].map((i) => Number(i.value)) };
  }
  const selectId = `link-${item.id}`;
  const suggestedAccounts = ordered.filter((a) => suggested.includes(a.id));
  const select = el(
    "select",
    { id: selectId },
    el("option", { value: "", text: "Choose an account…", selected: verified.size === 0 }),
    suggestedAccounts.length
      ? el("optgroup", { label: "Suggested" }, ...suggestedAccounts.map((a) => el("option", { value: a.id, text: label(a), selected: verified.has(a.id) })))
      : null,
    el("optgroup", { label: suggestedAccounts.length ? "Other accounts" : "Accounts" }, ...ordered.filter((a) => !suggested.includes(a.id)).map((a) => el("option", { value: a.id, text: label(a) }))),
  );
  return {
    node: el("span", {}, el("label", { for: selectId, text: "Attach to " }), select),
    chosen: () => (select.value ? [Number(select.value)] : []),
  };
}

async function loadPendingLinks() {
  const banner = $("#migration-banner");
  let items;
  try {
    ({ data: items } = await api("GET", "/api/integrations/pending-links"));
  } catch (err) {
    banner.hidden = true; // 404: this server has no migration support; nothing to offer
    return;
  }
  const list = $("#pending-links");
  const accounts = [...state.accounts.values()];
  list.replaceChildren(
    ...(items || []).map((item) => {
      const chooser = pendingChooser(item, accounts);
      const message = el("span", { class: "form-error", role: "alert" });
      const done = (text) => {
        li.remove();
        toast(text);
        banner.hidden = !list.children.length;
      };
      const li = el(
        "li",
        { "data-link-id": item.id, "data-kind": item.kind },
        el("p", {},
          el("strong", { text: item.summary }),
          el("span", { class: "pending-kind", text: ` · ${PENDING_KIND[item.kind] || item.kind}` }),
          el("br"),
          el("span", { class: "muted", text: item.reason })),
        chooser.node,
        el("button", {
          type: "button",
          class: "primary",
          text: "Attach",
          onclick: async () => {
            const ids = chooser.chosen();
            if (!ids.length) {
              message.textContent = "Choose an account first.";
              return;
            }
            try {
              const body = item.type === "SCHWAB" ? { account_ids: ids } : { account_id: ids[0] };
              await api("POST", `/api/integrations/pending-links/${item.id}/link`, body);
              done(ids.length > 1 ? `Connection attached to ${ids.length} accounts.` : "Connection attached.");
              await loadAccounts();
            } catch (err) {
              message.textContent = err.message;
            }
          },
        }),
        el("button", {
          type: "button",
          text: "Discard",
          onclick: async () => {
            try {
              await api("DELETE", `/api/integrations/pending-links/${item.id}`);
              done("Connection discarded.");
            } catch (err) {
              message.textContent = err.message;
            }
          },
        }),
        message,
      );
      return li;
    }),
  );
  banner.hidden = !list.children.length;
}

// ---- the Edit Account dialog ---------------------------------------------------------------

const TABS = ["details", "integration", "history", "audit"];

function selectTab(name, { focus = false } = {}) {
  for (const t of TABS) {
    const tab = $(`#tab-${t}`);
    const on = t === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`#panel-${t}`).hidden = !on;
  }
  if (focus) $(`#tab-${name}`).focus();
  if (name === "history") loadHistory();
  if (name === "audit") loadAudit().catch((err) => toast(err.message));
}

function initTabs() {
  const list = $('[role="tablist"]');
  list.addEventListener("click", (e) => {
    const tab = e.target.closest('[role="tab"]');
    if (tab) selectTab(tab.id.replace("tab-", ""));
  });
  list.addEventListener("keydown", (e) => {
    const current = TABS.findIndex((t) => $(`#tab-${t}`).getAttribute("aria-selected") === "true");
    const moves = { ArrowRight: current + 1, ArrowLeft: current - 1, Home: 0, End: TABS.length - 1 };
    if (!(e.key in moves)) return;
    e.preventDefault();
    selectTab(TABS[(moves[e.key] + TABS.length) % TABS.length], { focus: true });
  });
}

async function openDialog(accountId, tab = "details") {
  const dialog = $("#account-dialog");
  const { data: account } = await api("GET", `/api/accounts/${accountId}`);
  state.accounts.set(account.id, account);
  state.open = account.id;
  $("#dialog-title").textContent = `Edit Account: ${account.name}`;
  const details = $("#details-form");
  clearErrors(details);
  details.name.value = account.name;
  details.currency.value = account.currency;
  details.account_type.value = account.account_type;
  details.account_number.value = account.account_number || "";
  await loadIntegration();
  $("#toast").classList.remove("show"); // the dialog covers it anyway
  if (!dialog.open) dialog.showModal();
  selectTab(tab, { focus: true });
}

function closeDialog() {
  const dialog = $("#account-dialog");
  if (dialog.open) dialog.close();
}

function initDialog() {
  const dialog = $("#account-dialog");
  document.addEventListener("click", (e) => {
    const opener = e.target.closest("[data-open]");
    if (opener) openDialog(Number(opener.dataset.open)).catch((err) => toast(err.message));
  });
  $("#dialog-close").addEventListener("click", closeDialog);
  for (const b of dialog.querySelectorAll("button.cancel")) b.addEventListener("click", closeDialog);
  dialog.addEventListener("close", () => {
    const id = state.open;
    state.open = null;
    state.integration = null;
    document.querySelector(`tr[data-account-id="${id}"] button[data-open]`)?.focus();
  });
  initTabs();

  const details = $("#details-form");
  details.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(details);
    const body = {
      name: details.name.value.trim(),
      currency: details.currency.value.trim().toUpperCase(),
      account_type: details.account_type.value,
      account_number: details.account_number.value.trim() || null,
    };
    try {
      const { data } = await api("PUT", `/api/accounts/${state.open}`, body);
      $("#dialog-title").textContent = `Edit Account: ${data.name}`;
      await loadAccounts();
      toast("Account saved.");
    } catch (err) {
      showErrors(details, err, () => "details", $("#details-error"));
    }
  });
  initIntegration();
}

// ---- Integration tab -----------------------------------------------------------------------

// The integration form: the one place that knows each broker's fields — filling them from a
// saved config (`fillForm`) and reading them back into an API body (`formBody`).
const FORMS = {
  IB: {
    fill(c) {
      $("#ib-host").value = c.host ?? "localhost";
      $("#ib-port").value = c.port ?? "4001";
      $("#ib-client-id").value = c.client_id ?? "1";
      $("#ib-account-code").value = c.account_code ?? "";
      setBackups(c.backups || []);
    },
    body() {
      const config = {
        host: $("#ib-host").value.trim(),
        port: toNumber($("#ib-port").value),
        client_id: toNumber($("#ib-client-id").value),
        read_only: true,
        backups: readBackups(), // the form shows them, so it always says what they are
      };
      const code = $("#ib-account-code").value.trim();
      if (code) config.account_code = code;
      return config;
    },
  },
  SCHWAB: {
    fill(c, saved) {
      const key = $("#schwab-app-key");
      const secret = $("#schwab-app-secret");
      key.value = "";
      secret.value = "";
      key.placeholder = saved && c.app_key ? c.app_key : "";
      secret.placeholder = saved && c.app_secret ? c.app_secret : "";
      $("#schwab-app-key-hint").textContent = saved && c.app_key ? "Stored; leave empty to keep it." : "";
      $("#schwab-app-secret-hint").textContent = saved && c.app_secret ? "Stored and never shown; leave empty to keep it." : "";
      $("#schwab-account-number").value = saved ? c.account_number || "" : "";
    },
    body() {
      const config = {};
      const key = $("#schwab-app-key").value.trim();
      const secret = $("#schwab-app-secret").value;
      const number = $("#schwab-account-number").value.trim();
      if (key) config.app_key = key;
      if (secret) config.app_secret = secret; // empty keeps the stored secret
      if (number) config.account_number = number;
      return config;
    },
  },
};

// A type without a hand-built form above gets one from its declaration: its fieldset is
// rendered from a <template> (templates/_integration_fields.html), filled and read generically.
function formFor(type) {
  if (FORMS[type]) return FORMS[type];
  const info = typeInfo(type);
  const input = (f) => document.getElementById(`${info.prefix}-${f.id}`);
  return {
    fill(c, saved) {
      for (const f of info.fields) {
        const node = input(f);
        if (!node || f.locked || f.kind === "boolean") continue;
        const hint = document.getElementById(`${info.prefix}-${f.id}-hint`);
        const value = saved ? c[f.name] : null;
        if (f.masked) {
          // secrets and masked identifiers are never sent back: the mask is a placeholder only
          node.value = "";
          node.placeholder = value || f.placeholder || "";
          if (hint) hint.textContent = value ? (f.secret ? "Stored and never shown; leave empty to keep it." : "Stored; leave empty to keep it.") : hint.dataset.help || "";
        } else {
          node.value = saved ? (value ?? "") : f.default;
        }
      }
    },
    body() {
      const config = {};
      for (const f of info.fields) {
        const node = input(f);
        if (!node || f.locked) continue;
        if (f.kind === "boolean") {
          config[f.name] = node.checked;
          continue;
        }
        const text = f.secret ? node.value : node.value.trim();
        if (text === "") continue; // omitted: kept as stored, or the field's default
        config[f.name] = f.kind === "integer" ? toNumber(text) : text;
      }
      return config;
    },
  };
}

// The selected type's fieldset, when the type has no hand-built one: cloned from its <template>
// into #integration-fields (only the selected one, so no two inputs share a label) and filled.
function showDeclaredFieldset(type) {
  const slot = $("#integration-fields");
  const info = typeInfo(type);
  if (!slot || slot.firstElementChild?.dataset.type === type) return;
  slot.replaceChildren();
  const template = info && !FORMS[type] && document.getElementById(`${info.prefix}-template`);
  if (!template) return;
  slot.append(template.content.cloneNode(true));
  const saved = state.integration?.type === type;
  formFor(type).fill(saved ? state.integration.config || {} : {}, saved);
}

function fillForm(data) {
  for (const { type } of TYPES) formFor(type).fill(data.type === type ? data.config || {} : {}, data.type === type);
}

function formBody(type) {
  return { type, config: formFor(type).body() };
}

// ---- IB backup gateways: add, remove, reorder

function setBackups(list) {
  $("#ib-backups").replaceChildren(...list.map((b) => backupItem(b.host, b.port)));
  paintBackups();
}

function readBackups() {
  return [...document.querySelectorAll("#ib-backups li")].map((li) => ({
    host: li.querySelector("input.host").value.trim(),
    port: toNumber(li.querySelector("input.port").value),
  }));
}

let backupSeq = 0;

function backupItem(host = "", port = "") {
  const id = `ib-backup-${++backupSeq}`;
  const li = el(
    "li",
    { class: "backup" },
    el(
      "div",
      { class: "row" },
      el("label", { for: `${id}-host`, class: "visually-hidden", text: "Backup host" }),
      el("input", { id: `${id}-host`, class: "host", value: host, autocomplete: "off", placeholder: "host" }),
      el("label", { for: `${id}-port`, class: "visually-hidden", text: "Backup port" }),
      el("input", { id: `${id}-port`, class: "port", value: String(port), inputmode: "numeric", placeholder: "port" }),
      el(
        "span",
        { class: "row-actions" },
        el("button", { type: "button", "data-move": "-1", text: "Up" }),
        el("button", { type: "button", "data-move": "1", text: "Down" }),
        el("button", { type: "button", "data-remove": "", class: "danger", text: "Remove" }),
      ),
    ),
  );
  return li;
}

// Labels say which backup a control belongs to ("Move backup 2 up"), for screen readers.
function paintBackups() {
  const items = [...document.querySelectorAll("#ib-backups li")];
  items.forEach((li, i) => {
    const n = i + 1;
    li.querySelector("label[for$='-host']").textContent = `Backup ${n} host`;
    li.querySelector("label[for$='-port']").textContent = `Backup ${n} port`;
    const [up, down, remove] = li.querySelectorAll("button");
    up.setAttribute("aria-label", `Move backup ${n} up`);
    down.setAttribute("aria-label", `Move backup ${n} down`);
    remove.setAttribute("aria-label", `Remove backup ${n}`);
    up.disabled = i === 0;
    down.disabled = i === items.length - 1;
  });
  $("#ib-backup-add").disabled = items.length >= 8;
}

function initBackups() {
  const list = $("#ib-backups");
  $("#ib-backup-add").addEventListener("click", () => {
    const item = backupItem("", "4001");
    list.append(item);
    paintBackups();
    item.querySelector("input.host").focus();
  });
  list.addEventListener("click", (e) => {
    const button = e.target.closest("button");
    const li = button?.closest("li");
    if (!li) return;
    if (button.hasAttribute("data-remove")) {
      const next = li.nextElementSibling || li.previousElementSibling;
      li.remove();
      paintBackups();
      (next?.querySelector("input.host") || $("#ib-backup-add")).focus();
      return;
    }
    const step = Number(button.dataset.move);
    if (step < 0 && li.previousElementSibling) li.previousElementSibling.before(li);
    if (step > 0 && li.nextElementSibling) li.nextElementSibling.after(li);
    paintBackups();
    button.disabled ? li.querySelector("input.host").focus() : button.focus();
  });
}

// ---- state and actions

async function loadIntegration() {
  const { data } = await api("GET", `/api/accounts/${state.open}/integration`);
  state.integration = data;
  const form = $("#integration-form");
  clearErrors(form);
  setResult("");
  $("#remove-confirm").hidden = true;
  form.type.value = data.type || "";
  fillForm(data);
  showTypeFields();
  paintIntegrationState();
}

// The saved integration's state only: the form (which the user may be editing) stays as it is.
async function reloadIntegrationState() {
  const id = state.open;
  const { data } = await api("GET", `/api/accounts/${id}/integration`);
  if (state.open !== id) return;
  state.integration = data;
  paintIntegrationState();
}

function showTypeFields() {
  const type = $("#integration-type").value;
  showDeclaredFieldset(type);
  for (const info of TYPES) {
    const fieldset = document.getElementById(`${info.prefix}-fields`);
    if (fieldset) fieldset.hidden = type !== info.type;
  }
  // Test works on what the form says, saved or not; the rest needs a saved integration.
  $("#integration-actions").hidden = !type;
  paintIntegrationState();
}

function paintIntegrationState() {
  const data = state.integration;
  if (!data) return;
  const saved = data.type;
  const chosen = $("#integration-type").value;
  const same = Boolean(saved) && saved === chosen;
  $("#integration-state").hidden = !saved;
  $("#btn-refresh").hidden = !same;
  $("#btn-remove").hidden = !saved;
  $("#btn-reauth").hidden = !(same && typeInfo(saved)?.sign_in);
  // Sign-in state belongs to this account's saved Schwab integration, nothing else.
  const oauthLine = $("#schwab-oauth-line");
  const oauth = $("#schwab-oauth");
  oauthLine.hidden = !(same && saved === "SCHWAB");
  oauth.replaceChildren();
  if (!saved) return;
  const summary = syncSummary(saved, data.sync);
  paintBadge($("#integration-status"), summary);
  $("#integration-updated").replaceChildren(partsNode(summary.line));
  const error = $("#integration-error");
  const problem = syncErrorNode(data.sync, configContext(saved, data.config));
  keepOpen(error, problem);
  error.hidden = !problem;
  error.replaceChildren(...(problem ? [problem] : []));
  if (saved === "SCHWAB") {
    if (!data.sync?.signed_in) oauth.textContent = "Not signed in yet — use Re-authenticate to sign in with Schwab.";
    else if (data.status === "reauth_required") oauth.textContent = "✗ Sign-in expired — use Re-authenticate.";
    else {
      oauth.append("✓ Signed in");
      if (data.token_refresh_expires_at) oauth.append(" (sign-in expires in ", timeElement(data.token_refresh_expires_at, countdown), ")");
    }
  }
}

function toNumber(text) {
  const t = String(text).trim();
  return t !== "" && /^-?\d+$/.test(t) ? Number(t) : t;
}

// The dialog's one status line: plain text, or a node (an error with its details).
function setResult(content, ok, { busy = false } = {}) {
  const r = $("#integration-result");
  r.replaceChildren(...(content ? [content] : []));
  r.dataset.ok = ok === undefined ? "" : String(ok);
  $("#integration-progress").hidden = !busy;
}

async function busy(button, fn) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    await fn();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

// Follow one refresh to its end: { ok, data } or { ok: false, error } (words + code).
async function followRefresh(id, refreshId, deadlineMs = 60000) {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    let data;
    try {
      ({ data } = await api("GET", `/api/accounts/${id}/integration/refresh/${refreshId}`));
    } catch (err) {
      return { ok: false, err };
    }
    if (data.status !== "pending") return { ok: true, data };
    if (Date.now() > deadline) return { ok: false, pending: true };
    await new Promise((r) => setTimeout(r, 700));
  }
}

async function refreshAccount(id) {
  let data;
  try {
    ({ data } = await api("POST", `/api/accounts/${id}/integration/refresh?wait=10`));
  } catch (err) {
    return { ok: false, err };
  }
  if (data.status !== "pending") return { ok: true, data };
  return followRefresh(id, data.refresh_id);
}

// After a failed refresh the integration holds the broker's code: word it with the form's context.
async function refreshFailure(id, result) {
  if (result.pending) return document.createTextNode("Still running — the balance appears when it finishes.");
  if (state.open === id) await reloadIntegrationState();
  const data = state.integration;
  const sync = data?.sync;
  const context = configContext(data?.type, data?.config);
  if (sync?.last_error_code || sync?.last_error) return errorNode(`✗ ${brokerErrorText(sync.last_error_code, sync.last_error, context)}`, sync.last_error_code, sync.last_error);
  return errorNode(`✗ ${result.err?.message || "The refresh failed."}`, result.err?.code, result.err?.detail);
}

async function showRefresh(id, result, what) {
  const account = state.accounts.get(id);
  await loadAccounts();
  if (state.open !== id) return;
  if (result.ok) {
    await reloadIntegrationState();
    setResult(`✓ ${what}: balance ${money(result.data.balance, account?.currency || "USD")}`, true);
  } else {
    setResult(await refreshFailure(id, result), false);
  }
}

async function startOAuth(accountId) {
  const { data } = await api("POST", `/api/accounts/${accountId}/integration/oauth/start`);
  const popup = window.open(data.authorize_url, "brokerlink-oauth", "popup,width=560,height=720");
  if (!popup) {
    location.assign(data.authorize_url); // popups blocked: the callback brings us back here
    return false;
  }
  return true;
}

function initIntegration() {
  const form = $("#integration-form");
  initBackups();
  form.type.addEventListener("change", showTypeFields);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    setResult("");
    if (!form.type.value) {
      if (state.integration?.type) askRemove();
      else closeDialog();
      return;
    }
    const id = state.open;
    const body = formBody(form.type.value);
    let saved;
    try {
      ({ data: saved } = await api("PUT", `/api/accounts/${id}/integration`, body));
    } catch (err) {
      const prefix = typeInfo(form.type.value)?.prefix;
      showErrors(form, err, (field) => (field.startsWith("config.") ? prefix : null), $("#integration-error-form"));
      return;
    }
    await loadIntegration();
    await loadAccounts();
    if (saved.refresh_id) {
      // Save started the first refresh: show it running, then its balance.
      setResult("Saved. Fetching the balance…", undefined, { busy: true });
      await showRefresh(id, await followRefresh(id, saved.refresh_id), "Saved and synced");
    } else if (typeInfo(body.type)?.sign_in && !saved.sync?.signed_in) {
      setResult("Saved. Now sign in with Re-authenticate.", true);
    } else {
      setResult("Saved.", true);
    }
  });
  $("#btn-test").addEventListener("click", (e) =>
    busy(e.currentTarget, async () => {
      const form = $("#integration-form");
      clearErrors(form);
      setResult("Testing…", undefined, { busy: true });
      const body = formBody(form.type.value); // what the form says now, saved or not
      try {
        const { data } = await api("POST", `/api/accounts/${state.open}/integration/test`, body);
        if (data.success) setResult(`✓ Connection works: ${data.message}`, true);
        else setResult(errorNode(`✗ ${brokerErrorText(data.code, data.message, configContext(body.type, body.config))}`, data.code, data.message), false);
      } catch (err) {
        const prefix = typeInfo(body.type)?.prefix;
        if (err.status === 422) {
          setResult("");
          showErrors(form, err, (field) => (field.startsWith("config.") ? prefix : null), $("#integration-error-form"));
        } else setResult(errorNode(`✗ ${err.message}`, err.code, err.detail), false);
      }
    }),
  );
  $("#btn-refresh").addEventListener("click", (e) =>
    busy(e.currentTarget, async () => {
      const id = state.open;
      setResult("Refreshing…", undefined, { busy: true });
      await showRefresh(id, await refreshAccount(id), "Refreshed");
    }),
  );
  $("#btn-reauth").addEventListener("click", (e) =>
    busy(e.currentTarget, async () => {
      try {
        if (await startOAuth(state.open)) setResult("Finish signing in to Schwab in the window that opened…");
      } catch (err) {
        setResult(errorNode(`✗ ${err.message}`, err.code, err.detail), false);
      }
    }),
  );
  $("#btn-remove").addEventListener("click", askRemove);
  $("#btn-remove-no").addEventListener("click", () => {
    $("#remove-confirm").hidden = true;
    $("#btn-remove").focus();
  });
  $("#btn-remove-yes").addEventListener("click", async () => {
    try {
      await api("DELETE", `/api/accounts/${state.open}/integration`);
      await loadIntegration();
      await loadAccounts();
      setResult("Integration removed.", true);
      $("#integration-type").focus();
    } catch (err) {
      setResult(errorNode(`✗ ${err.message}`, err.code, err.detail), false);
    }
  });
}

function askRemove() {
  $("#remove-confirm").hidden = false;
  $("#btn-remove-no").focus();
}

// The OAuth callback lands on `/?oauth=ok|failed|error&account=ID`.
function oauthReturn() {
  const q = new URLSearchParams(location.search);
  const outcome = q.get("oauth");
  if (!outcome) return null;
  const message = { type: "brokerlink-oauth", oauth: outcome, account: Number(q.get("account")) || null, reason: q.get("reason") };
  if (window.opener && !window.opener.closed) {
    try {
      window.opener.postMessage(message, location.origin);
      window.close();
      return "popup";
    } catch {
      // opener on another origin or gone: fall through and handle it here
    }
  }
  history.replaceState(null, "", location.pathname);
  return message;
}

const OAUTH_REASONS = {
  invalid_field: "the sign-in link had expired or was already used — start again with Re-authenticate",
  not_found: "the account or its Schwab integration is gone",
};

function oauthText(m) {
  if (m.oauth === "ok") return "✓ Signed in to Schwab.";
  if (m.oauth === "failed") return "✗ Schwab sign-in failed; try Re-authenticate again.";
  return `✗ Schwab sign-in could not finish: ${OAUTH_REASONS[m.reason] || "try Re-authenticate again"} (${m.reason || "unknown reason"}).`;
}

// Signed in: the server started the first refresh; follow it through the sync facts.
async function watchFirstSync(id) {
  const deadline = Date.now() + 60000;
  while (state.open === id && Date.now() < deadline) {
    await reloadIntegrationState();
    const attempt = state.integration?.sync?.last_attempt;
    if (attempt !== "pending") return attempt;
    setResult("✓ Signed in to Schwab. Fetching the balance…", true, { busy: true });
    await new Promise((r) => setTimeout(r, 700));
  }
  return "pending";
}

async function handleOAuth(m) {
  if (!m.account) toast(oauthText(m));
  await loadAccounts();
  if (m.account) {
    await openDialog(m.account, "integration");
    setResult(oauthText(m), m.oauth === "ok");
    if (m.oauth !== "ok") return;
    const outcome = await watchFirstSync(m.account);
    await loadAccounts();
    if (state.open !== m.account) return;
    const account = state.accounts.get(m.account);
    if (outcome === "succeeded") setResult(`✓ Signed in to Schwab and synced: balance ${money(account.current_balance, account.currency)}`, true);
    else if (outcome === "failed") setResult(await refreshFailure(m.account, { ok: false }), false);
    else setResult(oauthText(m), true);
  }
}

// `/?open=ID&tab=integration` (the health page's "Open settings") opens that dialog.
function openFromQuery() {
  const q = new URLSearchParams(location.search);
  const id = Number(q.get("open"));
  if (!id) return null;
  history.replaceState(null, "", location.pathname);
  return { id, tab: TABS.includes(q.get("tab")) ? q.get("tab") : "details" };
}

async function initAccounts() {
  const returned = oauthReturn();
  if (returned === "popup") return;
  if (!requireSignIn()) return;
  initCreate();
  initRefreshAll();
  initDialog();
  window.addEventListener("message", (e) => {
    if (e.origin !== location.origin || e.data?.type !== "brokerlink-oauth") return;
    handleOAuth(e.data).catch((err) => toast(err.message));
  });
  await loadAccounts();
  loadPendingLinks();
  pollWhileVisible(pollHealth);
  setInterval(tickTimes, 1000);
  if (returned) await handleOAuth(returned);
  const open = openFromQuery();
  if (open) await openDialog(open.id, open.tab).catch((err) => toast(err.message));
}

// ---- Audit tab -----------------------------------------------------------------------------

const AUDIT_ACTIONS = {
  "account.create": "Account created",
  "account.update": "Account changed",
  "account.delete": "Account deleted",
  "integration.create": "Integration added",
  "integration.update": "Integration changed",
  "integration.delete": "Integration removed",
  "integration.test": "Connection tested",
  "integration.refresh": "Refresh asked",
  "integration.reauth_start": "Schwab sign-in started",
  "integration.reauth": "Schwab sign-in finished",
  "history.upsert": "Balance entered",
  "history.update": "Balance corrected",
  "history.delete": "Balance deleted",
};

function auditOutcome(entry) {
  const d = entry.detail || {};
  const parts = [];
  if ("success" in d) parts.push(d.success ? "succeeded" : "failed");
  if (d.unsaved) parts.push("with the settings in the form");
  if (d.reason) parts.push(d.reason);
  return parts.join(", ") || "—";
}

async function loadAudit() {
  const id = state.open;
  if (id === null) return;
  const { data } = await api("GET", `/api/accounts/${id}/audit`);
  if (state.open !== id) return;
  $("#audit-rows").replaceChildren(
    ...data.map((e) =>
      el(
        "tr",
        { "data-action": e.action },
        el("td", {}, timeElement(e.at)),
        el("td", { text: AUDIT_ACTIONS[e.action] || e.action }),
        el("td", { text: e.changed_fields.length ? e.changed_fields.map(fieldLabel).join(", ") : "—" }),
        el("td", { text: auditOutcome(e) }),
      ),
    ),
  );
  $("#audit-empty").hidden = data.length > 0;
}

// ---- History tab ---------------------------------------------------------------------------

async function loadHistory() {
  const id = state.open;
  if (id === null) return;
  const account = state.accounts.get(id);
  const { data } = await api("GET", `/api/accounts/${id}/history`);
  if (state.open !== id) return;
  const rows = [...data].sort((a, b) => a.date.localeCompare(b.date));
  $("#history-chart").replaceChildren(lineChart(rows, account.currency));
  $("#history-rows").replaceChildren(
    ...[...rows].reverse().map((r) => el("tr", {}, el("td", { text: r.date }), el("td", { class: "num", text: money(r.balance, account.currency) }), el("td", { text: SOURCES[r.source] || r.source }))),
  );
  $("#history-empty").hidden = rows.length > 0;
  const holdings = $("#holdings");
  holdings.hidden = !account.integration_type;
  if (!account.integration_type) return;
  const [positions, cash] = await Promise.all([api("GET", `/api/accounts/${id}/integration/portfolio`), api("GET", `/api/accounts/${id}/integration/cash`)]);
  $("#position-rows").replaceChildren(
    ...(positions.data.length
      ? positions.data.map((p) =>
          el(
            "tr",
            {},
            el("th", { scope: "row", text: p.symbol }),
            el("td", { text: p.sec_type }),
            el("td", { class: "num", text: number(p.quantity) }),
            el("td", { class: "num", text: number(p.market_price) }),
            el("td", { class: "num", text: money(p.market_value, p.currency) }),
            el("td", { text: p.currency }),
          ),
        )
      : [el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No positions." }))]),
  );
  $("#cash-rows").replaceChildren(
    ...(cash.data.length
      ? cash.data.map((c) => el("tr", {}, el("th", { scope: "row", text: c.currency }), el("td", { class: "num", text: money(c.amount, c.currency) })))
      : [el("tr", {}, el("td", { colspan: 2, class: "muted", text: "No cash balances." }))]),
  );
}

const SOURCES = { MANUAL: "Manual", ...BROKER_NAMES };
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// A hand-written line chart: balance over date, with min/max and first/last labels.
export function lineChart(rows, currency) {
  const W = 560;
  const H = 200;
  const pad = { l: 80, r: 16, t: 12, b: 28 };
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "line-chart" });
  const values = rows.map((r) => Number(r.balance));
  const title = rows.length ? `Balance from ${rows[0].date} to ${rows.at(-1).date}: ${money(values[0], currency)} to ${money(values.at(-1), currency)}` : "No balance history yet";
  chart.append(svg("title", {}, title));
  if (!rows.length) {
    chart.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis-label" }, "No data yet"));
    return chart;
  }
  const times = rows.map((r) => new Date(`${r.date}T00:00:00Z`).getTime());
  let [lo, hi] = [Math.min(...values), Math.max(...values)];
  if (lo === hi) [lo, hi] = [lo - 1, hi + 1];
  let [t0, t1] = [times[0], times.at(-1)];
  if (t0 === t1) [t0, t1] = [t0 - 86400000, t1 + 86400000];
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (W - pad.l - pad.r);
  const y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * (H - pad.t - pad.b);
  chart.append(
    svg("line", { x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b, class: "axis" }),
    svg("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: H - pad.b, class: "axis" }),
    svg("text", { x: pad.l - 6, y: y(hi) + 4, "text-anchor": "end", class: "axis-label" }, money(hi, currency)),
    svg("text", { x: pad.l - 6, y: y(lo) + 4, "text-anchor": "end", class: "axis-label" }, money(lo, currency)),
    svg("text", { x: pad.l, y: H - 8, "text-anchor": "start", class: "axis-label" }, rows[0].date),
    svg("text", { x: W - pad.r, y: H - 8, "text-anchor": "end", class: "axis-label" }, rows.at(-1).date),
  );
  const points = rows.map((r, i) => `${x(times[i]).toFixed(1)},${y(values[i]).toFixed(1)}`);
  chart.append(svg("polyline", { points: points.join(" "), class: "series" }));
  rows.forEach((r, i) => {
    const dot = svg("circle", { cx: x(times[i]).toFixed(1), cy: y(values[i]).toFixed(1), r: 3, class: "point" });
    dot.append(svg("title", {}, `${r.date}: ${money(values[i], currency)}`));
    chart.append(dot);
  });
  return chart;
}

// ---- health page ---------------------------------------------------------------------------

// Action results outlive the table's repaints (it is redrawn on every poll).
const healthState = { accounts: new Map(), results: new Map() };

function healthActions(row) {
  const result = el("span", { class: "result", role: "status", text: healthState.results.get(row.account_id) || "" });
  const say = (text) => {
    healthState.results.set(row.account_id, text);
    result.textContent = text;
  };
  const refresh = el("button", {
    type: "button",
    "aria-label": `Refresh ${row.account_name}`,
    text: "Refresh",
    onclick: () =>
      busy(refresh, async () => {
        say("Refreshing…");
        const outcome = await refreshAccount(row.account_id);
        say(outcome.ok ? `✓ Refreshed ${new Date().toLocaleTimeString()}` : outcome.pending ? "Still running" : "✗ Failed (see Problem)");
        await loadHealthPage();
      }),
  });
  const reauth =
    typeInfo(row.type)?.sign_in
      ? el("button", {
          type: "button",
          "aria-label": `Re-authenticate ${row.account_name}`,
          text: "Re-authenticate",
          onclick: () =>
            busy(reauth, async () => {
              try {
                if (await startOAuth(row.account_id)) say("Finish signing in in the window that opened…");
              } catch (err) {
                say(`✗ ${err.message}`);
              }
            }),
        })
      : null;
  const settings = el("a", { href: `/?open=${row.account_id}&tab=integration`, "aria-label": `Open settings of ${row.account_name}`, text: "Open settings" });
  return el("td", { class: "row-actions" }, refresh, reauth, settings, result);
}

async function loadHealthPage() {
  const [{ data }, accounts] = await Promise.all([api("GET", "/api/integrations/health"), api("GET", "/api/accounts")]);
  healthState.accounts = new Map(accounts.data.map((a) => [a.id, a]));
  const open = new Set([...document.querySelectorAll("#health-rows tr")].filter((tr) => tr.querySelector(".problem details")?.open).map((tr) => Number(tr.dataset.accountId)));
  $("#health-rows").replaceChildren(
    ...data.map((row) => {
      const summary = syncSummary(row.type, row.sync);
      const account = healthState.accounts.get(row.account_id);
      const problem = syncErrorNode(row.sync, configContext(row.type, account?.integration_config));
      if (open.has(row.account_id)) problem?.querySelector("details")?.setAttribute("open", "");
      return el(
        "tr",
        { "data-account-id": row.account_id },
        el("th", { scope: "row", text: row.account_name }),
        el("td", { text: BROKER_NAMES[row.type] || row.type }),
        el("td", {}, badge(summary)),
        el("td", { class: "sync" }, partsNode(summary.line)),
        problem ? el("td", { class: "error-text problem" }, problem) : el("td", { class: "muted problem", text: "—" }),
        el("td", { class: "expiry" }, typeInfo(row.type)?.sign_in && row.sync.signed_in ? timeElement(row.token_refresh_expires_at, countdown) : "—"),
        healthActions(row),
      );
    }),
  );
  $("#health-empty").hidden = data.length > 0;
  $("#health-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  await loadTotals();
}

function initHealth() {
  if (!requireSignIn()) return;
  window.addEventListener("message", (e) => {
    if (e.origin !== location.origin || e.data?.type !== "brokerlink-oauth") return;
    toast(oauthText(e.data));
    if (e.data.account) healthState.results.set(e.data.account, oauthText(e.data));
    loadHealthPage().catch((err) => toast(err.message));
  });
  pollWhileVisible(loadHealthPage);
  setInterval(tickTimes, 1000);
}

// ---- security: two-factor, password, devices -----------------------------------------------

async function loadTwoFactor() {
  const { data } = await api("GET", "/api/auth/me");
  $("#twofa-state").textContent = data.two_factor_enabled
    ? "Two-factor sign-in is on."
    : "Two-factor sign-in is off.";
  $("#twofa-off").hidden = data.two_factor_enabled;
  $("#twofa-disable").hidden = !data.two_factor_enabled;
  $("#twofa-enrol").hidden = true;
}

function initSecurity() {
  if (!requireSignIn()) return;
  loadTwoFactor().catch((err) => toast(err.message));
  $("#twofa-start").addEventListener("click", async () => {
    const { data } = await api("POST", "/api/auth/2fa/setup");
    $("#twofa-qr").src = `data:image/svg+xml;base64,${btoa(data.qr_svg)}`;
    $("#twofa-secret").textContent = data.secret;
    $("#twofa-off").hidden = true;
    $("#twofa-enrol").hidden = false;
    $("#twofa-confirm-code").focus();
  });
  $("#twofa-enrol").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.currentTarget;
    clearErrors(form);
    try {
      const { data } = await api("POST", "/api/auth/2fa/confirm", { code: form.code.value.trim() });
      $("#twofa-code-list").replaceChildren(...data.recovery_codes.map((c) => el("li", {}, el("code", {}, c))));
      $("#twofa-codes").hidden = false;
      form.reset();
      await loadTwoFactor();
    } catch (err) {
      showErrors(form, err, () => "twofa-confirm", $("#twofa-enrol-error"));
    }
  });
  $("#twofa-disable").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.currentTarget;
    clearErrors(form);
    try {
      await api("POST", "/api/auth/2fa/disable", { password: form.password.value, code: form.code.value.trim() });
      form.reset();
      $("#twofa-codes").hidden = true;
      await loadTwoFactor();
      toast("Two-factor sign-in is off.");
    } catch (err) {
      showErrors(form, err, () => "twofa-disable", $("#twofa-disable-error"));
    }
  });
  $("#password-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.currentTarget;
    clearErrors(form);
    try {
      await api("POST", "/api/auth/password", {
        current_password: form.current_password.value,
        new_password: form.new_password.value,
      });
      form.reset();
      toast("Password changed; other devices are signed out.");
    } catch (err) {
      showErrors(form, err, () => "password", $("#password-error"));
    }
  });
  $("#logout-all").addEventListener("click", () => signOutEverywhere("/api/auth/logout-all"));
}

// ---- start ---------------------------------------------------------------------------------

const pages = {
  login: initLogin,
  register: initRegister,
  accounts: initAccounts,
  health: initHealth,
  security: initSecurity,
};
pages[document.body.dataset.page]?.();
