// The little JavaScript the pages use: CSRF on API calls, live tables,
// the per-channel waveform, signed links and the admin forms.
"use strict";
const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

async function api(method, url, body) {
  const r = await fetch(url, {
    method, credentials: "same-origin",
    headers: { "content-type": "application/json", "x-csrf-token": csrf() },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data; try { data = JSON.parse(text); } catch { data = text; }
  if (!r.ok) throw new Error((data && data.detail) || r.status);
  return data;
}

function cell(tr, text) { const td = document.createElement("td"); td.textContent = text ?? ""; tr.appendChild(td); }

async function pollLive(table) {
  try {
    const data = await api("GET", table.dataset.poll);
    const body = table.querySelector("tbody");
    body.replaceChildren();
    for (const r of data.recordings) {
      const tr = document.createElement("tr");
      tr.className = "live-call";
      [r.node_id, r.started_at, r.caller, r.callee, r.source, r.id].forEach(v => cell(tr, v));
      body.appendChild(tr);
    }
  } catch (e) { console.warn(e); }
}

async function pollPre(pre) {
  try { pre.textContent = JSON.stringify(await api("GET", pre.dataset.poll), null, 2); }
  catch (e) { pre.textContent = "unavailable: " + e.message; }
}

async function drawWaveform(canvas) {
  try {
    const buf = await (await fetch(canvas.dataset.src, { credentials: "same-origin" })).arrayBuffer();
    const audio = await new (window.OfflineAudioContext || window.AudioContext)(2, 1, 44100).decodeAudioData(buf);
    const g = canvas.getContext("2d"), w = canvas.width, lane = canvas.height / audio.numberOfChannels;
    g.clearRect(0, 0, w, canvas.height);
    for (let ch = 0; ch < audio.numberOfChannels; ch++) {
      const data = audio.getChannelData(ch), step = Math.max(1, Math.floor(data.length / w)), mid = lane * ch + lane / 2;
      g.fillStyle = ch === 0 ? "#1d3557" : "#e76f51";
      for (let x = 0; x < w; x++) {
        let peak = 0;
        for (let i = x * step; i < (x + 1) * step && i < data.length; i++) peak = Math.max(peak, Math.abs(data[i]));
        g.fillRect(x, mid - peak * lane / 2, 1, Math.max(1, peak * lane));
      }
    }
    canvas.dataset.drawn = String(audio.numberOfChannels);
  } catch (e) { canvas.dataset.drawn = "error: " + e.message; }
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live) { pollLive(live); setInterval(() => pollLive(live), 2000); }
  document.querySelectorAll("pre[data-poll]").forEach(pre => {
    pollPre(pre);
    if (!pre.dataset.once) setInterval(() => pollPre(pre), 5000);
  });
  const wave = document.getElementById("waveform");
  if (wave) drawWaveform(wave);
  const link = document.getElementById("make-link");
  if (link) link.addEventListener("click", async () => {
    try {
      const r = await api("POST", `/api/v1/recordings/${link.dataset.id}/links`, { ttl_s: 3600 });
      document.getElementById("link").value = r.url;
    } catch (e) { document.getElementById("link").value = "refused: " + e.message; }
  });
  const form = document.getElementById("user-form");
  if (form) form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const f = new FormData(form), body = { role: f.get("role") };
    const scope = f.get("scope").split(",").map(s => s.trim()).filter(Boolean);
    if (scope.length) body.scope = scope;
    if (f.get("password")) body.password = f.get("password");
    try { await api("PUT", form.dataset.api + encodeURIComponent(f.get("name")), body); location.reload(); }
    catch (e) { document.getElementById("user-result").textContent = e.message; }
  });
  const setting = document.getElementById("setting-form");
  if (setting) setting.addEventListener("submit", async ev => {
    ev.preventDefault();
    const f = new FormData(setting), out = document.getElementById("setting-result");
    try {
      await api("PUT", "/api/v1/settings/" + encodeURIComponent(f.get("key")), { value: JSON.parse(f.get("value")) });
      out.textContent = "saved"; pollPre(document.getElementById("settings"));
    } catch (e) { out.textContent = e.message; }
  });
  document.querySelectorAll("button.post").forEach(b => b.addEventListener("click", async () => {
    const out = b.parentElement.querySelector(".post-result");
    try { out.textContent = JSON.stringify(await api("POST", b.dataset.api, JSON.parse(b.dataset.body))); }
    catch (e) { out.textContent = e.message; }
  }));
});
