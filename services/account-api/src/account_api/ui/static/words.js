// What the UI says: statuses, times and errors in words. Pure functions only (no DOM, no
// fetch), so the table, the dialog and the health page word an account the same way, and
// tests run this very file under node (services/account-api/tests/test_ui_words.py).

// ---- times ---------------------------------------------------------------------------------

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

// ---- an account's sync, in words -----------------------------------------------------------

// A refresh nobody answered for this long is not described as running any more.
export const SYNC_SILENT_MS = 120_000;

const t = (iso) => ({ time: iso });

// `kind` is the integration type (IB, SCHWAB or null); `sync` the API's sync facts (the same
// object in GET /api/accounts, .../integration and /api/integrations/health).
// Returns { key, label, line }: `key` picks the badge colour, `label` says the status and
// `line` is the sync sentence as parts — strings and { time: iso } for times that tick.
// Rules: a time is only ever shown next to what happened at it; a failed newest attempt is
// said so and the last good sync stays visible; "Connected" needs a balance behind it.
export function syncSummary(kind, sync, now = Date.now()) {
  if (!kind || !sync) return { key: "not_configured", label: "No integration", line: [] };
  return { ...badgeOf(kind, sync), line: syncLine(sync, now) };
}

function badgeOf(kind, sync) {
  const failed = sync.last_attempt === "failed";
  const synced = Boolean(sync.last_success_at);
  switch (sync.status) {
    case "reauth_required":
      return sync.signed_in === false
        ? { key: "reauth_required", label: "Not signed in" }
        : { key: "reauth_required", label: "Sign-in expired" };
    case "disconnected":
      return { key: "disconnected", label: "Disconnected" };
    case "error":
      return { key: "error", label: "Error" };
    case "not_configured":
      return { key: "not_configured", label: "No integration" };
    default:
  }
  if (failed) return { key: "error", label: "Sync failing" };
  if (kind === "SCHWAB" && sync.signed_in === false) return { key: "reauth_required", label: "Not signed in" };
  if (sync.status === "expiring_soon") return { key: "expiring_soon", label: "Sign-in expires soon" };
  if (!synced) {
    if (sync.last_attempt === "pending") return { key: "pending", label: "Syncing" };
    return sync.status === "connected" ? { key: "pending", label: "Connected, no balance yet" } : { key: "pending", label: "Setting up" };
  }
  if (sync.status === "connected") return { key: "connected", label: "Connected" };
  return { key: "pending", label: "Setting up" };
}

function syncLine(sync, now) {
  const good = sync.last_success_at;
  const lastGood = good ? [" · last good sync ", t(good)] : [" · no balance yet"];
  switch (sync.last_attempt) {
    case "failed":
      return ["Last sync failed ", t(sync.last_failure_at), ...lastGood];
    case "pending": {
      const asked = sync.last_attempt_at;
      if (asked && now - new Date(asked).getTime() > SYNC_SILENT_MS) return ["No answer yet to the sync asked ", t(asked), ...lastGood];
      return good ? ["Syncing now · last good sync ", t(good)] : ["Fetching the first balance…"];
    }
    default:
      return good ? ["Synced ", t(good)] : ["Never synced"];
  }
}

// An account without an integration: when its balance last changed (typed in, or synced before
// its integration was removed) — never worded as a sync.
export function manualLine(lastUpdated) {
  return lastUpdated ? ["Balance updated ", t(lastUpdated)] : ["—"];
}

// Parts to plain text (the page renders { time } as a ticking <time> element instead).
export function partsText(parts, now = Date.now()) {
  return parts.map((p) => (typeof p === "string" ? p : relativeTime(p.time, now))).join("");
}

// ---- errors in words -----------------------------------------------------------------------

const BROKER = { IB: "IB", SCHWAB: "Schwab" };

// A broker or connector error code as a sentence saying what to do. `context` holds what the
// form knows: kind, host, port, client_id, account_code. Unknown codes fall back to `message`.
export function brokerErrorText(code, message, context = {}) {
  const c = context;
  const at = c.host && c.port ? ` at ${c.host}:${c.port}` : "";
  const port = c.port ? ` on ${c.port}` : "";
  const broker = BROKER[c.kind] || "broker";
  const key = code === null || code === undefined ? "" : String(code);
  const texts = {
    502: `IB Gateway refused the connection${port} — is it running with the API enabled?`,
    // never reached from this account's user: refused, timed out or closed read the same
    unreachable: `No IB Gateway answered${at} — check the host and port, that IB Gateway is running and that its API is enabled.`,
    gateway_owned_elsewhere: "This IB Gateway belongs to another brokerlink user — use a gateway of your own.",
    504: "brokerlink is not connected to IB Gateway — is it running with the API enabled?",
    326: `${c.client_id !== undefined ? `Client ID ${c.client_id}` : "This client ID"} is already in use on this gateway — choose another client ID.`,
    1100: "IB Gateway lost its connection to Interactive Brokers — it reconnects by itself; check the gateway if this lasts.",
    account: `The gateway cannot serve ${c.account_code ? `account ${c.account_code}` : "this account"} — check the account code (needed when the gateway manages several accounts).`,
    incomplete: "IB Gateway sent an incomplete account summary — try again in a minute.",
    closed: "The gateway session closed during the request — try again.",
    disconnected: "The gateway connection dropped during the request — try again.",
    handover: "The IB connector is handing this gateway to another replica — try again in a few seconds.",
    reauth_required: "Your Schwab sign-in has expired — use Re-authenticate to sign in again.",
    not_signed_in: "Not signed in to Schwab yet — use Re-authenticate to finish.",
    secret_unreadable: "The stored app secret can no longer be read — enter the app secret again and save.",
    http_401: "Schwab did not accept the app key or secret — check them in the Schwab developer portal.",
    http_403: "Schwab refused access to this account — check the app's permissions in the Schwab developer portal.",
    http_429: "Schwab is limiting requests — brokerlink retries by itself; try again in a few minutes.",
    account_data: "Schwab's answer did not include the configured account — check the Schwab account number.",
    bad_answer: "Schwab sent an answer brokerlink could not read — try again later.",
    schwab_error: "Schwab could not be reached — check the server's internet connection and try again.",
    no_connector: `No ${broker} connector answered — is brokerlink's ${broker} connector running?`,
  };
  if (key === "timeout") {
    return c.kind === "SCHWAB" ? "Schwab did not answer in time — try again in a minute." : `IB Gateway${at} did not answer in time — check the host and port, and that the API is enabled.`;
  }
  if (key in texts) return texts[key];
  if (/^http_5\d\d$/.test(key)) return "Schwab's service is having trouble — try again later.";
  return sentence(message) || "Something went wrong — try again.";
}

// What the API's own error codes mean to a person (HTTP errors other than field errors).
const API_TEXTS = {
  not_authenticated: "Your session ended — sign in again.",
  not_found: "This account no longer exists — reload the page.",
  integration_not_configured: "Choose an integration type and save it first.",
  unavailable: "brokerlink is busy or restarting — try again in a moment.",
};

export function apiErrorText(status, body) {
  const code = body && body.code;
  if (code && code in API_TEXTS) return API_TEXTS[code];
  if (status === 0) return "The server could not be reached — check your connection and try again.";
  if (status >= 500 && status !== 502) return "Something went wrong on the server — try again; if it keeps happening, check the server logs.";
  const detail = body && typeof body.detail === "string" ? body.detail : "";
  return sentence(detail) || `The request failed (HTTP ${status}).`;
}

// Field errors (422): plain words from pydantic's `type` and `ctx`, keyed to the field.
const PATTERNS = {
  account_code: "Use an IB account code like U1234567.",
  app_key: "Use letters, digits, dots, dashes or underscores.",
  account_number: "Use digits only.",
  currency: "Use a three-letter currency code like USD.",
};

// The limits a rule names, read from pydantic's message when the server sends no `ctx` (ours
// strips it with the input): "at least 8", "less than or equal to 65535", …
const LIMITS = [
  ["min_length", /at least (\d+)/],
  ["max_length", /at most (\d+)/],
  ["le", /less than or equal to (-?[\d.]+)/],
  ["lt", /less than (-?[\d.]+)/],
  ["ge", /greater than or equal to (-?[\d.]+)/],
  ["gt", /greater than (-?[\d.]+)/],
];

function limitsOf(item) {
  const out = {};
  const msg = String(item.msg || "");
  for (const [key, pattern] of LIMITS) {
    const m = pattern.exec(msg);
    if (m && !(key in out)) out[key] = m[1];
  }
  return out;
}

export function fieldErrorText(item) {
  const ctx = { ...limitsOf(item), ...(item.ctx || {}) };
  const field = String((item.loc || []).at(-1) ?? "");
  const what = field === "backups" ? "backup gateways" : "entries";
  const has = (k) => ctx[k] !== undefined && ctx[k] !== null;
  const chars = field === "password" || item.type.startsWith("string_");
  switch (item.type) {
    case "missing":
      return "Required.";
    case "string_too_short":
    case "too_short":
      if (!has("min_length")) return "Too short.";
      if (chars) return ctx.min_length > 1 ? `Use at least ${ctx.min_length} characters.` : "Can't be empty.";
      return `Add at least ${ctx.min_length} ${what}.`;
    case "string_too_long":
    case "too_long":
      if (!has("max_length")) return "Too long.";
      return chars ? `Use at most ${ctx.max_length} characters.` : `At most ${ctx.max_length} ${what}.`;
    case "less_than_equal":
      return has("le") ? `Must be ${ctx.le} or less.` : "Too large.";
    case "less_than":
      return has("lt") ? `Must be less than ${ctx.lt}.` : "Too large.";
    case "greater_than_equal":
      return has("ge") ? `Must be ${ctx.ge} or more.` : "Too small.";
    case "greater_than":
      return has("gt") ? `Must be more than ${ctx.gt}.` : "Too small.";
    case "int_parsing":
    case "int_type":
    case "int_from_float":
      return "Enter a whole number.";
    case "string_pattern_mismatch":
      return PATTERNS[field] || "Contains characters that are not allowed here.";
    case "extra_forbidden":
      return "Not a setting brokerlink accepts.";
    case "literal_error":
    case "union_tag_invalid":
    case "enum":
      return "Choose one of the listed options.";
    case "json_invalid":
      return "The form could not be sent — reload the page and try again.";
    default:
      return sentence(String(item.msg || "").replace(/^Value error, /, "")) || "Not valid.";
  }
}

function sentence(text) {
  const s = String(text || "").trim();
  if (!s) return "";
  const first = s[0].toUpperCase() + s.slice(1);
  return /[.!?…]$/.test(first) ? first : `${first}.`;
}
