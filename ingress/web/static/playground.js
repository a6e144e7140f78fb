// API playground: every endpoint of the reference, its example body with your UID, Send, the
// answer, async jobs polled until done, and the same call as cURL / fetch / requests.
"use strict";
(function () {
  const { api, money, el, $, errorOf, mediaUrls } = window.SN;
  const UID = document.body.dataset.uid;
  const chatBody = { uid: UID, model: "openai/gpt-4o", messages: [
    { role: "system", content: "You are a helpful assistant." },
    { role: "user", content: "Explain quantum computing in 3 sentences." }], max_tokens: 500, temperature: 0.7 };
  const E = [
    { id: "chat", label: "Chat completion (OpenRouter)", method: "POST", path: "/chat-completion", body: chatBody, async: true,
      help: "$0.02 per call. Needs your OpenRouter key (API keys page)." },
    { id: "chatgpt", label: "ChatGPT completion (OpenAI)", method: "POST", path: "/chatgpt-completion", async: true,
      body: { uid: UID, model: "gpt-4o", messages: [{ role: "user", content: "Write a haiku about programming." }], max_tokens: 100, temperature: 0.8 },
      help: "$0.02 per call. Needs your OpenAI key." },
    { id: "generate", label: "Generate an image", method: "POST", path: "/generate",
      body: { uid: UID, model: "adirik/realvisxl-v3.0-turbo", input: { width: 768, height: 768,
        prompt: "A serene mountain landscape at sunset, photorealistic", negative_prompt: "low quality, blurry, sketch",
        num_outputs: 1, guidance_scale: 7, num_inference_steps: 25 } },
      help: "$0.02 per call, async: the job is polled until done. Needs your Replicate key." },
    { id: "video", label: "Generate a video", method: "POST", path: "/generate",
      body: { uid: UID, model: "bytedance/seedance-1-lite", input: { fps: 24, prompt: "A woman walks through a sunlit park",
        duration: 5, resolution: "720p", aspect_ratio: "16:9" } }, help: "$0.02 per call, async. Needs your Replicate key." },
    { id: "faceswap", label: "Face swap", method: "POST", path: "/face-swap/run", files: ["source_image", "target_image"],
      body: { uid: UID, input: { source_image: "BASE64_SOURCE_FACE...", target_image: "BASE64_TARGET_IMAGE...", background_enhance: true } },
      help: "$0.02 per call, async. Pick the two images; they are sent base64-encoded. Needs your Replicate key." },
    { id: "moderate", label: "Moderation (text + image)", method: "POST", path: "/moderate", image: true,
      body: { uid: UID, text: "Hello, this is a test message" },
      help: "$0.01 per call; needs no provider key. Add imageUrl, or pick an image to send it as imageBase64." },
    { id: "status", label: "Prediction status", method: "GET", path: "/prediction-status", query: { job_id: "" },
      help: "Free. The job_id of an async call." },
    { id: "faceswap-status", label: "Face swap status", method: "GET", path: "/face-swap/status", query: { job_id: "" }, help: "Free." },
    { id: "balance", label: "Balance", method: "GET", path: "/balance", query: { uid: UID }, help: "Free." },
    { id: "apikeys", label: "Provider keys (masked)", method: "GET", path: "/api-keys", query: { uid: UID }, help: "Free." },
    { id: "apikeys-set", label: "Store provider keys", method: "POST", path: "/api-keys",
      body: { uid: UID, openrouter_key: "sk-or-v1-your-key-here" }, help: "Free. Keys are stored encrypted." },
    { id: "tasks", label: "List tasks", method: "GET", path: "/tasks", query: { uid: UID, page: "1", size: "10" }, help: "Free." },
    { id: "task", label: "View one task", method: "GET", path: "/tasks/{id}", query: { id: "", uid: UID }, help: "Free." },
    { id: "task-delete", label: "Delete a task", method: "DELETE", path: "/tasks/{id}", query: { id: "", uid: UID }, help: "Free; finished tasks only." },
    { id: "task-cancel", label: "Cancel a media task", method: "POST", path: "/tasks/{id}/cancel", query: { id: "" }, body: {}, help: "Refunds a task the provider has not finished." },
    { id: "history", label: "Billing history", method: "GET", path: "/billing-history", query: { uid: UID }, help: "Free." },
    { id: "threshold", label: "Auto-recharge threshold", method: "GET", path: "/billing-threshold", query: { uid: UID }, help: "Free." },
    { id: "threshold-set", label: "Set auto-recharge threshold", method: "POST", path: "/billing-threshold", body: { uid: UID, threshold: 50 }, help: "Free." },
    { id: "card", label: "Saved card", method: "GET", path: "/card", query: { uid: UID }, help: "Free." },
    { id: "topup", label: "Top up with card", method: "POST", path: "/topup_card", body: { uid: UID, amount: 10 }, help: "Charges your saved card." },
  ];
  let current = E[0], lang = "curl", lastBody = null, lastJob = "";
  const base = document.querySelector(".play").dataset.base;

  function field(label, id, input) { return el("div", { class: "stack" }, el("label", { for: id, text: label }), input); }
  function render() {
    const box = $("#play-fields");
    box.textContent = "";
    $("#endpoint-help").textContent = `${current.method} ${current.path} — ${current.help || ""}`;
    for (const [k, v] of Object.entries(current.query || {})) {
      // The job of the last async call is what a person wants to look up next.
      const value = k === "job_id" && !v ? lastJob : v;
      box.append(field(k, "q-" + k, el("input", { id: "q-" + k, name: k, value, autocomplete: "off" })));
    }
    for (const f of current.files || []) box.append(field(`${f} (image file)`, "file-" + f, el("input", { id: "file-" + f, type: "file", accept: "image/*" })));
    if (current.image) box.append(field("Image file (optional, sent as imageBase64)", "file-image", el("input", { id: "file-image", type: "file", accept: "image/*" })));
    if (current.async) {
      const cb = el("input", { id: "q-async", type: "checkbox" });
      cb.addEventListener("change", code);
      box.append(el("label", { class: "inline", for: "q-async" }, cb, "Answer at once, then poll (Prefer: respond-async)"));
    }
    if (current.body) {
      const ta = el("textarea", { id: "q-body", spellcheck: "false", rows: "12" });
      ta.value = JSON.stringify(current.body, null, 2);
      box.append(field("JSON body", "q-body", ta));
      ta.addEventListener("input", code);
    }
    box.querySelectorAll("input").forEach((i) => i.addEventListener("input", code));
    code();
  }
  function fileB64(input) {
    return new Promise((ok, fail) => {
      const f = input.files[0];
      if (!f) return ok(null);
      const r = new FileReader();
      r.onload = () => ok({ b64: String(r.result).split(",", 2)[1], mime: f.type || "image/png" });
      r.onerror = () => fail(r.error); r.readAsDataURL(f);
    });
  }
  function url() {
    let path = current.path;
    const q = new URLSearchParams();
    for (const k of Object.keys(current.query || {})) {
      const v = $("#q-" + k).value;
      if (path.includes(`{${k}}`)) path = path.replace(`{${k}}`, encodeURIComponent(v)); else if (v) q.set(k, v);
    }
    return path + (String(q) ? "?" + q : "");
  }
  // A path part left empty would call another route ("/tasks/" lists every task): say so instead.
  function missing() { return Object.keys(current.query || {}).find((k) => current.path.includes(`{${k}}`) && !$("#q-" + k).value.trim()); }
  async function body() {
    if (!current.body) return undefined;
    const b = JSON.parse($("#q-body").value);
    for (const f of current.files || []) { const x = await fileB64($("#file-" + f)); if (x) { b.input = b.input || {}; b.input[f] = x.b64; } }
    if (current.image) { const x = await fileB64($("#file-image")); if (x) { b.imageBase64 = x.b64; b.imageMime = x.mime; } }
    return b;
  }
  // Long base64 strings would drown the snippet: they are shortened there, never in the call.
  const short = (b) => JSON.parse(JSON.stringify(b, (k, v) => (typeof v === "string" && v.length > 120 ? v.slice(0, 24) + "…" : v)));
  function code() {
    let b;
    try { b = current.body ? short(lastBody || JSON.parse($("#q-body").value)) : undefined; } catch (e) { b = undefined; }
    lastBody = null;
    const full = base + url(), m = current.method, json = b === undefined ? null : JSON.stringify(b, null, 2);
    const prefer = isAsync();
    let text;
    if (lang === "curl") {
      text = `curl -X ${m} "${full}" \\\n  -H "Authorization: Bearer $SYNCNODE_API_KEY"` +
        (prefer ? ` \\\n  -H "Prefer: respond-async"` : "") +
        (json ? ` \\\n  -H "Content-Type: application/json" \\\n  -d '${json.replace(/'/g, "'\\''")}'` : "");
    } else if (lang === "js") {
      text = `const response = await fetch("${full}", {\n  method: "${m}",\n  headers: {\n    "Authorization": "Bearer " + SYNCNODE_API_KEY` +
        (prefer ? `,\n    "Prefer": "respond-async"` : "") +
        (json ? `,\n    "Content-Type": "application/json"\n  },\n  body: JSON.stringify(${json.replace(/\n/g, "\n  ")})\n});` : "\n  }\n});") +
        "\nconst result = await response.json();\nconsole.log(result);";
    } else {
      // JSON's literals become Python's outside strings only: "is this true?" stays as typed.
      const PY = { true: "True", false: "False", null: "None" };
      const py = json ? json.replace(/"(?:[^"\\]|\\.)*"|\b(true|false|null)\b/g, (m, lit) => (lit ? PY[lit] : m)) : null;
      text = `import os\nimport requests\n\nresponse = requests.${m.toLowerCase()}(\n    "${full}",\n    headers={"Authorization": "Bearer " + os.environ["SYNCNODE_API_KEY"]${prefer ? ', "Prefer": "respond-async"' : ""}},` +
        (py ? `\n    json=${py.replace(/\n/g, "\n    ")},` : "") + "\n)\nprint(response.json())";
    }
    $("#play-code").textContent = text;
  }
  function isAsync() { const c = $("#q-async"); return Boolean(current.async && c && c.checked); }
  async function balance() { const r = await api("GET", "/balance"); if (r.ok) $("#play-balance").textContent = money(r.data.balance); }
  function show(status, data) {
    $("#play-status").textContent = status;
    $("#play-answer").textContent = JSON.stringify(data, null, 2);
    const media = $("#play-media"); media.textContent = "";
    const out = data && (data.output !== undefined ? data.output : data.prediction && data.prediction.output);
    const msg = out && out.choices && out.choices[0] && out.choices[0].message;
    if (msg && typeof msg.content === "string") media.append(el("div", { class: "output-text", id: "play-text", text: msg.content }));
    for (const u of mediaUrls(out || null)) media.append(/\.(mp4|webm|mov)(\?|$)/i.test(u) ? el("video", { src: u, controls: "" }) : el("img", { src: u, alt: "Generated image" }));
  }
  async function send(ev) {
    ev.preventDefault();
    let b;
    const empty = missing();
    if (empty) { show("not sent", { error: `Enter the ${empty} first` }); return; }
    try { b = await body(); } catch (e) { show("invalid JSON", { error: String(e.message || e) }); return; }
    const btn = $("#send"); btn.disabled = true;
    show("sending…", null); $("#play-answer").textContent = "";
    lastBody = b; code();
    const r = await api(current.method, url(), b, isAsync() ? { Prefer: "respond-async" } : undefined);
    show(`HTTP ${r.status}`, r.data);
    // Async jobs (media, Prefer: respond-async): poll until the job is done.
    const job = r.data && r.data.job_id && (r.data.status === "in_progress" || r.status === 202) ? r.data.job_id : null;
    if (job) {
      lastJob = job;
      for (let i = 0; i < 600; i++) {
        await new Promise((ok) => setTimeout(ok, 1000));
        const s = await api("GET", `/prediction-status?job_id=${encodeURIComponent(job)}`);
        show(s.ok ? `${s.data.replicate_status} (polled ${i + 1}×)` : `HTTP ${s.status}`, s.data);
        if (!s.ok || s.data.replicate_status !== "in_progress") break;
      }
    }
    btn.disabled = false; balance();
  }
  document.addEventListener("DOMContentLoaded", () => {
    const sel = $("#endpoint");
    for (const e of E) sel.append(el("option", { value: e.id, text: `${e.label} — ${e.method} ${e.path}` }));
    const want = new URLSearchParams(location.search).get("endpoint");
    if (want && E.find((e) => e.id === want)) { sel.value = want; current = E.find((e) => e.id === want); }
    sel.onchange = () => { current = E.find((e) => e.id === sel.value); render(); };
    document.querySelectorAll("[role=tab]").forEach((t) => t.addEventListener("click", () => {
      lang = t.dataset.lang; document.querySelectorAll("[role=tab]").forEach((x) => x.setAttribute("aria-selected", String(x === t))); code();
    }));
    $("#play-form").addEventListener("submit", send);
    render(); balance();
  });
})();
