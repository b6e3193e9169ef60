// HealthHub surveillance dashboard: a SMART public client (authorization code + PKCE S256) of
// the hub's own OAuth server that reads /stats with a stats.read token and draws the answers with
// Chart.js. No build step; no inline script (the page's Content-Security-Policy forbids it).
// https://hl7.org/fhir/smart-app-launch/app-launch.html  https://www.rfc-editor.org/rfc/rfc7636
"use strict";

(function () {
  const app = document.getElementById("app");
  const cfg = {
    clientId: app.dataset.clientId,
    redirectUri: app.dataset.redirectUri,
    scope: app.dataset.scope,
    base: app.dataset.base,
    minCell: Number(app.dataset.minCell),
    ageGroups: app.dataset.ageGroups.split(","),
  };
  const ICD10 = "http://hl7.org/fhir/sid/icd-10";
  const KEY = "healthhub.dashboard.";
  const charts = {};
  const views = {};  // view name → stats query of the current selection (for CSV downloads)
  const $ = (id) => document.getElementById(id);

  function status(text, isError) {
    $("status").textContent = text;
    $("status").classList.toggle("error", Boolean(isError));
  }

  // -- OAuth: authorization code + PKCE --------------------------------------------------------
  function b64url(bytes) {
    let s = "";
    bytes.forEach((b) => { s += String.fromCharCode(b); });
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function randomString(n) {
    return b64url(crypto.getRandomValues(new Uint8Array(n)));
  }

  async function signIn() {
    const verifier = randomString(48);
    const state = randomString(16);
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
    sessionStorage.setItem(KEY + "verifier", verifier);
    sessionStorage.setItem(KEY + "state", state);
    const q = new URLSearchParams({
      response_type: "code", client_id: cfg.clientId, redirect_uri: cfg.redirectUri, scope: cfg.scope,
      state: state, code_challenge: b64url(new Uint8Array(digest)), code_challenge_method: "S256",
      aud: cfg.base + "/fhir",
    });
    window.location.assign(cfg.base + "/auth/authorize?" + q.toString());
  }

  async function finishSignIn(params) {
    const state = sessionStorage.getItem(KEY + "state");
    const verifier = sessionStorage.getItem(KEY + "verifier");
    sessionStorage.removeItem(KEY + "state");
    sessionStorage.removeItem(KEY + "verifier");
    history.replaceState(null, "", cfg.redirectUri);
    if (!state || params.get("state") !== state || !verifier) {
      throw new Error("The sign-in answer does not belong to this tab; sign in again.");
    }
    const resp = await fetch(cfg.base + "/auth/token", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json" },
      body: new URLSearchParams({
        grant_type: "authorization_code", code: params.get("code"), redirect_uri: cfg.redirectUri,
        client_id: cfg.clientId, code_verifier: verifier,
      }),
    });
    const body = await resp.json();
    if (!resp.ok) {
      throw new Error("Sign-in failed: " + (body.error_description || body.error || resp.status));
    }
    if (!(body.scope || "").split(" ").includes("stats.read")) {
      throw new Error("Your account may not read statistics (the stats.read scope was not granted).");
    }
    sessionStorage.setItem(KEY + "token", body.access_token);
    sessionStorage.setItem(KEY + "expires", String(Date.now() + (body.expires_in || 3600) * 1000 - 30000));
  }

  function token() {
    const t = sessionStorage.getItem(KEY + "token");
    const expires = Number(sessionStorage.getItem(KEY + "expires") || 0);
    return t && Date.now() < expires ? t : null;
  }

  function signOut() {
    ["token", "expires"].forEach((k) => sessionStorage.removeItem(KEY + k));
    showSignIn("Signed out.");
  }

  function showSignIn(message) {
    $("signin").hidden = false;
    $("filters").hidden = true;
    $("views").hidden = true;
    status(message || "");
  }

  // -- /stats ---------------------------------------------------------------------------------
  async function stats(query, accept) {
    const resp = await fetch(cfg.base + "/stats/Condition?" + query, {
      headers: { "Authorization": "Bearer " + token(), "Accept": accept || "application/json" },
    });
    if (resp.status === 401) {
      signOut();
      throw new Error("Your session has ended; sign in again.");
    }
    if (!resp.ok) {
      let why = String(resp.status);
      try { why = (await resp.json()).issue[0].diagnostics; } catch (e) { /* not an OperationOutcome */ }
      throw new Error("The statistics could not be read: " + why);
    }
    return accept === "text/csv" ? resp.blob() : resp.json();
  }

  function cohort() {
    const code = $("condition").value;
    const q = new URLSearchParams();
    q.append("code", ICD10 + "|" + code);
    if ($("from").value) q.append("onset-date", "ge" + $("from").value);
    if ($("to").value) q.append("onset-date", "le" + $("to").value);
    return q;
  }

  function query(groupBy) {
    const q = cohort();
    q.append("_group-by", groupBy);
    return q.toString();
  }

  function cell(count) {
    const td = document.createElement("td");
    td.className = "count";
    if (count === null) {
      td.textContent = "<" + cfg.minCell;
      td.classList.add("suppressed");
      td.title = "suppressed: fewer than " + cfg.minCell + ", or hidden so that such a cell cannot be worked out";
    } else {
      td.textContent = String(count);
    }
    return td;
  }

  function row(tbody, labels, counts) {
    const tr = document.createElement("tr");
    labels.forEach((text) => {
      const td = document.createElement("td");
      td.textContent = text === null ? "unknown" : text;
      tr.appendChild(td);
    });
    counts.forEach((c) => tr.appendChild(cell(c)));
    tbody.appendChild(tr);
  }

  function draw(name, config) {
    if (charts[name]) charts[name].destroy();
    charts[name] = new Chart($(name + "-chart"), config);
  }

  // ISO week labels from first to last, so weeks without a case show as gaps on the curve.
  function isoWeek(d) {
    const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
    const day = t.getUTCDay() || 7;
    t.setUTCDate(t.getUTCDate() + 4 - day);
    const yearStart = new Date(Date.UTC(t.getUTCFullYear(), 0, 1));
    const week = Math.ceil(((t - yearStart) / 86400000 + 1) / 7);
    return t.getUTCFullYear() + "-W" + String(week).padStart(2, "0");
  }

  function weeksBetween(first, last) {
    const out = [];
    const d = new Date(first + "T00:00:00Z");
    for (let i = 0; i < 600; i++) {
      const label = isoWeek(d);
      if (out[out.length - 1] !== label) out.push(label);
      if (label === last) break;
      d.setUTCDate(d.getUTCDate() + 7);
    }
    return out;
  }

  const suppressedMarker = {
    label: "suppressed (fewer than " + cfg.minCell + ", or hidden to protect one)",
    type: "line", showLine: false, pointStyle: "triangle", pointRadius: 7, backgroundColor: "#e08a00",
    borderColor: "#8a4b00",
  };

  async function renderCurve() {
    const q = query("period:week");
    views.curve = q;
    const body = await stats(q);
    const tbody = $("curve-table").querySelector("tbody");
    tbody.textContent = "";
    const byWeek = new Map(body.groups.filter((g) => g.key["period:week"]).map((g) => [g.key["period:week"], g.count]));
    const weeks = [...byWeek.keys()].sort();
    const labels = weeks.length ? weeksBetween(weekMonday(weeks[0]), weeks[weeks.length - 1]) : [];
    labels.forEach((w) => row(tbody, [w], [byWeek.has(w) ? byWeek.get(w) : 0]));
    draw("curve", {
      type: "bar",
      data: {
        labels: labels,
        datasets: [
          { label: "cases", data: labels.map((w) => (byWeek.get(w) ?? 0) || null), backgroundColor: "#1a5fb4" },
          { ...suppressedMarker, data: labels.map((w) => (byWeek.has(w) && byWeek.get(w) === null ? 0 : null)) },
        ],
      },
      options: { maintainAspectRatio: false, animation: false, scales: { y: { beginAtZero: true } } },
    });
    return body;
  }

  function weekMonday(label) {
    // The Monday of ISO week "YYYY-Www" (ISO 8601: week 1 holds 4 January).
    const [y, w] = label.split("-W").map(Number);
    const jan4 = new Date(Date.UTC(y, 0, 4));
    const monday = new Date(jan4);
    monday.setUTCDate(jan4.getUTCDate() - ((jan4.getUTCDay() || 7) - 1) + (w - 1) * 7);
    return monday.toISOString().slice(0, 10);
  }

  async function renderPlaces() {
    const q = query("province,district");
    views.places = q;
    const body = await stats(q);
    const tbody = $("places-table").querySelector("tbody");
    tbody.textContent = "";
    body.groups.forEach((g) => row(tbody, [g.key.province, g.key.district], [g.count]));
    const labels = body.groups.map((g) => (g.key.province || "unknown") + " / " + (g.key.district || "unknown"));
    draw("places", {
      type: "bar",
      data: {
        labels: labels,
        datasets: [
          { label: "cases", data: body.groups.map((g) => g.count), backgroundColor: "#26a269" },
          { ...suppressedMarker, data: body.groups.map((g) => (g.count === null ? 0 : null)) },
        ],
      },
      options: { indexAxis: "y", maintainAspectRatio: false, animation: false },
    });
    return body;
  }

  async function renderPyramid() {
    const q = query("age-group,gender");
    views.pyramid = q;
    const body = await stats(q);
    const count = (band, sex) => {
      const g = body.groups.find((x) => x.key["age-group"] === band && x.key.gender === sex);
      return g === undefined ? 0 : g.count;
    };
    const other = (band) => {
      const rest = body.groups.filter((x) => x.key["age-group"] === band && !["female", "male"].includes(x.key.gender));
      if (rest.some((x) => x.count === null)) return null;
      return rest.reduce((n, x) => n + x.count, 0);
    };
    const tbody = $("pyramid-table").querySelector("tbody");
    tbody.textContent = "";
    cfg.ageGroups.forEach((band) => row(tbody, [band], [count(band, "female"), count(band, "male"), other(band)]));
    const bands = [...cfg.ageGroups].reverse();  // oldest at the top
    draw("pyramid", {
      type: "bar",
      data: {
        labels: bands,
        datasets: [
          { label: "male", data: bands.map((b) => { const n = count(b, "male"); return n === null ? null : -n; }),
            backgroundColor: "#1a5fb4" },
          { label: "female", data: bands.map((b) => count(b, "female")), backgroundColor: "#c64600" },
          { ...suppressedMarker, data: bands.map((b) => (count(b, "male") === null || count(b, "female") === null ? 0 : null)) },
        ],
      },
      options: {
        indexAxis: "y", maintainAspectRatio: false, animation: false,
        scales: { x: { stacked: false, ticks: { callback: (v) => Math.abs(v) } }, y: { stacked: true } },
        plugins: { tooltip: { callbacks: { label: (c) => c.dataset.label + ": " + Math.abs(c.raw) } } },
      },
    });
    return body;
  }

  async function render() {
    status("Loading…");
    try {
      const results = await Promise.all([renderCurve(), renderPlaces(), renderPyramid()]);
      $("views").hidden = false;
      const total = results[0].total;
      status((total === null ? "Fewer than " + cfg.minCell : total) + " case reports of " + $("condition").value +
             " in the period; " + results.reduce((n, r) => n + r.suppressed, 0) + " cells suppressed.");
    } catch (e) {
      status(e.message, true);
    }
  }

  async function download(view) {
    try {
      const blob = await stats(views[view], "text/csv");
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = view + "-" + $("condition").value + ".csv";
      document.body.appendChild(a);
      a.click();
      setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    } catch (e) {
      status(e.message, true);
    }
  }

  async function start() {
    $("signin-button").addEventListener("click", () => { signIn().catch((e) => status(e.message, true)); });
    $("signout").addEventListener("click", signOut);
    $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); render(); });
    document.querySelectorAll("button.csv").forEach((b) => b.addEventListener("click", () => download(b.dataset.view)));
    const params = new URLSearchParams(window.location.search);
    try {
      if (params.get("error")) {
        history.replaceState(null, "", cfg.redirectUri);
        throw new Error("Sign-in refused: " + (params.get("error_description") || params.get("error")));
      }
      if (params.get("code")) await finishSignIn(params);
    } catch (e) {
      showSignIn(e.message);
      $("status").classList.add("error");
      return;
    }
    if (!token()) {
      showSignIn("");
      return;
    }
    $("signin").hidden = true;
    $("who").hidden = false;
    $("who").textContent = "Signed in; this page reads aggregate statistics only.";
    const today = new Date();
    const yearAgo = new Date(today.getTime() - 364 * 86400000);
    $("to").value = today.toISOString().slice(0, 10);
    $("from").value = yearAgo.toISOString().slice(0, 10);
    try {
      const codes = await stats("_group-by=code&_code-system=" + encodeURIComponent(ICD10));
      const select = $("condition");
      select.textContent = "";
      codes.groups.filter((g) => g.key.code).forEach((g) => {
        const code = g.key.code.split("|")[1];
        const option = document.createElement("option");
        option.value = code;
        option.textContent = code + (g.count === null ? "" : " (" + g.count + " reports)");
        select.appendChild(option);
      });
      if (!select.options.length) {
        status("No case reports yet.");
        return;
      }
    } catch (e) {
      status(e.message, true);
      return;
    }
    $("filters").hidden = false;
    await render();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
