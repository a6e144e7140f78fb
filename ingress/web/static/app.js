// SyncNode web UI. Every number and list comes from the JSON API the users call; this file
// only renders it. Requests carry the session cookie and, when they change something, the
// page's CSRF token.
"use strict";
const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const $ = (sel, root) => (root || document).querySelector(sel);
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
};

async function api(method, path, body, extra) {
  const headers = { "X-CSRF-Token": CSRF, ...(extra || {}) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let r;
  try {
    r = await fetch(path, { method, headers, credentials: "same-origin",
                            body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    // No answer at all (the gateway down, the network gone): an error the page shows, not a throw
    // that leaves a button disabled and says nothing.
    return { status: 0, ok: false, data: { error: `The gateway could not be reached (${e.message || e}); try again` } };
  }
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  return { status: r.status, ok: r.ok, data };
}
const errorOf = (res) => (res.data && res.data.error) || `HTTP ${res.status}`;

function money(x) {
  const n = Number(x);
  if (!isFinite(n)) return "–";
  const cents = Math.abs(n * 100 - Math.round(n * 100)) < 1e-7;
  const s = Math.abs(n).toFixed(cents ? 2 : 6).replace(/0+$/, "").replace(/\.(\d)$/, ".$10");
  return (n < 0 ? "-$" : "$") + (cents ? Math.abs(n).toFixed(2) : s);
}
const when = (iso) => iso ? new Date(iso).toLocaleString() : "";
function toast(msg) { const t = $("#toast"); t.textContent = msg; setTimeout(() => { if (t.textContent === msg) t.textContent = ""; }, 4000); }
function badge(status) { return el("span", { class: "badge " + status, text: status.replace("_", " ") }); }
function showError(sel, msg) { const e = $(sel); if (e) e.textContent = msg || ""; }

function busy(form, on) { form.querySelectorAll("button").forEach((b) => { b.disabled = on; }); }
function formJSON(form) { return Object.fromEntries(new FormData(form).entries()); }

// ---- sign-in / sign-up ----
// The server already filters ?next=, but the browser's URL parser is the one that counts:
// anything that does not resolve to this origin goes home instead.
function sameOrigin(next) {
  try {
    const u = new URL(next || "/", location.origin);
    if (u.origin === location.origin) return u.pathname + u.search + u.hash;
  } catch (e) { /* unparsable: fall through */ }
  return "/";
}
function initSignin() {
  for (const [id, err] of [["#signin-form", "#signin-error"], ["#signin-key-form", "#signin-key-error"]]) {
    const f = $(id);
    f.addEventListener("submit", async (ev) => {
      ev.preventDefault(); showError(err); busy(f, true);
      const res = await api("POST", "/ui/signin", formJSON(f));
      busy(f, false);
      if (res.ok) location.assign(sameOrigin(f.dataset.next)); else showError(err, errorOf(res));
    });
  }
}
function initSignup() {
  const f = $("#signup-form");
  if (!f) return;
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault(); showError("#signup-error"); busy(f, true);
    const res = await api("POST", "/ui/signup", formJSON(f));
    busy(f, false);
    if (!res.ok) { showError("#signup-error", errorOf(res)); return; }
    f.hidden = true;
    $("#new-uid").textContent = res.data.uid; $("#new-key").textContent = res.data.api_key;
    $("#new-balance").textContent = money(res.data.balance);
    $("#signup-done").hidden = false;
  });
}

// ---- tasks ----
function taskRow(t) {
  return el("tr", {}, el("td", {}, el("a", { href: `/ui/tasks/${t.id}`, text: `#${t.id}` })),
    el("td", { text: t.kind || "" }), el("td", { class: "prompt", text: t.model || "" }),
    el("td", {}, badge(t.status)), el("td", { text: money(t.cost) }), el("td", { text: when(t.created_at) }));
}
function emptyRow(cols, text) { return el("tr", {}, el("td", { colspan: String(cols), class: "muted", text })); }

async function initHome() {
  const [u, t] = await Promise.all([api("GET", "/usage?days=30"), api("GET", "/tasks?size=8")]);
  if (u.ok) {
    $("#balance").textContent = money(u.data.balance);
    const counts = $("#counts");
    for (const [k, v] of Object.entries(u.data.tasks_by_status)) counts.append(el("li", {}, badge(k)), el("li", { text: String(v) }));
    drawChart(u.data.spend_per_day);
  } else $("#balance").textContent = errorOf(u);
  const body = $("#latest");
  if (t.ok) { t.data.tasks.forEach((x) => body.append(taskRow(x))); if (!t.data.tasks.length) body.append(emptyRow(6, "No tasks yet.")); }
}
function drawChart(days) {
  const total = days.reduce((s, d) => s + d.spend, 0);
  $("#chart-total").textContent = `Total: ${money(total)} over ${days.length} days`;
  const box = $("#chart");
  if (!window.uPlot) { box.textContent = "Chart library failed to load."; return; }
  const xs = days.map((d) => Date.parse(d.date + "T00:00:00Z") / 1000), ys = days.map((d) => d.spend);
  const make = () => {
    box.textContent = "";
    return new uPlot({ width: Math.max(260, box.clientWidth), height: 220, legend: { show: false },
      scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(0.05, hi * 1.2)] } },
      axes: [{}, { values: (u, v) => v.map((n) => "$" + n.toFixed(2)), size: 60 }],
      series: [{}, { label: "Spend", stroke: "#3b5bdb", fill: "rgba(59,91,219,.25)", width: 2, points: { show: false },
                     paths: uPlot.paths.bars({ size: [0.7, 40] }) }] }, [xs, ys], box);
  };
  let plot = make();
  window.addEventListener("resize", () => plot.setSize({ width: Math.max(260, box.clientWidth), height: 220 }));
}

async function initTasks() {
  const params = new URLSearchParams(location.search);
  const page = Number(params.get("page") || 1);
  $("#f-kind").value = params.get("kind") || ""; $("#f-status").value = params.get("status") || "";
  const q = new URLSearchParams({ page, size: 20 });
  for (const k of ["kind", "status"]) if (params.get(k)) q.set(k, params.get(k));
  const res = await api("GET", "/tasks?" + q);
  const body = $("#task-rows");
  if (!res.ok) { body.append(emptyRow(6, errorOf(res))); return; }
  res.data.tasks.forEach((t) => body.append(taskRow(t)));
  if (!res.data.tasks.length) body.append(emptyRow(6, "No tasks match."));
  const pages = Math.max(1, Math.ceil(res.data.total / res.data.size));
  $("#pageinfo").textContent = `Page ${page} of ${pages} · ${res.data.total} tasks`;
  const go = (p) => { params.set("page", p); location.search = params; };
  $("#prev").disabled = page <= 1; $("#next").disabled = page >= pages;
  $("#prev").onclick = () => go(page - 1); $("#next").onclick = () => go(page + 1);
  $("#task-filter").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new URLSearchParams();
    for (const k of ["kind", "status"]) if ($("#f-" + k).value) f.set(k, $("#f-" + k).value);
    location.search = f;
  });
}

// Files an output names: URLs anywhere in it (Replicate outputs are a URL, a list, or an object).
function mediaUrls(out, acc = []) {
  if (typeof out === "string" && /^(https?:\/\/|\/files\/)/.test(out)) acc.push(out);
  else if (Array.isArray(out)) out.forEach((o) => mediaUrls(o, acc));
  else if (out && typeof out === "object") Object.values(out).forEach((o) => mediaUrls(o, acc));
  return acc;
}
function renderOutput(box, kind, output, status) {
  box.textContent = "";
  // "yet" only while it runs: a failed or canceled task has nothing more to come.
  if (output == null) { box.append(el("p", { class: "muted", text: status === "in_progress" ? "No output yet." : "No output." })); return; }
  const chat = output.choices && output.choices[0] && output.choices[0].message;
  if (chat && typeof chat.content === "string") box.append(el("div", { class: "output-text", text: chat.content }));
  if (kind === "generate" || kind === "face_swap" || !chat) {
    const media = el("div", { class: "media" });
    for (const url of mediaUrls(output)) {
      if (/\.(mp4|webm|mov)(\?|$)/i.test(url)) media.append(el("video", { src: url, controls: "", "aria-label": "Generated video" }));
      else if (/\.(mp3|wav|ogg|flac)(\?|$)/i.test(url)) media.append(el("audio", { src: url, controls: "", "aria-label": "Generated audio" }));
      else media.append(el("a", { href: url }, el("img", { src: url, alt: "Generated image" })));
    }
    if (media.children.length) box.append(media);
  }
  box.append(el("details", {}, el("summary", { text: "Raw output (JSON)" }), el("pre", { class: "json", text: JSON.stringify(output, null, 2) })));
}
async function initTask() {
  const id = $("#task-id").dataset.id;
  const load = async () => {
    const res = await api("GET", `/tasks/${id}`);
    if (!res.ok) { showError("#task-error", errorOf(res)); return null; }
    const t = res.data, meta = $("#task-meta");
    meta.textContent = "";
    const add = (k, v) => meta.append(el("dt", { text: k }), el("dd", {}, v));
    add("Status", badge(t.status)); add("Kind", t.kind); add("Model", t.model || "–");
    add("Cost", money(t.cost)); add("Refunded", t.refunded ? "yes (the charge was returned)" : "no");
    add("Job id", el("code", { class: "wrap", text: t.job_id })); add("Created", when(t.created_at)); add("Updated", when(t.updated_at));
    if (t.error) add("Error", t.error);
    renderOutput($("#task-output"), t.kind, t.output, t.status);
    // Base64 images (face swap) would fill the page: long strings are shortened for display.
    $("#task-request").textContent = JSON.stringify(t.request, (k, v) => (typeof v === "string" && v.length > 200 ? v.slice(0, 60) + `… (${v.length} characters)` : v), 2);
    const running = t.status === "in_progress";
    $("#cancel-task").hidden = !(running && (t.kind === "generate" || t.kind === "face_swap"));
    $("#delete-task").hidden = running;
    return t;
  };
  $("#cancel-task").onclick = async () => {
    const res = await api("POST", `/tasks/${id}/cancel`, {});
    if (!res.ok) showError("#task-error", errorOf(res)); else await load();
  };
  $("#delete-task").onclick = async () => {
    if (!confirm("Delete this task from your list?")) return;
    const res = await api("DELETE", `/tasks/${id}`);
    if (!res.ok) showError("#task-error", errorOf(res)); else location.assign("/ui/tasks");
  };
  let t = await load();
  // Live status while queued or running: re-read until it finishes.
  while (t && t.status === "in_progress") { await new Promise((r) => setTimeout(r, 1000)); t = await load(); }
}

// ---- keys ----
async function initKeys() {
  const loadKeys = async () => {
    const res = await api("GET", "/keys"), body = $("#key-rows");
    body.textContent = "";
    if (!res.ok) { body.append(emptyRow(4, errorOf(res))); return; }
    for (const k of res.data.keys) {
      const revoke = el("button", { type: "button", class: "danger", "aria-label": `Revoke key ${k.prefix}`, text: "Revoke" });
      revoke.onclick = async () => {
        // Undoable by no one: a program using this key stops working at once.
        if (!confirm(`Revoke key ${k.prefix}…? Anything using it stops working at once.`)) return;
        const r = await api("DELETE", `/keys/${encodeURIComponent(k.prefix)}`);
        if (r.ok) { toast(`Key ${k.prefix}… revoked`); loadKeys(); } else toast(errorOf(r));
      };
      body.append(el("tr", {}, el("td", {}, el("code", { text: k.prefix + "…" })), el("td", { text: when(k.created_at) }),
        el("td", {}, k.active ? badge("completed") : badge("canceled")), el("td", {}, k.active ? revoke : "")));
      const st = body.lastChild.children[2].firstChild; st.textContent = k.active ? "active" : "revoked";
    }
  };
  $("#new-key-btn").onclick = async () => {
    const res = await api("POST", "/keys", {});
    if (!res.ok) { toast(errorOf(res)); return; }
    $("#new-key").textContent = res.data.api_key; $("#new-key-box").hidden = false; loadKeys();
  };
  const loadProvider = async () => {
    const res = await api("GET", "/api-keys");
    if (res.ok) for (const [k, v] of Object.entries(res.data)) { const m = $("#masked-" + k); if (m) m.textContent = v || "none"; }
  };
  const pf = $("#provider-form");
  pf.addEventListener("submit", async (ev) => {
    ev.preventDefault(); showError("#provider-error");
    const body = {};
    for (const name of ["openrouter_key", "chatgpt_key", "replicate_key", "huggingface_key"]) {
      const v = pf.elements[name].value.trim();
      if (pf.elements["remove-" + name].checked) body[name] = null; else if (v) body[name] = v;
    }
    if (!Object.keys(body).length) { showError("#provider-error", "Enter a key to save (or tick remove)."); return; }
    busy(pf, true); const res = await api("POST", "/api-keys", body); busy(pf, false);
    if (!res.ok) { showError("#provider-error", errorOf(res)); return; }
    pf.reset(); toast("Provider keys saved"); loadProvider();
  });
  initStorage();
  await Promise.all([loadKeys(), loadProvider()]);
}
async function initStorage() {
  const f = $("#storage-form"), sel = $("#st-provider");
  const show = () => f.querySelectorAll("fieldset").forEach((fs) => { fs.hidden = fs.dataset.for !== sel.value; });
  sel.onchange = show;
  const cur = await api("GET", "/storage");
  if (cur.ok) {
    sel.value = cur.data.provider; show();
    $("#st-current").textContent = Object.entries(cur.data).map(([k, v]) => `${k}: ${v}`).join(" · ");
    for (const [k, v] of Object.entries(cur.data)) { const i = f.querySelector(`fieldset[data-for="${cur.data.provider}"] [name="${k}"]`); if (i && i.type !== "password") i.value = v || ""; }
  }
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault(); showError("#storage-error");
    const body = { provider: sel.value };
    if (sel.value !== "default") f.querySelectorAll(`fieldset[data-for="${sel.value}"] input`).forEach((i) => { if (i.value) body[i.name] = i.value; });
    busy(f, true); const res = await api("POST", "/storage", body); busy(f, false);
    if (!res.ok) { showError("#storage-error", errorOf(res)); return; }
    toast("Storage saved"); $("#st-current").textContent = Object.entries(res.data).map(([k, v]) => `${k}: ${v}`).join(" · ");
  });
}

// ---- docs ----
async function initDocs() {
  const r = await fetch("/openapi.json"); const spec = await r.json();
  const toc = $("#docs-toc"), body = $("#docs-body");
  toc.append(el("h2", { text: `${spec.info.title} ${spec.info.version || ""}` }));
  const list = el("ul", {}); toc.append(list);
  let n = 0;
  for (const [path, ops] of Object.entries(spec.paths || {})) {
    for (const [method, op] of Object.entries(ops)) {
      if (typeof op !== "object" || !op) continue;
      const id = "op-" + (n++);
      list.append(el("li", {}, el("a", { href: "#" + id }, el("span", { class: "method " + method, text: method.toUpperCase() }), path)));
      const sec = el("section", { class: "card docs-op", id });
      sec.append(el("h3", {}, el("span", { class: "method " + method, text: method.toUpperCase() }), path));
      if (op.summary) sec.append(el("p", { text: op.summary }));
      if (op.description) sec.append(el("p", { class: "muted", text: op.description }));
      const params = (op.parameters || []).map((p) => `${p.name} (${p.in}${p.required ? ", required" : ""})${p.description ? ": " + p.description : ""}`);
      if (params.length) sec.append(el("h4", { text: "Parameters" }), el("ul", {}, ...params.map((t) => el("li", { text: t }))));
      const rb = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
      if (rb) sec.append(el("details", {}, el("summary", { text: "Request body schema" }), el("pre", { class: "json", text: JSON.stringify(resolve(spec, rb.schema), null, 2) })));
      const codes = Object.entries(op.responses || {}).map(([c, v]) => `${c}: ${v.description || ""}`);
      if (codes.length) sec.append(el("h4", { text: "Responses" }), el("ul", {}, ...codes.map((t) => el("li", { text: t }))));
      body.append(sec);
    }
  }
}
function resolve(spec, schema, depth = 0) {
  if (!schema || depth > 6) return schema;
  if (schema.$ref) { const name = schema.$ref.split("/").pop(); return resolve(spec, ((spec.components || {}).schemas || {})[name], depth + 1); }
  if (Array.isArray(schema)) return schema.map((s) => resolve(spec, s, depth + 1));
  if (typeof schema === "object") return Object.fromEntries(Object.entries(schema).map(([k, v]) => [k, resolve(spec, v, depth + 1)]));
  return schema;
}

document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button.copy");
  if (!b) return;
  const text = $(b.dataset.copy).textContent;
  try { await navigator.clipboard.writeText(text); toast("Copied"); } catch (e) { toast("Select the text and copy it"); }
});
document.addEventListener("htmx:afterRequest", (ev) => {
  if (ev.detail.elt.id === "signout") location.assign("/ui/signin");
});

const INIT = { signin: initSignin, signup: initSignup, home: initHome, tasks: initTasks, task: initTask,
               keys: initKeys, docs: initDocs, billing: () => window.initBilling && window.initBilling() };
window.SN = { api, money, el, $, errorOf, toast, badge, mediaUrls, renderOutput, showError, busy };
document.addEventListener("DOMContentLoaded", () => { const f = INIT[document.body.dataset.page]; if (f) f(); });
