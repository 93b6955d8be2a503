// Live figures: every 2 s, read queues.json (the rows `throttle status --json` prints) and
// update each cell's data-value and text. Formats as the server does (formatting.py).
(function () {
  "use strict";
  var table = document.getElementById("queues");
  if (!table || !table.dataset.source) { return; }
  var STATES = {  // queue_status.STATE_LABELS
    releasing: "releasing", idle: "idle", paused: "paused",
    outside_window: "outside its window", daily_cap_reached: "daily cap reached",
    waiting_for_hubspot: "waiting for HubSpot"
  };
  function seconds(v) {
    if (v === null || v === undefined) { return "never"; }
    var t = Math.round(v);
    if (t < 60) { return t + " s"; }
    if (t < 3600) { return Math.floor(t / 60) + " min " + (t % 60) + " s"; }
    if (t < 86400) { return Math.floor(t / 3600) + " h " + Math.floor((t % 3600) / 60) + " min"; }
    return Math.floor(t / 86400) + " d " + Math.floor((t % 86400) / 3600) + " h";
  }
  function count(v) { return v === null || v === undefined ? "—" : v.toLocaleString("en-US"); }
  function human(field, q) {
    var v = q[field];
    if (field === "state") { return STATES[v] || v; }
    if (field === "rate") { return v; }
    if (field === "oldest_wait_s") { return q.queued ? seconds(v) : "—"; }
    if (field === "drain_s") { return seconds(v); }
    return count(v);
  }
  function raw(v) { return v === null || v === undefined ? "" : String(v); }
  function update(data) {
    var rows = table.querySelectorAll("tbody tr[data-queue]");
    var byName = {};
    data.queues.forEach(function (q) { byName[q.name] = q; });
    if (table.dataset.scope !== "one" && rows.length !== data.queues.length) {
      window.location.reload();  // a queue came or went: the page lists them anew
      return;
    }
    rows.forEach(function (row) {
      var q = byName[row.dataset.queue];
      if (!q) { return; }
      row.querySelectorAll("td[data-field]").forEach(function (cell) {
        var f = cell.dataset.field;
        cell.dataset.value = raw(q[f]);
        cell.textContent = human(f, q);
      });
    });
    var stamp = document.getElementById("refreshed");
    if (stamp) { stamp.textContent = "last refreshed at " + new Date().toLocaleTimeString(); }
  }
  function poll() {
    fetch(table.dataset.source, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) { update(data); } })
      .catch(function () { /* the next poll tries again */ })
      .finally(function () { window.setTimeout(poll, 2000); });
  }
  window.setTimeout(poll, 2000);
}());
