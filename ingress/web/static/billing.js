// Billing page: card (Stripe Elements with the gateway's SetupIntent), top-up, auto-recharge,
// history. Stripe.js loads from js.stripe.com only after /card/setup hands out a publishable
// key, i.e. only when the operator configured Stripe; otherwise the page says cards are off.
"use strict";
(function () {
  const { api, money, el, $, errorOf, toast, showError, busy } = window.SN;
  let stripe = null, cardEl = null;

  function loadStripe() {
    return new Promise((ok, fail) => {
      if (window.Stripe) return ok();
      const s = document.createElement("script");
      s.src = document.querySelector("[data-stripe-js]").dataset.stripeJs; s.onload = ok; s.onerror = () => fail(new Error("Stripe.js could not be loaded"));
      document.head.append(s);
    });
  }
  async function balance() {
    const r = await api("GET", "/balance");
    $("#balance").textContent = r.ok ? money(r.data.balance) : errorOf(r);
  }
  async function card() {
    const r = await api("GET", "/card"), box = $("#card-state");
    box.textContent = "";
    $("#add-card").hidden = true; $("#remove-card").hidden = true;
    if (r.status === 402 || r.status === 501) {
      box.append(el("p", { class: "note", id: "cards-off", text: "Card payments are not set up on this gateway. " + errorOf(r) }));
      $("#topup-form").querySelector("button").disabled = true;
      return;
    }
    if (r.ok) {
      box.append(el("p", { text: `${r.data.brand} •••• ${r.data.last4}, expires ${r.data.exp_month}/${r.data.exp_year}` }));
      $("#remove-card").hidden = false;
    } else { box.append(el("p", { class: "muted", text: "No card on file." })); }
    $("#add-card").hidden = false; $("#add-card").textContent = r.ok ? "Replace card" : "Add card";
  }
  async function startAddCard() {
    showError("#card-error");
    const r = await api("POST", "/card/setup", {});
    if (!r.ok) { showError("#card-error", errorOf(r)); return; }
    try { await loadStripe(); } catch (e) { showError("#card-error", e.message); return; }
    stripe = window.Stripe(r.data.publishable_key);
    const elements = stripe.elements();
    cardEl = elements.create("card"); cardEl.mount("#card-element");
    $("#card-form").hidden = false;
    $("#save-card").onclick = async () => {
      const res = await stripe.confirmCardSetup(r.data.client_secret, { payment_method: { card: cardEl } });
      if (res.error) { showError("#card-error", res.error.message); return; }
      const saved = await api("POST", "/card", { payment_method: res.setupIntent.payment_method });
      if (!saved.ok) { showError("#card-error", errorOf(saved)); return; }
      $("#card-form").hidden = true; toast("Card saved"); card();
    };
  }
  async function topup(ev) {
    ev.preventDefault(); showError("#topup-error");
    const f = ev.target, amount = Number(f.elements.amount.value);
    busy(f, true);
    const r = await api("POST", "/topup_card", { uid: document.body.dataset.uid, amount });
    busy(f, false);
    if (r.status === 402 && r.data && r.data.client_secret && stripe) {
      const c = await stripe.confirmCardPayment(r.data.client_secret);
      if (c.error) { showError("#topup-error", c.error.message); return; }
      toast("Payment confirmed; your balance updates when Stripe reports it"); return refresh();
    }
    if (!r.ok) { showError("#topup-error", errorOf(r)); return; }
    toast(`Topped up ${money(r.data.amount)}`); refresh();
  }
  async function threshold() {
    const r = await api("GET", "/billing-threshold");
    if (!r.ok) return;
    $("#th-amount").value = r.data.threshold; $("#th-below").value = r.data.recharge_below;
    $("#th-enabled").checked = r.data.enabled !== false;
    // Why it will not (or stopped) recharging: said next to the switch, in the API's words.
    const why = r.data.disabled_reason ? `Auto-recharge switched itself off: ${r.data.disabled_reason}`
      : r.data.card_on_file === false && r.data.enabled !== false ? "Auto-recharge needs a card on file." : "";
    $("#th-note").textContent = why; $("#th-note").hidden = !why;
  }
  async function saveThreshold(ev) {
    ev.preventDefault(); showError("#threshold-error");
    const body = { threshold: Number($("#th-amount").value), recharge_below: Number($("#th-below").value),
                   enabled: $("#th-enabled").checked };
    const r = await api("POST", "/billing-threshold", body);
    if (!r.ok) { showError("#threshold-error", errorOf(r)); return; }
    toast("Auto-recharge saved"); threshold();
  }
  // Ledger rows, newest first; "Older" follows the API's keyset cursor (next_before).
  let before = null;
  async function history(more) {
    const q = new URLSearchParams({ limit: 20 });
    if (more && before != null) q.set("before", before);
    const r = await api("GET", "/billing-history?" + q), body = $("#history-rows");
    if (!more) body.textContent = "";
    if (!r.ok) { body.append(el("tr", {}, el("td", { colspan: "5", text: errorOf(r) }))); return; }
    const rows = r.data.history || [];
    for (const h of rows) {
      body.append(el("tr", {}, el("td", { text: new Date(h.created_at).toLocaleString() }), el("td", { text: h.kind }),
        el("td", { text: money(h.amount) }), el("td", { text: h.balance_after == null ? "" : money(h.balance_after) }),
        el("td", { class: "prompt", text: h.reason || h.job_id || "" })));
    }
    if (!rows.length && !more) body.append(el("tr", {}, el("td", { colspan: "5", class: "muted", text: "No history yet." })));
    before = r.data.next_before;
    $("#history-more").hidden = before == null;
  }
  function refresh() { balance(); card(); history(false); }
  window.initBilling = function () {
    $("#add-card").onclick = startAddCard;
    $("#remove-card").onclick = async () => { const r = await api("DELETE", "/card"); if (r.ok) { toast("Card removed"); card(); } else showError("#card-error", errorOf(r)); };
    $("#topup-form").addEventListener("submit", topup);
    $("#threshold-form").addEventListener("submit", saveThreshold);
    $("#history-more").onclick = () => history(true);
    balance(); card(); threshold(); history(false);
  };
})();
