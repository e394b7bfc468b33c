// corral dashboard: the live parts of the server-rendered pages. No build step,
// no dependency: each page's elements say which feed they follow.
const TERMINAL = new Set(["done", "failed", "cancelled"]);
const $ = (sel, el = document) => el.querySelector(sel);

function text(tag, value, cls) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  el.textContent = value;
  return el;
}

function clock(iso) {
  const d = iso ? new Date(iso) : new Date();
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0").slice(0, 1);
}

function seconds(s) {
  if (s < 10) return s.toFixed(1) + "s";
  if (s < 120) return Math.floor(s) + "s";
  if (s < 7200) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  return (s / 3600).toFixed(1) + "h";
}

// -- the jobs table: rows change state, new jobs appear (first page only) ----------

function matches(job, f) {
  if (f.state.length && !f.state.includes(job.state)) return false;
  if (f.provider && job.provider !== f.provider) return false;
  if (f.source && job.source !== f.source) return false;
  if (f.label && !(job.labels || []).includes(f.label)) return false;
  if (f.q) {
    const hay = [job.title, job.command, job.prompt].filter(Boolean).join("\n").toLowerCase();
    if (!hay.includes(f.q.toLowerCase())) return false;
  }
  return true;
}

function fillRow(row, job) {
  const f = (name) => row.querySelector(`[data-f="${name}"]`);
  row.id = "job-" + job.id;
  row.dataset.state = job.state;
  const link = f("link");
  link.href = "/ui/jobs/" + job.id;
  link.textContent = job.id.slice(0, 8);
  const st = f("state");
  st.textContent = job.state;
  st.className = "state s-" + job.state;
  f("what").textContent = (job.title || job.command || job.prompt || "").slice(0, 140);
  f("provider").textContent = job.provider;
  const labels = f("labels");
  labels.replaceChildren(...(job.labels || []).map((l) => text("span", l, "chip")));
  f("source").textContent = job.source;
  f("attempt").textContent = `${job.attempt}/${job.max_attempts}`;
  const created = f("created");
  created.title = job.created_at;
  if (!created.textContent) created.textContent = "now";
  if (job.started_at) {
    const end = job.finished_at ? new Date(job.finished_at) : new Date();
    f("took").textContent = seconds((end - new Date(job.started_at)) / 1000);
  }
  f("cost").textContent = job.cost == null ? "" : "$" + job.cost.toFixed(4);
}

function jobsTable(table) {
  const filters = JSON.parse(table.dataset.filters);
  const live = table.dataset.live === "1";
  const page = Number(table.dataset.page || 50);
  const body = table.tBodies[0];
  const template = $("#row-template");
  const show = (job) => {
    let row = document.getElementById("job-" + job.id);
    if (!row) {
      if (!live || !matches(job, filters)) return;
      row = template.content.firstElementChild.cloneNode(true);
      body.prepend(row);
      $("#no-jobs")?.remove();
      while (body.rows.length > page) body.lastElementChild.remove();
    } else if (row.dataset.state === job.state) {
      fillRow(row, job);
      return;
    }
    fillRow(row, job);
    row.classList.remove("fresh");
    void row.offsetWidth; // restart the highlight
    row.classList.add("fresh");
  };
  const feed = new EventSource("/sse/jobs");
  // On (re)connecting, what changed since the page was rendered: the feed
  // only tells what happens from now on.
  feed.onopen = async () => {
    const q = new URLSearchParams();
    for (const s of filters.state) q.append("state", s);
    for (const k of ["provider", "label", "source", "q"]) if (filters[k]) q.set(k, filters[k]);
    q.set("limit", String(page));
    const resp = await fetch("/jobs?" + q);
    if (!resp.ok) return;
    const { jobs } = await resp.json();
    const shown = new Set([...body.rows].map((r) => r.id));
    for (const job of jobs.reverse()) if (live || shown.has("job-" + job.id)) show(job);
  };
  feed.addEventListener("job", (e) => show(JSON.parse(e.data)));
}

// -- a job's timeline: every event of the job, live; resumes with Last-Event-ID ----

function fold(summary, value) {
  const d = document.createElement("details");
  d.append(text("summary", summary));
  d.append(text("pre", typeof value === "string" ? value : JSON.stringify(value, null, 1)));
  return d;
}

function describe(ev) {
  const p = ev.payload || {};
  switch (ev.type) {
    case "output":
      return { cls: p.stream === "stderr" ? "stderr" : "", body: p.line };
    case "job.state":
      return { cls: "state-change", body: `${p.from || "·"} → ${p.to}` + (p.attempt ? ` (attempt ${p.attempt})` : "") + (p.error ? `: ${p.error}` : "") };
    case "job.routed":
      return { cls: "meta", body: `routed to ${p.provider || "?"}` + (p.reason ? `: ${p.reason}` : "") };
    case "job.question":
      return { cls: "msg", body: "❓ " + p.question + (p.options && p.options.length ? `  [${p.options.join(" / ")}]` : "") };
    case "job.answer":
      return { cls: "state-change", body: p.state === "answered" ? `answer from ${p.by}: ${p.text}` : "no answer: the question timed out" };
    case "agent.init":
      return { cls: "meta", body: `${p.agent || "agent"} started` + (p.model ? ` (${p.model})` : "") };
    case "agent.message":
      return { cls: "msg", body: p.text };
    case "chat.message":
      return { cls: "msg", body: (p.message && p.message.content) || "" };
    case "agent.tool_call":
      return { cls: "tool", node: fold(`⚙ ${p.name || "tool"}`, p.input) };
    case "agent.tool_result":
      return { cls: p.is_error ? "stderr tool" : "tool", node: fold(p.is_error ? "↳ error" : "↳ result", p.content ?? p) };
    case "agent.result":
      return { cls: "meta", body: "result" + (p.cost_usd != null ? ` · $${p.cost_usd}` : "") + (p.is_error ? " (error)" : "") };
    default: {
      const raw = JSON.stringify(p);
      if (raw.length > 160) return { cls: "meta", node: fold(ev.type, p) };
      return { cls: "meta", body: `${ev.type} ${raw === "{}" ? "" : raw}` };
    }
  }
}

function progress(p) {
  const box = $("#progress");
  if (!box) return;
  const total = Number(p.total || 1);
  const done = Number(p.progress ?? p.current ?? (p.percent != null ? (p.percent / 100) * total : 0));
  box.hidden = false;
  const bar = $("progress", box);
  bar.max = total;
  bar.value = done;
  $("span", box).textContent = p.message || `${Math.round((done / total) * 100)}%`;
}

function timeline(list) {
  const status = $("#tl-status");
  const stateEl = $("#job-state");
  const wasTerminal = stateEl?.dataset.terminal === "1";
  const seen = new Set();
  let delta = null; // the chat reply being streamed, piece by piece
  const feed = new EventSource(list.dataset.src);
  feed.onopen = () => { if (status) status.textContent = "live"; };
  feed.onerror = () => { if (status) status.textContent = "reconnecting…"; };
  feed.onmessage = (e) => {
    const ev = JSON.parse(e.data);
    if (ev.seq != null) {
      if (seen.has(ev.seq)) return;
      seen.add(ev.seq);
    }
    if (ev.type === "chat.delta") {
      if (!delta) {
        delta = document.createElement("li");
        delta.className = "msg";
        delta.append(text("time", clock(ev.created_at)), text("span", "", "body"));
        list.append(delta);
      }
      $(".body", delta).textContent += ev.payload.content || "";
      return;
    }
    if (ev.type.endsWith("progress")) progress(ev.payload || {});
    const d = describe(ev);
    const li = document.createElement("li");
    li.className = d.cls || "";
    li.dataset.type = ev.type;
    const body = d.node ? d.node : text("span", d.body ?? "", "body");
    if (d.node) body.classList.add("body");
    li.append(text("time", clock(ev.created_at)), body);
    const stick = list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
    list.append(li);
    if (stick) list.scrollTop = list.scrollHeight;
    if (ev.type === "job.state" && stateEl) {
      const to = ev.payload.to;
      stateEl.dataset.state = to;
      const badge = $(".state", stateEl);
      badge.textContent = to;
      badge.className = "state s-" + to;
      if (TERMINAL.has(to)) {
        feed.close();
        if (status) status.textContent = "ended";
        // The page shows the result, cost and artifacts once the job ended.
        if (!wasTerminal) setTimeout(() => location.reload(), 400);
      }
    }
  };
}

// -- agent daemons: status changes, and a log pane that follows ----------------

function agentStatus() {
  const mark = (name, status, pid) => {
    const cell = $(`#agent-${CSS.escape(name)} [data-f="status"]`);
    const head = $("#log")?.dataset.agent === name ? $("#agent-status") : null;
    for (const el of [cell, head]) {
      if (!el) continue;
      el.textContent = status;
      el.className = "state a-" + status;
    }
    const pidCell = $(`#agent-${CSS.escape(name)} [data-f="pid"]`);
    if (pidCell) pidCell.textContent = pid ?? "";
  };
  // On (re)connecting the feed sends every agent as it is now, then changes.
  const feed = new EventSource("/sse/status");
  feed.addEventListener("agent", (e) => {
    const a = JSON.parse(e.data);
    mark(a.name, a.status, a.pid);
  });
  feed.addEventListener("status", (e) => {
    const c = JSON.parse(e.data);
    mark(c.agent_id, c.new_status, c.pid);
  });
}

function logPane(pane) {
  const MAX = 5000;
  const follow = $("#log-follow");
  const count = $("#log-count");
  let following = true;
  let lines = 0;
  const setFollow = (on) => {
    following = on;
    if (follow) {
      follow.setAttribute("aria-pressed", String(on));
      follow.textContent = on ? "Following" : "Paused — follow";
    }
    if (on) pane.scrollTop = pane.scrollHeight;
  };
  follow?.addEventListener("click", () => setFollow(!following));
  pane.addEventListener("scroll", () => {
    const atEnd = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 4;
    if (atEnd !== following) setFollow(atEnd);
  });
  const feed = new EventSource(pane.dataset.src);
  feed.onmessage = (e) => {
    const x = JSON.parse(e.data);
    const div = document.createElement("div");
    div.dataset.offset = x.offset;
    if (x.stream === "stderr") div.className = "stderr";
    div.append(text("time", clock(typeof x.at === "number" ? new Date(x.at * 1000).toISOString() : x.at)), document.createTextNode(x.line));
    pane.append(div);
    lines += 1;
    if (pane.childElementCount > MAX) pane.firstElementChild.remove();
    if (count) count.textContent = `${lines} lines`;
    if (following) pane.scrollTop = pane.scrollHeight;
  };
}

// -- "Needs you": the count in the navigation follows the open questions --------

const NEEDS_POLL = 10_000; // ms, while the page is visible
function needsCount(link) {
  let shown = +($("#needs-count")?.textContent || 0);
  const check = async () => {
    if (document.hidden) return;
    const resp = await fetch("/questions?limit=1000");
    if (!resp.ok) return;
    const n = (await resp.json()).length;
    if (n === shown) return;
    shown = n;
    let badge = $("#needs-count");
    if (n === 0) badge?.remove();
    else {
      if (!badge) {
        badge = document.createElement("span");
        badge.className = "badge";
        badge.id = "needs-count";
        link.append(" ", badge);
      }
      badge.textContent = String(n);
    }
    // The list itself is out of date: show the questions as they are now.
    // (not while someone is writing an answer there).
    const list = $("#needs-list");
    const writing = list && [...list.querySelectorAll("input, textarea")].some((e) => e.type !== "hidden" && e.value);
    if (list && !writing && !list.contains(document.activeElement)) location.reload();
  };
  setInterval(check, NEEDS_POLL);
  document.addEventListener("visibilitychange", check);
}

// -- forms and keys --------------------------------------------------------------

document.addEventListener("submit", (e) => {
  const msg = e.target.dataset.confirm;
  if (msg && !confirm(msg)) e.preventDefault();
  // A local date and time (datetime-local) goes to the server in UTC.
  for (const local of e.target.querySelectorAll("input[data-utc]")) {
    const utc = e.target.elements[local.dataset.utc];
    if (utc) utc.value = local.value ? new Date(local.value).toISOString() : "";
  }
});

document.addEventListener("keydown", (e) => {
  if (e.target.closest("input, textarea, select") || e.metaKey || e.ctrlKey || e.altKey) return;
  if (e.key === "/") {
    const search = $("[data-key='/']");
    if (search) { e.preventDefault(); search.focus(); }
  } else if (e.key === "n") {
    const submit = $("#submit");
    if (submit) { e.preventDefault(); submit.open = true; $("textarea", submit)?.focus(); }
  } else if (e.key === "g") {
    location.href = "/ui/jobs";
  }
});

const needsLink = $("#needs-link");
if (needsLink) needsCount(needsLink);
const table = $("#jobs");
if (table) jobsTable(table);
const list = $("#timeline");
if (list) timeline(list);
if ($("#agents") || $("#agent-status")) agentStatus();
const pane = $("#log");
if (pane) logPane(pane);
