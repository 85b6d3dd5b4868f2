// brokerlink web UI: one small module, no build step. Every action goes through the JSON API
// with the user's bearer token (kept in sessionStorage); the pages are static shells.

const TOKENS = "brokerlink.tokens";
const POLL_MS = 2500;

// ---- API client ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(messageOf(body) || `request failed (${status})`);
    this.status = status;
    this.body = body;
  }
}

function messageOf(body) {
  if (!body) return "";
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  return "";
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
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
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

export function relativeTime(iso, now = Date.now()) {
  if (!iso) return "never";
  const secs = Math.round((now - new Date(iso).getTime()) / 1000);
  if (secs < 45) return "just now";
  const units = [
    [60, "min"],
    [24, "hour"],
    [30, "day"],
    [12, "month"],
    [Infinity, "year"],
  ];
  let value = secs / 60;
  for (const [size, name] of units) {
    if (value < size) {
      const n = Math.max(1, Math.round(value));
      return `${n} ${name}${n === 1 ? "" : "s"} ago`;
    }
    value /= size;
  }
  return "long ago";
}

export function countdown(iso, now = Date.now()) {
  if (!iso) return "—";
  let secs = Math.floor((new Date(iso).getTime() - now) / 1000);
  if (secs <= 0) return "expired";
  const d = Math.floor(secs / 86400);
  secs -= d * 86400;
  const h = Math.floor(secs / 3600);
  secs -= h * 3600;
  const m = Math.floor(secs / 60);
  const s = secs - m * 60;
  if (d > 0) return `${d}d ${h}h ${m}m`;
  if (h > 0) return `${h}h ${m}m ${s}s`;
  return `${m}m ${s}s`;
}

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

// ---- statuses ------------------------------------------------------------------------------

const STATUS_WORDS = {
  connected: "Connected",
  disconnected: "Disconnected",
  error: "Error",
  reauth_required: "Re-authentication required",
  expiring_soon: "Expiring soon",
  pending: "Pending",
  not_configured: "Not configured",
};

function statusWords(status) {
  return STATUS_WORDS[status] || status || "Unknown";
}

function paintBadge(badge, status, type) {
  badge.dataset.status = status || "unknown";
  const label = badge.querySelector(".label");
  const text = statusWords(status);
  label.textContent = type ? `${type === "SCHWAB" ? "Schwab" : type} · ${text}` : text;
}

function badge(status, type) {
  const node = el("span", { class: "badge" }, el("span", { class: "dot", "aria-hidden": "true" }), el("span", { class: "label" }));
  paintBadge(node, status, type);
  return node;
}

// ---- field errors --------------------------------------------------------------------------

// "config.port" from a 422 `loc` (["body", "IB", "config", "port"]) or our `field`.
function fieldErrors(err) {
  const out = [];
  const body = err && err.body;
  if (!body) return out;
  if (Array.isArray(body.detail)) {
    for (const d of body.detail) {
      const loc = (d.loc || []).filter((p, i) => !(i === 0 && (p === "body" || p === "query")) && p !== "IB" && p !== "SCHWAB");
      out.push({ field: loc.join("."), message: d.msg.replace(/^Value error, /, "") });
    }
  } else if (body.field) {
    out.push({ field: body.field, message: body.detail });
  }
  return out;
}

function clearErrors(form) {
  for (const p of form.querySelectorAll(".field-error")) p.textContent = "";
  for (const i of form.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
  for (const p of form.querySelectorAll(".form-error")) p.textContent = "";
}

// Shows each error next to its input (`#<prefix>-<name>-error`); the rest in the form error.
function showErrors(form, err, prefixFor, formError) {
  const rest = [];
  let first = null;
  for (const { field, message } of fieldErrors(err)) {
    const name = field.split(".").pop();
    const prefix = prefixFor(field);
    const slot = prefix && document.getElementById(`${prefix}-${name}-error`);
    const input = slot && form.querySelector(`[name="${name}"]:not([disabled])`);
    if (slot && input && !input.closest("[hidden]")) {
      slot.textContent = message;
      input.setAttribute("aria-invalid", "true");
      const described = (input.getAttribute("aria-describedby") || "").split(" ");
      if (!described.includes(slot.id)) input.setAttribute("aria-describedby", [...described, slot.id].join(" ").trim());
      first ??= input;
    } else {
      rest.push(field ? `${field}: ${message}` : message);
    }
  }
  if (!fieldErrors(err).length) rest.push(err.message);
  if (formError) formError.textContent = rest.join(" ");
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

function initLogin() {
  const form = $("#login-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    try {
      await login(form.email.value, form.password.value, form.code.value.trim());
      location.assign(new URLSearchParams(location.search).get("next") || "/");
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

const state = { accounts: new Map(), health: new Map(), open: null, integration: null };

function accountRow(a) {
  const h = state.health.get(a.id);
  const status = h ? h.status : a.integration_status;
  const integration = a.integration_type ? badge(status, a.integration_type) : el("span", { class: "muted", text: "None" });
  const name = el("button", { type: "button", class: "link", "data-open": a.id, text: a.name });
  return el(
    "tr",
    { "data-account-id": a.id },
    el("th", { scope: "row" }, name),
    el("td", { text: a.account_type === "BANK" ? "Bank" : "Investment" }),
    el("td", { text: a.currency }),
    el("td", { class: "num balance", text: money(a.current_balance, a.currency) }),
    el("td", { class: "integration" }, integration),
    el("td", { class: "updated" }, timeElement(a.last_updated)),
    el("td", {}, el("button", { type: "button", "data-open": a.id, "aria-label": `Edit ${a.name}`, text: "Edit" })),
  );
}

async function loadAccounts() {
  const { data } = await api("GET", "/api/accounts");
  state.accounts = new Map(data.map((a) => [a.id, a]));
  const rows = $("#account-rows");
  rows.replaceChildren(...data.map(accountRow));
  $("#accounts-empty").hidden = data.length > 0;
  return data;
}

// Live status: repaint badges (table and dialog) from the health route; reload balances when
// an account's last success moved.
async function pollHealth() {
  const { data } = await api("GET", "/api/integrations/health");
  let moved = false;
  const seen = new Map();
  for (const row of data) {
    const before = state.health.get(row.account_id);
    if (before && before.last_success_at !== row.last_success_at) moved = true;
    seen.set(row.account_id, row);
    const tr = document.querySelector(`tr[data-account-id="${row.account_id}"] .badge`);
    if (tr) paintBadge(tr, row.status, row.type);
  }
  state.health = seen;
  if (state.open !== null && seen.has(state.open) && state.integration?.type) {
    const row = seen.get(state.open);
    Object.assign(state.integration, {
      status: row.status,
      last_error: row.last_error,
      last_error_code: row.last_error_code,
      last_success_at: row.last_success_at,
      token_refresh_expires_at: row.token_refresh_expires_at,
    });
    paintIntegrationState();
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

const TABS = ["details", "integration", "history"];

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

async function loadIntegration() {
  const { data } = await api("GET", `/api/accounts/${state.open}/integration`);
  state.integration = data;
  const form = $("#integration-form");
  clearErrors(form);
  $("#integration-result").textContent = "";
  $("#remove-confirm").hidden = true;
  form.type.value = data.type || "";
  const c = data.config || {};
  if (data.type === "IB") {
    $("#ib-host").value = c.host ?? "";
    $("#ib-port").value = c.port ?? "";
    $("#ib-client-id").value = c.client_id ?? "";
    $("#ib-account-code").value = c.account_code ?? "";
  } else {
    $("#ib-host").value = "localhost";
    $("#ib-port").value = "4001";
    $("#ib-client-id").value = "1";
    $("#ib-account-code").value = "";
  }
  const schwab = data.type === "SCHWAB";
  const key = $("#schwab-app-key");
  const secret = $("#schwab-app-secret");
  key.value = "";
  secret.value = "";
  key.placeholder = schwab && c.app_key ? c.app_key : "";
  secret.placeholder = schwab && c.app_secret ? c.app_secret : "";
  $("#schwab-app-key-hint").textContent = schwab && c.app_key ? "Stored; leave empty to keep it." : "";
  $("#schwab-app-secret-hint").textContent = schwab && c.app_secret ? "Stored and never shown; leave empty to keep it." : "";
  $("#schwab-account-number").value = schwab ? c.account_number || "" : "";
  showTypeFields();
  paintIntegrationState();
}

function showTypeFields() {
  const type = $("#integration-type").value;
  $("#ib-fields").hidden = type !== "IB";
  $("#schwab-fields").hidden = type !== "SCHWAB";
}

function paintIntegrationState() {
  const data = state.integration;
  if (!data) return;
  const configured = Boolean(data.type);
  $("#integration-state").hidden = !configured;
  $("#integration-actions").hidden = !configured;
  $("#btn-reauth").hidden = data.type !== "SCHWAB";
  if (!configured) return;
  paintBadge($("#integration-status"), data.status);
  const error = $("#integration-error");
  const showError = data.last_error && !["connected", "pending"].includes(data.status);
  error.hidden = !showError;
  error.textContent = showError ? `Last error: ${data.last_error}${data.last_error_code ? ` (code ${data.last_error_code})` : ""}` : "";
  $("#integration-updated").replaceChildren(timeElement(data.last_success_at));
  if (data.type === "SCHWAB") {
    const c = data.config || {};
    const oauth = $("#schwab-oauth");
    if (data.status === "reauth_required") oauth.textContent = "✗ Sign-in expired — re-authenticate";
    else if (c.has_tokens) {
      oauth.replaceChildren("✓ Authenticated");
      if (data.token_refresh_expires_at) oauth.append(" (sign-in expires in ", timeElement(data.token_refresh_expires_at, countdown), ")");
    } else oauth.textContent = "Not signed in yet — use Re-authenticate";
  }
}

function integrationBody(form) {
  const type = form.type.value;
  if (type === "IB") {
    const config = {
      host: $("#ib-host").value.trim(),
      port: toNumber($("#ib-port").value),
      client_id: toNumber($("#ib-client-id").value),
      read_only: true,
    };
    const code = $("#ib-account-code").value.trim();
    if (code) config.account_code = code;
    return { type, config };
  }
  const config = {};
  const key = $("#schwab-app-key").value.trim();
  const secret = $("#schwab-app-secret").value;
  const number = $("#schwab-account-number").value.trim();
  if (key) config.app_key = key;
  if (secret) config.app_secret = secret; // empty keeps the stored secret
  if (number) config.account_number = number;
  return { type, config };
}

function toNumber(text) {
  const t = String(text).trim();
  return t !== "" && /^-?\d+$/.test(t) ? Number(t) : t;
}

function setResult(text, ok) {
  const r = $("#integration-result");
  r.textContent = text;
  r.dataset.ok = ok === undefined ? "" : String(ok);
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

async function refreshAccount(id) {
  let response;
  try {
    response = await api("POST", `/api/accounts/${id}/integration/refresh?wait=10`);
  } catch (err) {
    return { ok: false, message: err.message };
  }
  let { data } = response;
  const deadline = Date.now() + 60000;
  while (data.status === "pending" && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 1000));
    try {
      ({ data } = await api("GET", `/api/accounts/${id}/integration/refresh/${data.refresh_id}`));
    } catch (err) {
      return { ok: false, message: err.message };
    }
  }
  if (data.status === "pending") return { ok: false, message: "still running; the balance will appear when it finishes" };
  return { ok: true, data };
}

async function startOAuth() {
  const { data } = await api("POST", `/api/accounts/${state.open}/integration/oauth/start`);
  const popup = window.open(data.authorize_url, "brokerlink-oauth", "popup,width=560,height=720");
  if (!popup) {
    location.assign(data.authorize_url); // popups blocked: the callback brings us back here
    return;
  }
  setResult("Finish signing in to Schwab in the window that opened…");
}

function initIntegration() {
  const form = $("#integration-form");
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
    const body = integrationBody(form);
    try {
      await api("PUT", `/api/accounts/${state.open}/integration`, body);
      await loadIntegration();
      await loadAccounts();
      setResult(body.type === "SCHWAB" && !state.integration.config?.has_tokens ? "Saved. Now sign in with Re-authenticate." : "Saved.", true);
    } catch (err) {
      const prefix = form.type.value === "IB" ? "ib" : "schwab";
      showErrors(form, err, (field) => (field.startsWith("config.") ? prefix : null), $("#integration-error-form"));
    }
  });
  $("#btn-test").addEventListener("click", (e) =>
    busy(e.currentTarget, async () => {
      setResult("Testing…");
      try {
        const { data } = await api("POST", `/api/accounts/${state.open}/integration/test`);
        setResult(`${data.success ? "✓ Connection works" : "✗ Connection failed"}: ${data.message}`, data.success);
      } catch (err) {
        setResult(`✗ ${err.message}`, false);
      }
    }),
  );
  $("#btn-refresh").addEventListener("click", (e) =>
    busy(e.currentTarget, async () => {
      const id = state.open;
      setResult("Refreshing…");
      const result = await refreshAccount(id);
      const account = state.accounts.get(id);
      const text = result.ok ? `✓ Refreshed: balance ${money(result.data.balance, account?.currency || "USD")}` : `✗ Refresh failed: ${result.message}`;
      await loadAccounts();
      if (state.open === id) {
        await loadIntegration();
        setResult(text, result.ok);
      }
    }),
  );
  $("#btn-reauth").addEventListener("click", (e) =>
    busy(e.currentTarget, async () => {
      try {
        await startOAuth();
      } catch (err) {
        setResult(`✗ ${err.message}`, false);
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
      setResult(`✗ ${err.message}`, false);
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

function oauthText(m) {
  if (m.oauth === "ok") return "✓ Signed in to Schwab.";
  if (m.oauth === "failed") return "✗ Schwab sign-in failed; try Re-authenticate again.";
  return `✗ Schwab sign-in could not finish (${m.reason || "unknown reason"}).`;
}

async function handleOAuth(m) {
  if (!m.account) toast(oauthText(m));
  await loadAccounts();
  if (m.account) {
    await openDialog(m.account, "integration");
    setResult(oauthText(m), m.oauth === "ok");
  }
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

const SOURCES = { MANUAL: "Manual", IB: "IB", SCHWAB: "Schwab" };
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

async function loadHealthPage() {
  const { data } = await api("GET", "/api/integrations/health");
  $("#health-rows").replaceChildren(
    ...data.map((row) =>
      el(
        "tr",
        { "data-account-id": row.account_id },
        el("th", { scope: "row", text: row.account_name }),
        el("td", { text: row.type === "SCHWAB" ? "Schwab" : row.type }),
        el("td", {}, badge(row.status)),
        el("td", {}, timeElement(row.last_success_at)),
        row.last_error
          ? el("td", { class: "error-text", text: `${row.last_error}${row.last_error_code ? ` (code ${row.last_error_code})` : ""}` })
          : el("td", { class: "muted", text: "—" }),
        el("td", { class: "expiry" }, row.type === "SCHWAB" ? timeElement(row.token_refresh_expires_at, countdown) : "—"),
      ),
    ),
  );
  $("#health-empty").hidden = data.length > 0;
  $("#health-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

function initHealth() {
  if (!requireSignIn()) return;
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
