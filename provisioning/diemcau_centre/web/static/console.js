// Live parts of a page: an element with data-live (its fragment's URL) and data-topic
// (fleet, alerts, box:<id>, command:<id>) is fetched again when /events says that
// something it shows has changed. The HTML is made on the server; this only swaps it in.
"use strict";

function refresh(el) {
  if (el.dataset.busy) { el.dataset.again = "1"; return; }
  el.dataset.busy = "1";
  fetch(el.dataset.live, { credentials: "same-origin" })
    .then((r) => {
      if (r.status === 401) { location.href = "/login"; return null; }
      return r.ok ? r.text() : null;
    })
    .then((html) => { if (html !== null) el.innerHTML = html; })
    .finally(() => {
      delete el.dataset.busy;
      if (el.dataset.again) { delete el.dataset.again; refresh(el); }
    });
}

function concerns(topic, change) {
  if (topic === "fleet") return change.devices.length > 0;
  if (topic === "alerts") return change.alerts;
  if (topic.startsWith("box:")) return change.more || change.devices.includes(topic.slice(4));
  if (topic.startsWith("command:")) return change.commands.includes(topic.slice(8));
  return false;
}

function listen() {
  const status = document.getElementById("live-status");
  if (!status) return;  // not logged in
  const source = new EventSource("/events");
  // Let go of the stream when leaving the page: a browser keeps only a few connections
  // per server, and one a cached page kept open would hold up the next page.
  window.addEventListener("pagehide", () => source.close());
  source.addEventListener("hello", () => {
    status.textContent = "trực tiếp";
    status.className = "live-status on";
  });
  source.addEventListener("change", (ev) => {
    const change = JSON.parse(ev.data);
    document.querySelectorAll("[data-live]").forEach((el) => {
      if (concerns(el.dataset.topic || "fleet", change)) refresh(el);
    });
    status.textContent = "cập nhật lúc " + new Date().toLocaleTimeString("vi-VN");
  });
  source.onerror = () => {
    status.textContent = "mất kết nối, đang thử lại…";
    status.className = "live-status off";
  };
}

// The fleet's filters and pages load in place, without reloading the page.
function filters() {
  const form = document.getElementById("filters");
  const rows = document.getElementById("fleet-rows");
  if (!form || !rows) return;
  const load = (query) => {
    rows.dataset.live = "/fleet?" + query + (query ? "&" : "") + "fragment=1";
    history.replaceState(null, "", "/fleet" + (query ? "?" + query : ""));
    const link = document.getElementById("broadcast-link");
    if (link) link.href = "/broadcast?" + query.replace(/(^|&)page=\d+/, "");
    refresh(rows);
  };
  const query = () => {
    const params = new URLSearchParams();
    new FormData(form).forEach((v, k) => { if (v) params.append(k, v); });
    return params.toString();
  };
  form.addEventListener("submit", (ev) => { ev.preventDefault(); load(query()); });
  form.querySelectorAll("select").forEach((s) => s.addEventListener("change", () => load(query())));
  rows.addEventListener("click", (ev) => {
    const a = ev.target.closest("a.page-link");
    if (!a) return;
    ev.preventDefault();
    load(new URL(a.href).searchParams.toString());
  });
}

document.addEventListener("DOMContentLoaded", () => { listen(); filters(); });
