// pyxos live cluster page (see pyxos/server/dashboard.py).
//
// One EventSource per member: this node's /v1/events, and every member listed in
// ?members=host:port,... Each event is that member's own summary; the page keeps the
// newest per member, marks a member down when its stream fails or falls silent, and
// derives the cluster's picture: the leader (the highest ballot among members that
// say they lead), the leader changes it has seen, and sparklines of the commit rate
// (the leader's chosen slots per second) and the mean fsync time of the page's node.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const SILENT_MS = 2000;
  const HISTORY = 120;
  const here = location.host;
  const params = new URLSearchParams(location.search);
  const listed = (params.get("members") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const addresses = [here, ...listed.filter((a) => a !== here)];
  const members = new Map();   // address -> {summary, seen, up}
  const elections = [];        // {time, leader, ballot, was}
  const rate = [], fsync = [];
  let lastLeader = null, lastBallot = null;
  let lastChosen = null, lastFsync = null;
  const dash = { updates: 0, elections, members };
  window.pyxosDashboard = dash;

  $("where").textContent = "this page: " + here + (listed.length ? " · members: " + addresses.join(", ") : "");

  function ballotKey(b) {
    const [r, n] = String(b || "0.0").split(".").map(Number);
    return r * 1e6 + n;
  }

  function connect(address) {
    const m = { address, summary: null, seen: 0, up: false, log: [] };
    members.set(address, m);
    const url = address === here ? "/v1/events" : `${location.protocol}//${address}/v1/events`;
    const source = new EventSource(url);
    source.onmessage = (e) => {
      const s = JSON.parse(e.data);
      m.summary = s; m.seen = Date.now(); m.up = true;
      if (address === here) {
        for (const line of s.log || []) m.log.push(line);
        if (m.log.length > 300) m.log.splice(0, m.log.length - 300);
        sample(s);
        if (s.log && s.log.length) renderLog(m);
      }
      dash.updates++;
    };
    source.onerror = () => { m.up = false; };
  }

  function sample(s) {
    const now = s.time;
    if (lastFsync) {
      const dn = s.fsyncs - lastFsync.count, ds = s.fsync_seconds - lastFsync.sum;
      fsync.push(dn > 0 ? (ds / dn) * 1000 : (fsync.length ? fsync[fsync.length - 1] : 0));
      if (fsync.length > HISTORY) fsync.shift();
    }
    lastFsync = { count: s.fsyncs, sum: s.fsync_seconds, time: now };
  }

  function leaderNow() {
    let best = null;
    for (const m of members.values()) {
      const s = m.summary;
      if (!m.up || !s || s.role !== "leader") continue;
      if (!best || ballotKey(s.ballot) > ballotKey(best.ballot)) best = s;
    }
    return best;
  }

  function tick() {
    const now = Date.now();
    for (const m of members.values()) if (m.up && now - m.seen > SILENT_MS) m.up = false;
    const leader = leaderNow();
    if (leader && (leader.node_id !== lastLeader || leader.ballot !== lastBallot)) {
      if (lastLeader === null || leader.node_id !== lastLeader) {
        elections.unshift({ time: new Date(), leader: leader.node_id, ballot: leader.ballot, was: lastLeader });
      }
      lastLeader = leader.node_id; lastBallot = leader.ballot;
    }
    const chosen = Math.max(-1, ...[...members.values()].filter((m) => m.up && m.summary).map((m) => m.summary.first_unchosen || 0));
    if (lastChosen !== null && chosen >= 0) {
      const dt = (now - lastChosen.time) / 1000;
      rate.push(dt > 0 ? Math.max(0, chosen - lastChosen.value) / dt : 0);
      if (rate.length > HISTORY) rate.shift();
    }
    if (chosen >= 0) lastChosen = { value: chosen, time: now };
    render(leader, chosen);
  }

  function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }

  function render(leader, chosen) {
    $("leader").textContent = leader ? "n" + leader.node_id : "none";
    $("leader").className = "big" + (leader ? "" : " none");
    $("ballot").textContent = leader ? leader.ballot : "–";
    $("chosen").textContent = chosen >= 0 ? chosen : "–";
    $("rate").textContent = rate.length ? rate[rate.length - 1].toFixed(0) : "–";
    $("fsync").textContent = fsync.length ? fsync[fsync.length - 1].toFixed(2) : "–";
    spark($("rate-spark"), rate, "#2563eb");
    spark($("fsync-spark"), fsync, "#059669");
    const cards = [...members.values()].sort((a, b) => ((a.summary && a.summary.node_id) || 99) - ((b.summary && b.summary.node_id) || 99));
    $("members").innerHTML = cards.map((m) => {
      const s = m.summary || {};
      const role = m.up ? (s.role || "?") : "down";
      return `<div class="member ${esc(role)}" data-node="${esc(s.node_id || "")}" data-address="${esc(m.address)}">` +
        `<div class="head"><span>node ${esc(s.node_id || "?")}</span><span class="role">${esc(role)}</span></div>` +
        `<dl><dt>address</dt><dd>${esc(m.address)}</dd><dt>state</dt><dd>${esc(s.state || "–")}</dd>` +
        `<dt>ballot</dt><dd>${esc(s.ballot || "–")}</dd><dt>leader</dt><dd>${s.leader ? "n" + esc(s.leader) : "–"}</dd>` +
        `<dt>chosen</dt><dd>${esc(s.first_unchosen ?? "–")}</dd><dt>applied</dt><dd>${esc(s.applied ?? "–")}</dd>` +
        `<dt>elections</dt><dd>${esc(s.elections ?? "–")}</dd></dl></div>`;
    }).join("");
    $("elections").innerHTML = elections.slice(0, 12).map((e) =>
      `<li data-leader="${e.leader}"><span class="t">${e.time.toLocaleTimeString()}</span> n${e.leader} leads (ballot ${esc(e.ballot)})` +
      (e.was !== null ? `, after n${e.was}` : "") + `</li>`).join("");
  }

  function renderLog(m) {
    const pre = $("log");
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = m.log.join("\n");
    if (atBottom) pre.scrollTop = pre.scrollHeight;
    if (m.summary) $("log-node").textContent = "node " + m.summary.node_id;
  }

  function spark(c, data, color) {
    const dpr = window.devicePixelRatio || 1, w = c.clientWidth, h = c.clientHeight;
    if (c.width !== w * dpr) { c.width = w * dpr; c.height = h * dpr; }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    if (data.length < 2) return;
    const max = Math.max(...data, 1e-9);
    ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
    data.forEach((v, i) => {
      const x = (i / (HISTORY - 1)) * w, y = h - 2 - (v / max) * (h - 4);
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
  }

  addresses.forEach(connect);
  setInterval(tick, 250);
})();
