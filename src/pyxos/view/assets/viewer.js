// pyxos view: draws one trace (docs/trace-format.md) as a message-sequence diagram.
//
// Theory of operation. The whole file is fetched and parsed once. One pass then
// derives everything the page draws: per message its send row and arrival rows; the
// intervals of faults (partitions, a node down, a node paused) as bands; the indices to
// jump to (values chosen, leader changes, faults, the violation); and every K events a
// snapshot of all nodes' state (role, ballots, accepted and learned slots). Moving the
// cursor to event i restores the snapshot at or below i and replays at most K events,
// so seeking anywhere costs O(K) whatever the trace's length; a step forward applies
// one event. The diagram is a canvas the size of the window over a tall spacer: each
// frame draws only the rows in view and the arrows that cross them (arrows are found
// by binary search on their send row, with the few very long ones kept apart), so a
// trace of 100,000 events draws as fast as one of 100.
"use strict";

(function () {
  const ROW = 18;          // pixels per diagram row
  const K = 256;           // events between state snapshots
  const LONG = 400;        // arrows spanning more rows than this are checked always
  const REPLICA_GAP = 120;
  const CLIENT_GAP = 64;
  const LEFT = 64;

  const COLORS = {
    Prepare: "#7c3aed", Promise: "#a78bfa",
    Accept: "#2563eb", Accepted: "#60a5fa",
    Commit: "#10b981", ReadAck: "#6ee7b7",
    Nack: "#dc2626",
    PreVote: "#d97706", PreVoteReply: "#f59e0b",
    Decided: "#0891b2", Fetch: "#22d3ee",
    Snapshot: "#db2777", SnapshotRequest: "#f472b6",
    RebuildQuery: "#78716c", RebuildInfo: "#a8a29e",
    ClientRequest: "#64748b", ClientReply: "#94a3b8",
  };
  const FAULT_KINDS = new Set(["crash", "partition", "pause", "corrupt", "wipe-init",
    "fsync-fail", "snapshot-fail", "bridge", "clock"]);

  const $ = (id) => document.getElementById(id);
  const view = {
    ready: false, firstRenderMs: null, stepMs: [], error: null,
    header: null, records: [], cursor: 0,
  };
  window.pyxosView = view;

  // ---------------------------------------------------------------- loading

  async function load() {
    const t0 = performance.now();
    let text;
    try {
      const res = await fetch("/trace.jsonl");
      if (!res.ok) throw new Error(`GET /trace.jsonl: ${res.status}`);
      text = await res.text();
    } catch (e) {
      fail(String(e));
      return;
    }
    const lines = text.split("\n");
    let header;
    try {
      header = JSON.parse(lines[0]);
    } catch (e) {
      fail("the first line is not a trace header");
      return;
    }
    if (header.format !== "pyxos-trace" || !(header.version >= 1 && header.version <= 1)) {
      fail(`not a trace this viewer reads (format ${header.format}, version ${header.version})`);
      return;
    }
    const records = new Array(Math.max(0, lines.length - 1));
    let n = 0;
    for (let i = 1; i < lines.length; i++) {
      if (!lines[i]) continue;
      let record;
      try {
        record = JSON.parse(lines[i]);
      } catch (e) {
        // A node killed mid-write (SIGKILL) leaves its last line cut off: show the rest.
        if (i === lines.length - 1) { view.cutOff = true; break; }
        fail(`line ${i + 1} is not JSON (${e.message})`);
        return;
      }
      records[n++] = record;
    }
    records.length = n;
    view.header = header;
    view.records = records;
    view.parseMs = performance.now() - t0;
    const t1 = performance.now();
    prepare();
    view.prepareMs = performance.now() - t1;
    setup();
    const start = initialCursor();
    seek(start, true);
    scrollTo(start, true);
    view.firstRenderMs = performance.now();
    view.ready = true;
    document.body.dataset.ready = "1";
  }

  function fail(message) {
    view.error = message;
    $("run-info").textContent = "cannot show this trace: " + message;
    document.body.dataset.ready = "error";
  }

  // ---------------------------------------------------------------- deriving

  const D = {};  // derived data

  function nodeOf(r) {
    return r.node !== undefined ? r.node : (r.kind === "call" || r.kind === "return") ? r.client : undefined;
  }

  function prepare() {
    const recs = view.records, h = view.header;
    D.replicas = h.replicas.slice();
    D.clients = (h.clients || []).slice();
    D.msgs = [];           // m -> {s, e, e2, end, src, dst, type}
    D.sends = [];          // m in send order (send rows ascending)
    D.long = [];
    D.choices = []; D.leaders = []; D.faults = []; D.violation = -1;
    D.bands = [];          // {from, to, kind, node?, label}
    D.facts = new Set();
    D.times = new Float64Array(recs.length);
    D.snapshots = [];
    const openDown = {}, role = {};
    let openPartition = null;
    const pauses = [];
    let st = emptyState();
    for (let i = 0; i < recs.length; i++) {
      const r = recs[i];
      D.times[i] = r.t;
      switch (r.kind) {
        case "send": {
          const msg = { s: i, e: -1, e2: -1, end: null, src: r.src, dst: r.dst, type: r.msg.type, m: r.m };
          D.msgs[r.m] = msg; D.sends.push(msg);
          break;
        }
        case "recv": case "drop": case "lost": {
          const msg = D.msgs[r.m];
          if (msg) {
            if (msg.e < 0) { msg.e = i; msg.end = r.kind; } else { msg.e2 = i; msg.end2 = r.kind; }
          }
          break;
        }
        case "chosen": D.choices.push(i); break;
        case "state":
          if (r.role === "leader" && role[r.node] !== "leader") D.leaders.push(i);
          role[r.node] = r.role;
          break;
        case "crash": case "fsync-fail":
          if (openDown[r.node] === undefined) openDown[r.node] = i;
          role[r.node] = "down";
          break;
        case "restart":
          if (openDown[r.node] !== undefined) {
            D.bands.push({ from: openDown[r.node], to: i, kind: "down", node: r.node, label: "down" });
            delete openDown[r.node];
          }
          break;
        case "partition":
          if (openPartition) D.bands.push({ ...openPartition, to: i });
          openPartition = { from: i, kind: "partition", label: "partition " + r.groups.map((g) => "[" + g.join(",") + "]").join(" | ") };
          break;
        case "heal":
          if (openPartition) { D.bands.push({ ...openPartition, to: i }); openPartition = null; }
          break;
        case "pause": pauses.push(r); break;
        case "violation":
          D.violation = i;
          (r.facts || []).forEach((f) => D.facts.add(f));
          break;
      }
      if (FAULT_KINDS.has(r.kind)) D.faults.push(i);
      if (i % K === 0) D.snapshots.push(clone(st));
      apply(st, r, i);
    }
    const end = recs.length;
    for (const node in openDown) D.bands.push({ from: openDown[node], to: end, kind: "down", node: +node, label: "down" });
    if (openPartition) D.bands.push({ ...openPartition, to: end });
    for (const r of pauses) {
      D.bands.push({ from: r.i, to: firstAtOrAfter(r.t + r.duration), kind: "pause", node: r.node, label: "paused" });
    }
    for (const msg of D.sends) {
      const last = Math.max(msg.e, msg.e2);
      if (last >= 0 && last - msg.s > LONG) D.long.push(msg);
    }
    D.leaderSet = new Set(D.leaders);
    D.columns = layoutColumns();
  }

  function firstAtOrAfter(t) {
    let lo = 0, hi = D.times.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (D.times[mid] < t) lo = mid + 1; else hi = mid; }
    return lo;
  }

  // ---------------------------------------------------------------- node state

  // Slots are dense small integers: an array clones in one copy (a Map entry by entry),
  // which keeps the snapshots of a long trace cheap to make.
  class SlotMap {
    constructor(items, size) { this.items = items || []; this.size = size || 0; }
    get(slot) { return this.items[slot]; }
    set(slot, value) {
      if (slot < 0) return;
      if (this.items[slot] === undefined) this.size++;
      this.items[slot] = value;
    }
    clone() { return new SlotMap(this.items.slice(), this.size); }
  }

  function emptyState() {
    const nodes = {};
    for (const id of view.header.replicas) {
      nodes[id] = { id, up: true, role: "follower", ballot: "0.0", leader: 0, promised: "0.0",
        chosen: 0, applied: 0, pausedUntil: -1, rebuilding: false,
        accepted: new SlotMap(), log: new SlotMap(), changed: -1 };
    }
    return { nodes, partition: null, chosen: new SlotMap(), conflicts: new Map(), inflight: 0, maxSlot: -1, t: 0 };
  }

  function clone(st) {
    const nodes = {};
    for (const id in st.nodes) {
      const n = st.nodes[id];
      nodes[id] = { ...n, accepted: n.accepted.clone(), log: n.log.clone() };
    }
    return { ...st, nodes, chosen: st.chosen.clone(), conflicts: new Map(st.conflicts) };
  }

  function apply(st, r, i) {
    st.t = r.t;
    const n = r.node !== undefined ? st.nodes[r.node] : undefined;
    switch (r.kind) {
      case "state":
        if (!n) break;
        n.role = r.role; n.ballot = r.ballot; n.leader = r.leader || 0;
        n.promised = r.promised; n.chosen = r.chosen;
        if (r.applied !== undefined) n.applied = r.applied;
        n.rebuilding = !!r.rebuilding; n.up = true; n.changed = i;
        break;
      case "persist":
        if (!n) break;
        if (r.promised) n.promised = r.promised;
        for (const [slot, ballot, value] of r.accepted || []) {
          n.accepted.set(slot, [ballot, value]);
          if (slot > st.maxSlot) st.maxSlot = slot;
        }
        break;
      case "commit":
        if (!n) break;
        for (const [slot, ballot, value] of r.entries) {
          n.log.set(slot, [ballot, value]);
          if (slot > st.maxSlot) st.maxSlot = slot;
        }
        break;
      case "chosen": {
        const first = st.chosen.get(r.slot);
        if (!first) st.chosen.set(r.slot, [r.ballot, r.value, i]);
        else if (first[1] !== r.value) st.conflicts.set(r.slot, [r.ballot, r.value, i]);
        if (r.slot > st.maxSlot) st.maxSlot = r.slot;
        break;
      }
      case "crash": case "fsync-fail":
        if (n) { n.up = false; n.role = "down"; n.changed = i; }
        break;
      case "corrupt": case "wipe-init":
        if (n) { n.accepted = new SlotMap(); n.changed = i; }
        break;
      case "restart":
        if (n) { n.up = true; n.role = "follower"; n.changed = i; }
        break;
      case "pause":
        if (n) { n.pausedUntil = r.t + r.duration; n.changed = i; }
        break;
      case "partition": st.partition = r.groups; break;
      case "heal": st.partition = null; break;
      case "call": st.inflight++; break;
      case "return": st.inflight--; break;
    }
  }

  let state = null;
  let stateAt = -1;

  function stateAtIndex(i) {
    if (state && i === stateAt + 1) {
      apply(state, view.records[i], i);
      stateAt = i;
      return state;
    }
    if (!(state && i === stateAt)) {
      const k = Math.floor(i / K);
      state = clone(D.snapshots[k]);
      for (let j = k * K; j <= i; j++) apply(state, view.records[j], j);
      stateAt = i;
    }
    return state;
  }

  // ---------------------------------------------------------------- filters and rows

  const filter = { clients: true, heartbeats: true, timers: false };
  let rowOf = null;      // record index -> row (a hidden record maps to the next row)
  let recOfRow = null;   // row -> record index

  function isClient(id) { return id >= 1000 || !D.replicas.includes(id); }

  function visible(r) {
    const k = r.kind;
    if (k === "timer") return filter.timers;
    if (k === "send" || k === "recv" || k === "drop" || k === "lost" || k === "dup") {
      const type = k === "send" ? r.msg.type : (r.type || (D.msgs[r.m] && D.msgs[r.m].type));
      if (!filter.heartbeats && (type === "Commit" || type === "ReadAck")) return false;
      if (!filter.clients && (isClient(r.src) || isClient(r.dst))) return false;
      return true;
    }
    if (k === "call" || k === "return") return filter.clients;
    return true;
  }

  function buildRows() {
    const recs = view.records;
    rowOf = new Int32Array(recs.length + 1);
    const rows = [];
    for (let i = 0; i < recs.length; i++) {
      rowOf[i] = rows.length;
      if (visible(recs[i]) || D.facts.has(i) || i === D.violation) rows.push(i);
    }
    rowOf[recs.length] = rows.length;
    recOfRow = Int32Array.from(rows);
    D.columns = layoutColumns();
    $("spacer").style.height = Math.max(0, recOfRow.length * ROW + 40 - canvasHeight()) + "px";
  }

  function layoutColumns() {
    const cols = new Map();
    let x = LEFT;
    for (const id of D.replicas) { cols.set(id, x); x += REPLICA_GAP; }
    if (filter.clients) {
      x += 10;
      for (const id of D.clients) { cols.set(id, x); x += CLIENT_GAP; }
    }
    D.textX = x - (filter.clients && D.clients.length ? CLIENT_GAP : REPLICA_GAP) + 36;
    return cols;
  }

  // ---------------------------------------------------------------- text

  function label(id) { return isClient(id) ? "c" + id : "n" + id; }
  // What a client operation works on: a KV key, or an application operation's input.
  function opArgs(r) { return r.key !== undefined ? r.key : r.input === null || r.input === undefined ? "" : shown(r.input); }
  function shown(v) { return typeof v === "string" ? v : JSON.stringify(v); }

  function msgText(msg) {
    const f = [];
    if (msg.ballot !== undefined) f.push("b" + msg.ballot);
    switch (msg.type) {
      case "Prepare": f.push("from " + msg.slot); break;
      case "Promise": f.push(msg.accepted.length + " accepted"); break;
      case "Accept": f.push("slot " + msg.slot + (msg.values.length > 1 ? "+" + (msg.values.length - 1) : ""), short(msg.values[0])); break;
      case "Accepted": f.push("slot " + msg.slot + (msg.count > 1 ? "×" + msg.count : "")); break;
      case "Nack": f.push("promised " + msg.promised); break;
      case "Commit": f.push("chosen<" + msg.chosen + (msg.read ? " read " + msg.read : "")); break;
      case "Decided": f.push("slot " + msg.slot + "×" + msg.values.length); break;
      case "Fetch": f.push("[" + msg.slot + "," + msg.end + ")"); break;
      case "PreVoteReply": f.push(msg.granted ? "granted" : "refused"); break;
      case "ClientRequest": f.push("seq " + msg.seq, short(msg.command)); break;
      case "ClientReply": f.push("seq " + msg.seq, msg.ok ? "ok" : "redirect→" + msg.leader); break;
      case "RebuildInfo": f.push("promised " + msg.promised, "last " + msg.last_slot); break;
    }
    return f.join(" ");
  }

  function short(v, n) {
    n = n || 38;
    v = v === null || v === undefined ? "" : String(v);
    return v.length > n ? v.slice(0, n - 1) + "…" : v;
  }

  function describe(r) {
    switch (r.kind) {
      case "send": return `${label(r.src)} → ${label(r.dst)}  ${r.msg.type} ${msgText(r.msg)}`;
      case "recv": return `${label(r.dst)} ← ${label(r.src)}  ${r.type}`;
      case "drop": return `DROP ${label(r.src)} → ${label(r.dst)}  ${r.type}`;
      case "lost": return `LOST ${label(r.src)} → ${label(r.dst)}  ${r.type} (receiver down)`;
      case "dup": return `DUP ${label(r.src)} → ${label(r.dst)}  message #${r.m}`;
      case "timer": return `${label(r.node)} timer`;
      case "state": return `${label(r.node)} ${r.role}  b${r.ballot} promised ${r.promised} chosen<${r.chosen}` + (r.applied !== undefined ? ` applied<${r.applied}` : "");
      case "persist": {
        const parts = [];
        if (r.promised) parts.push("promise " + r.promised);
        if (r.accepted) parts.push("accept " + r.accepted.map((e) => e[0] + "@" + e[1]).join(" "));
        return `${label(r.node)} persist ${parts.join("; ")}`;
      }
      case "commit": return `${label(r.node)} learned ` + r.entries.map((e) => e[0] + ": " + short(e[2], 24)).join(", ");
      case "chosen": return `CHOSEN slot ${r.slot} b${r.ballot}: ${short(r.value, 48)}`;
      case "crash": return `CRASH ${label(r.node)}`;
      case "restart": return `RESTART ${label(r.node)}`;
      case "pause": return `PAUSE ${label(r.node)} for ${(r.duration * 1000).toFixed(0)} ms`;
      case "clock": return `${label(r.node)} clock rate ${r.rate}`;
      case "partition": return "PARTITION " + r.groups.map((g) => "[" + g.join(",") + "]").join(" | ");
      case "heal": return "HEAL";
      case "call": return `${label(r.client)} call ${r.op} ${opArgs(r)}` + (r.value ? "=" + r.value : "");
      case "return": return `${label(r.client)} return ${r.op} ${opArgs(r)} ` + (r.ok === false ? "failed" : r.output !== null && r.output !== undefined ? "→ " + shown(r.output) : "ok");
      case "violation": return `VIOLATION ${r.check}: ${r.detail}`;
      case "truncated": return `TRACE TRUNCATED at ${r.max_bytes} bytes`;
      default: return `${r.kind} ${r.node !== undefined ? label(r.node) : ""}`;
    }
  }

  // ---------------------------------------------------------------- drawing

  const canvas = () => $("diagram");
  function canvasHeight() { return $("diagram-scroll").clientHeight; }

  function sizeCanvas(c, w, h) {
    const dpr = window.devicePixelRatio || 1;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
      c.style.height = h + "px";
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return ctx;
  }

  function drawLanes() {
    const c = $("lanes");
    const w = c.clientWidth;
    const ctx = sizeCanvas(c, w, 30);
    ctx.clearRect(0, 0, w, 30);
    ctx.font = "600 12px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    const st = state;
    for (const [id, x] of D.columns) {
      const n = st && st.nodes[id];
      const leader = n && n.role === "leader";
      ctx.fillStyle = isClient(id) ? "#6b7280" : leader ? "#b45309" : n && !n.up ? "#dc2626" : "#111827";
      ctx.fillText(label(id) + (leader ? " ★" : ""), x, 15);
    }
    ctx.textAlign = "left";
    ctx.fillStyle = "#6b7280";
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillText("event · ms · what happened", D.textX, 15);
  }

  function draw() {
    const scroller = $("diagram-scroll");
    const c = canvas();
    const w = c.clientWidth, h = canvasHeight();
    const ctx = sizeCanvas(c, w, h);
    const top = scroller.scrollTop;
    const firstRow = Math.max(0, Math.floor(top / ROW) - 1);
    const lastRow = Math.min(recOfRow.length - 1, Math.ceil((top + h) / ROW) + 1);
    const y = (row) => row * ROW + ROW / 2 - top;
    const rowY = (rec) => y(rowOf[Math.min(rec, view.records.length)]);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11.5px ui-monospace, 'DejaVu Sans Mono', monospace";
    ctx.textBaseline = "middle";
    if (recOfRow.length === 0) return;
    const firstRec = recOfRow[firstRow], lastRec = recOfRow[lastRow];

    // bands: faults
    for (const b of D.bands) {
      if (b.to < firstRec || b.from > lastRec) continue;
      const y0 = rowY(b.from) - ROW / 2, y1 = rowY(b.to) - ROW / 2;
      if (b.kind === "partition") {
        ctx.fillStyle = "rgba(239, 68, 68, 0.07)";
        ctx.fillRect(0, y0, w, y1 - y0);
        ctx.fillStyle = "rgba(185, 28, 28, 0.8)";
        ctx.fillText(b.label, 4, Math.max(y0 + 9, 9));
      } else {
        const x = D.columns.get(b.node);
        if (x === undefined) continue;
        ctx.fillStyle = b.kind === "down" ? "rgba(107, 114, 128, 0.16)" : "rgba(245, 158, 11, 0.18)";
        ctx.fillRect(x - 22, y0, 44, y1 - y0);
      }
    }
    // the selected row and the facts
    for (let row = firstRow; row <= lastRow; row++) {
      const rec = recOfRow[row];
      if (D.facts.has(rec)) {
        ctx.fillStyle = "rgba(220, 38, 38, 0.16)";
        ctx.fillRect(0, y(row) - ROW / 2, w, ROW);
      } else if (rec === D.violation) {
        ctx.fillStyle = "rgba(220, 38, 38, 0.28)";
        ctx.fillRect(0, y(row) - ROW / 2, w, ROW);
      }
    }
    const cy = y(rowOf[view.cursor]);
    ctx.fillStyle = "rgba(37, 99, 235, 0.13)";
    ctx.fillRect(0, cy - ROW / 2, w, ROW);

    // lifelines
    for (const [id, x] of D.columns) {
      ctx.strokeStyle = isClient(id) ? "#e5e7eb" : "#c7cbd1";
      ctx.lineWidth = isClient(id) ? 1 : 1.5;
      ctx.setLineDash([]);
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, h); ctx.stroke();
    }
    for (const b of D.bands) {
      if (b.kind !== "down" || b.to < firstRec || b.from > lastRec) continue;
      const x = D.columns.get(b.node);
      if (x === undefined) continue;
      ctx.strokeStyle = "#f3f4f6"; ctx.lineWidth = 3;
      ctx.beginPath(); ctx.moveTo(x, rowY(b.from)); ctx.lineTo(x, rowY(b.to)); ctx.stroke();
      ctx.strokeStyle = "#9ca3af"; ctx.lineWidth = 1; ctx.setLineDash([3, 4]);
      ctx.beginPath(); ctx.moveTo(x, rowY(b.from)); ctx.lineTo(x, rowY(b.to)); ctx.stroke();
      ctx.setLineDash([]);
    }

    // arrows: sends in [firstRec - LONG, lastRec], plus the long ones
    const seen = new Set();
    const lo = lowerBound(D.sends, firstRec - LONG);
    for (let k = lo; k < D.sends.length && D.sends[k].s <= lastRec; k++) drawMsg(ctx, D.sends[k], firstRec, rowY, seen);
    for (const msg of D.long) if (msg.s <= lastRec) drawMsg(ctx, msg, firstRec, rowY, seen);

    // markers and text
    ctx.setLineDash([]);
    for (let row = firstRow; row <= lastRow; row++) {
      const rec = recOfRow[row];
      const r = view.records[rec];
      drawMarker(ctx, r, y(row));
      ctx.fillStyle = rec === view.cursor ? "#1d4ed8" : D.facts.has(rec) || r.kind === "violation" ? "#b91c1c" : textColor(r);
      ctx.font = (rec === view.cursor || D.facts.has(rec) || r.kind === "chosen" || FAULT_KINDS.has(r.kind) || r.kind === "violation")
        ? "600 11.5px ui-monospace, 'DejaVu Sans Mono', monospace" : "11.5px ui-monospace, 'DejaVu Sans Mono', monospace";
      const ms = (r.t * 1000).toFixed(2).padStart(8);
      ctx.fillText(String(rec).padStart(6) + ms + "  " + describe(r), D.textX, y(row));
    }
  }

  function textColor(r) {
    switch (r.kind) {
      case "send": return COLORS[r.msg.type] ? shade(r.msg.type) : "#374151";
      case "recv": return "#6b7280";
      case "drop": case "lost": return "#b91c1c";
      case "chosen": return "#047857";
      case "state": return r.role === "leader" ? "#b45309" : "#4b5563";
      case "commit": return "#065f46";
      case "crash": case "partition": case "pause": case "restart": case "heal": return "#9a3412";
      default: return "#4b5563";
    }
  }

  function shade(type) { return COLORS[type] === "#fbbf24" ? "#b45309" : COLORS[type]; }

  function lowerBound(sends, rec) {
    let lo = 0, hi = sends.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (sends[mid].s < rec) lo = mid + 1; else hi = mid; }
    return lo;
  }

  function drawMsg(ctx, msg, firstRec, rowY, seen) {
    if (seen.has(msg.m)) return;
    seen.add(msg.m);
    const x0 = D.columns.get(msg.src), x1 = D.columns.get(msg.dst);
    if (x0 === undefined || x1 === undefined || msg.src === msg.dst) return;
    if (!filter.heartbeats && (msg.type === "Commit" || msg.type === "ReadAck")) return;
    const ends = [[msg.e, msg.end, false]];
    if (msg.e2 >= 0) ends.push([msg.e2, msg.end2, true]);
    const color = COLORS[msg.type] || "#6b7280";
    const y0 = rowY(msg.s);
    for (const [e, kind, dup] of ends) {
      if (e < 0) {
        // no receipt in the trace (still in flight at the end, or its receiver was
        // not traced): a short dotted stub toward the receiver
        const xs = x0 + (x1 - x0) * 0.3, ys = y0 + ROW * 1.5;
        ctx.strokeStyle = color; ctx.lineWidth = 1.2; ctx.setLineDash([2, 3]);
        ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(xs, ys); ctx.stroke();
        ctx.setLineDash([]);
        ctx.beginPath(); ctx.arc(xs, ys, 2.5, 0, 7); ctx.stroke();
        continue;
      }
      if (e < firstRec) continue;
      const y1 = rowY(e);
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.lineWidth = msg.type === "Commit" ? 1 : 1.6;
      ctx.setLineDash(dup ? [5, 3] : []);
      if (kind === "drop") {
        const xm = x0 + (x1 - x0) * 0.55, ym = y0 + (y1 - y0) * 0.55;
        ctx.globalAlpha = 0.75;
        ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(xm, ym); ctx.stroke();
        ctx.globalAlpha = 1;
        cross(ctx, xm, ym, "#dc2626");
        continue;
      }
      ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke();
      ctx.setLineDash([]);
      if (kind === "lost") { cross(ctx, x1, y1, "#6b7280"); continue; }
      if (e >= 0) arrowHead(ctx, x0, y0, x1, y1);
    }
    ctx.setLineDash([]);
  }

  function arrowHead(ctx, x0, y0, x1, y1) {
    const a = Math.atan2(y1 - y0, x1 - x0), s = 7;
    ctx.beginPath();
    ctx.moveTo(x1, y1);
    ctx.lineTo(x1 - s * Math.cos(a - 0.4), y1 - s * Math.sin(a - 0.4));
    ctx.lineTo(x1 - s * Math.cos(a + 0.4), y1 - s * Math.sin(a + 0.4));
    ctx.closePath(); ctx.fill();
  }

  function cross(ctx, x, y, color) {
    ctx.strokeStyle = color; ctx.lineWidth = 2.2; ctx.setLineDash([]);
    ctx.beginPath(); ctx.moveTo(x - 4, y - 4); ctx.lineTo(x + 4, y + 4); ctx.moveTo(x + 4, y - 4); ctx.lineTo(x - 4, y + 4); ctx.stroke();
  }

  function drawMarker(ctx, r, y) {
    const node = nodeOf(r);
    let x = node !== undefined ? D.columns.get(node) : undefined;
    switch (r.kind) {
      case "send": {
        const sx = D.columns.get(r.src);
        if (sx === undefined) return;
        ctx.fillStyle = COLORS[r.msg.type] || "#6b7280";
        ctx.beginPath(); ctx.arc(sx, y, r.src === r.dst ? 2 : 3, 0, 7); ctx.fill();
        return;
      }
      case "chosen": {
        ctx.fillStyle = D.facts.has(r.i) ? "#dc2626" : "#059669";
        star(ctx, LEFT - 40, y, 6);
        return;
      }
      case "partition": case "heal": case "violation": {
        ctx.fillStyle = r.kind === "heal" ? "#059669" : "#dc2626";
        ctx.fillRect(LEFT - 46, y - 5, 10, 10);
        return;
      }
    }
    if (x === undefined) return;
    switch (r.kind) {
      case "state":
        if (r.role === "leader" && D.leaderSet.has(r.i)) {
          ctx.fillStyle = "#f59e0b"; ctx.strokeStyle = "#b45309"; ctx.lineWidth = 1;
          ctx.beginPath(); ctx.arc(x, y, 6, 0, 7); ctx.fill(); ctx.stroke();
        } else {
          ctx.strokeStyle = r.role === "leader" ? "#f59e0b" : r.role === "follower" ? "#9ca3af" : "#7c3aed"; ctx.lineWidth = 1.5;
          ctx.beginPath(); ctx.arc(x, y, 4, 0, 7); ctx.stroke();
        }
        return;
      case "persist":
        ctx.fillStyle = "#1e3a8a"; ctx.fillRect(x - 3, y - 3, 6, 6); return;
      case "commit":
        ctx.fillStyle = D.facts.has(r.i) ? "#dc2626" : "#10b981"; ctx.fillRect(x - 4, y - 4, 8, 8); return;
      case "crash": case "fsync-fail": cross(ctx, x, y, "#dc2626"); return;
      case "restart":
        ctx.fillStyle = "#16a34a"; ctx.beginPath(); ctx.moveTo(x - 5, y + 4); ctx.lineTo(x + 5, y + 4); ctx.lineTo(x, y - 5); ctx.closePath(); ctx.fill(); return;
      case "timer":
        ctx.strokeStyle = "#9ca3af"; ctx.lineWidth = 1; ctx.beginPath(); ctx.arc(x, y, 4, 0, 7); ctx.moveTo(x, y); ctx.lineTo(x, y - 3); ctx.stroke(); return;
      case "call": case "return":
        ctx.fillStyle = "#475569"; ctx.beginPath(); ctx.arc(x, y, 3, 0, 7); ctx.fill(); return;
      default:
        ctx.fillStyle = "#b45309"; ctx.fillRect(x - 3, y - 3, 6, 6);
    }
  }

  function star(ctx, x, y, r) {
    ctx.beginPath();
    for (let k = 0; k < 10; k++) {
      const a = -Math.PI / 2 + k * Math.PI / 5, rr = k % 2 ? r * 0.45 : r;
      ctx.lineTo(x + rr * Math.cos(a), y + rr * Math.sin(a));
    }
    ctx.closePath(); ctx.fill();
  }

  // ---------------------------------------------------------------- side panel

  function esc(s) {
    return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
  }

  function renderSide() {
    const st = state, i = view.cursor, r = view.records[i];
    $("at-time").textContent = `at ${(r.t * 1000).toFixed(3)} ms`;
    let html = "";
    for (const id of D.replicas) {
      const n = st.nodes[id];
      const paused = n.up && n.pausedUntil > r.t;
      const cls = ["node-card", n.up ? n.role : "down", paused ? "paused" : "", n.changed === i ? "changed" : ""].join(" ");
      html += `<div class="${cls}" data-node="${id}"><div class="name"><span>n${id}</span><span class="role">${esc(n.up ? n.role : "down")}${n.rebuilding ? " (rebuilding)" : ""}</span></div>` +
        `<dl><dt>ballot</dt><dd class="ballot">${esc(n.ballot)}</dd><dt>promised</dt><dd class="promised">${esc(n.promised)}</dd>` +
        `<dt>leader</dt><dd class="leader">${n.leader ? "n" + n.leader : "–"}</dd>` +
        `<dt>chosen &lt;</dt><dd class="chosen">${n.chosen}</dd><dt>applied &lt;</dt><dd class="applied">${n.applied}</dd>` +
        `<dt>accepted</dt><dd>${n.accepted.size} slots</dd></dl></div>`;
    }
    $("nodes").innerHTML = html;
    renderLogs(st, r);
    const facts = D.facts.has(i);
    $("event-summary").textContent = `#${i}  ` + (r.kind === "violation" ? `VIOLATION ${r.check}: ${factsText(r) || r.detail}` : describe(r));
    $("event-summary").className = "event-summary" + (facts || r.kind === "violation" ? " fact" : "");
    let detail = r;
    if ((r.kind === "recv" || r.kind === "drop" || r.kind === "lost" || r.kind === "dup") && D.msgs[r.m]) {
      detail = { ...r, sent_at: D.msgs[r.m].s, msg: view.records[D.msgs[r.m].s].msg };
    }
    $("event-detail").textContent = JSON.stringify(detail, null, 1);
  }

  function focusSlot(r) {
    if (r.kind === "chosen") return r.slot;
    if (r.kind === "commit") return r.entries[0][0];
    if (r.kind === "persist" && r.accepted) return r.accepted[0][0];
    if (r.kind === "send" && r.msg.slot !== undefined && (r.msg.type === "Accept" || r.msg.type === "Accepted")) return r.msg.slot;
    if (r.kind === "violation" && r.facts && r.facts.length) return focusSlot(view.records[r.facts[0]]);
    return null;
  }

  function renderLogs(st, r) {
    const width = 13;
    const focus = focusSlot(r);
    const top = Math.max(st.maxSlot, 0);
    let from = focus !== null ? Math.max(0, focus - Math.floor(width / 2)) : Math.max(0, top - width + 1);
    from = Math.max(0, Math.min(from, Math.max(0, top - width + 1)));
    const slots = [];
    for (let s = from; s < from + width; s++) slots.push(s);
    let html = `<div class="log-row slot-head"><span class="who">slot</span>` + slots.map((s) => `<span class="cell">${s}</span>`).join("") + `</div>`;
    html += `<div class="log-row" data-row="chosen"><span class="who">chosen</span>`;
    for (const s of slots) {
      const c = st.chosen.get(s), bad = st.conflicts.get(s);
      const cls = ["cell", c ? "chosen" : "", bad ? "conflict" : "", s === focus ? "focus" : ""].join(" ");
      const title = c ? `slot ${s}: chosen in ${c[0]}: ${c[1]}` + (bad ? `\nand in ${bad[0]}: ${bad[1]}` : "") : `slot ${s}`;
      html += `<span class="${cls}" data-slot="${s}" title="${esc(title)}">${c ? esc(c[0]) : ""}</span>`;
    }
    html += `</div>`;
    for (const id of D.replicas) {
      const n = st.nodes[id];
      html += `<div class="log-row" data-node="${id}"><span class="who">node ${id}</span>`;
      for (const s of slots) {
        const acc = n.accepted.get(s), learned = n.log.get(s);
        let cls = "cell", text = "", title = `node ${id} slot ${s}`;
        if (learned) {
          cls += s < n.applied ? " applied" : " committed";
          text = acc ? acc[0] : "✓"; title += `: learned ${learned[1]} (ballot ${learned[0]})`;
          if (learned[1] === "no-op") cls += " noop";
        } else if (acc) {
          cls += " accepted"; text = acc[0]; title += `: accepted ${acc[1]} in ${acc[0]}`;
        }
        const c = st.chosen.get(s);
        const bad = st.conflicts.get(s);
        if (bad && ((learned && learned[1]) || (acc && acc[1]))) cls += " conflict";
        else if (c && learned && learned[1] !== c[1]) cls += " conflict";
        if (s === focus) cls += " focus";
        html += `<span class="${cls}" data-slot="${s}" title="${esc(title)}">${esc(text)}</span>`;
      }
      html += `</div>`;
    }
    $("logs").innerHTML = html;
  }

  // ---------------------------------------------------------------- navigation

  function seek(i, force) {
    const t0 = performance.now();
    const n = view.records.length;
    if (n === 0) return;
    i = Math.max(0, Math.min(n - 1, i));
    if (i === view.cursor && !force && state) return;
    view.cursor = i;
    stateAtIndex(i);
    $("slider").value = String(i);
    const r = view.records[i];
    $("position").innerHTML = `event <b id="cursor-index">${i}</b> of ${n - 1} · <b>${(r.t * 1000).toFixed(3)}</b> ms`;
    renderSide();
    ensureVisible(i);
    draw();
    drawLanes();
    if (history.replaceState) history.replaceState(null, "", "#e=" + i);
    view.stepMs.push(performance.now() - t0);
    if (view.stepMs.length > 1000) view.stepMs.shift();
  }

  function ensureVisible(i) {
    const scroller = $("diagram-scroll");
    const yy = rowOf[i] * ROW, h = canvasHeight();
    if (yy < scroller.scrollTop + ROW || yy > scroller.scrollTop + h - 3 * ROW) {
      scroller.scrollTop = Math.max(0, yy - h / 3);
    }
  }

  function scrollTo(i) {
    const scroller = $("diagram-scroll");
    scroller.scrollTop = Math.max(0, rowOf[i] * ROW - canvasHeight() / 3);
    draw();
  }

  function next(list, from) {
    for (const i of list) if (i > from) return i;
    return -1;
  }
  function prev(list, from) {
    let found = -1;
    for (const i of list) { if (i >= from) break; found = i; }
    return found;
  }
  function jump(i) { if (i >= 0) seek(i); }

  function initialCursor() {
    const m = /e=(\d+)/.exec(location.hash);
    if (m) return +m[1];
    if (D.violation >= 0) return D.violation;
    return 0;
  }

  let timer = null;
  function play(on) {
    if (on === undefined) on = timer === null;
    if (timer !== null) { clearInterval(timer); timer = null; }
    $("play").textContent = on ? "❚❚" : "▶";
    if (!on) return;
    const rate = +$("speed").value;
    const every = Math.max(10, 1000 / rate);
    const per = Math.max(1, Math.round(rate * every / 1000));
    timer = setInterval(() => {
      if (view.cursor >= view.records.length - 1) { play(false); return; }
      seek(view.cursor + per);
    }, every);
  }

  function factsText(v) {
    const f = (v.facts || []).map((k) => view.records[k]);
    if (f.length !== 2) return null;
    const what = (r) => r.kind === "chosen"
      ? `chosen in ballot ${r.ballot} (event ${r.i}): ${short(r.value, 60)}`
      : `learned by n${r.node} (event ${r.i}): ${short((r.entries.find((e) => e[0] === slotOf(r, f)) || r.entries[0])[2], 60)}`;
    return `slot ${slotOf(f[0], f)}: ${what(f[0])}  —  but ${what(f[1])}`;
  }

  function slotOf(r, f) {
    if (r.kind === "chosen") return r.slot;
    const other = f.find((x) => x !== r && x.kind === "chosen");
    if (other) return other.slot;
    const slots = new Set(f[0].entries.map((e) => e[0]));
    const common = f[1].entries.find((e) => slots.has(e[0]));
    return common ? common[0] : r.entries[0][0];
  }

  function setup() {
    const h = view.header;
    const n = view.records.length;
    const bits = [`<b>${esc(h.source)}</b>`];
    if (h.seed !== null && h.seed !== undefined) bits.push(`seed ${h.seed}`);
    if (h.files) bits.push(esc(h.files.join(", ")));
    bits.push(`${h.replicas.length} nodes`);
    if (h.clients && h.clients.length) bits.push(`${h.clients.length} clients`);
    if (h.faults) bits.push("faults " + (h.faults.length ? h.faults.join(",") : "none"));
    if (h.mutant) bits.push(`mutant <b>${esc(h.mutant)}</b>`);
    bits.push(`${n} events`);
    if (h.replay) bits.push(`<code>${esc(h.replay.replace(/ --trace$/, ""))}</code>`);
    $("run-info").innerHTML = bits.join(" · ");
    if (D.violation >= 0) {
      const v = view.records[D.violation];
      $("banner").hidden = false;
      $("banner-check").textContent = v.check + " violated";
      $("banner-detail").textContent = factsText(v) || v.detail;
      $("to-violation").disabled = false;
    }
    $("slider").max = String(Math.max(0, n - 1));
    $("legend").innerHTML = Object.entries(COLORS).map(([k, c]) => `<span><i style="background:${c}"></i>${k}</span>`).join("") +
      `<span>★ chosen</span><span>■ learned</span><span>● leader</span><span>✕ dropped / lost</span><span>- - duplicate</span><span style="color:#b91c1c">▮ partition</span>`;
    buildRows();

    $("slider").addEventListener("input", (e) => seek(+e.target.value));
    $("first").onclick = () => seek(0);
    $("last").onclick = () => seek(n - 1);
    $("back").onclick = () => seek(view.cursor - 1);
    $("forward").onclick = () => seek(view.cursor + 1);
    $("play").onclick = () => play();
    $("speed").onchange = () => { if (timer !== null) play(true); };
    $("next-leader").onclick = () => jump(next(D.leaders, view.cursor));
    $("prev-leader").onclick = () => jump(prev(D.leaders, view.cursor));
    $("next-choice").onclick = () => jump(next(D.choices, view.cursor));
    $("next-fault").onclick = () => jump(next(D.faults, view.cursor));
    $("to-violation").onclick = () => jump(D.violation);
    $("go-violation").onclick = () => jump(D.violation);
    for (const [id, key] of [["show-clients", "clients"], ["show-heartbeats", "heartbeats"], ["show-timers", "timers"]]) {
      $(id).checked = filter[key];
      $(id).onchange = (e) => { filter[key] = e.target.checked; buildRows(); ensureVisible(view.cursor); draw(); drawLanes(); };
    }
    $("diagram-scroll").addEventListener("scroll", () => requestAnimationFrame(draw), { passive: true });
    $("diagram").addEventListener("click", (e) => {
      const rect = $("diagram").getBoundingClientRect();
      const row = Math.floor((e.clientY - rect.top + $("diagram-scroll").scrollTop) / ROW);
      if (row >= 0 && row < recOfRow.length) seek(recOfRow[row]);
    });
    window.addEventListener("resize", () => { buildRows(); draw(); drawLanes(); });
    window.addEventListener("keydown", (e) => {
      if (e.target && e.target.tagName === "SELECT") return;
      if (e.key === "ArrowRight") { seek(view.cursor + 1); e.preventDefault(); }
      else if (e.key === "ArrowLeft") { seek(view.cursor - 1); e.preventDefault(); }
      else if (e.key === " ") { play(); e.preventDefault(); }
      else if (e.key === "Home") { seek(0); e.preventDefault(); }
      else if (e.key === "End") { seek(n - 1); e.preventDefault(); }
    });
    view.seek = seek;
    view.rows = () => recOfRow.length;
    view.derived = D;
  }

  load();
})();
