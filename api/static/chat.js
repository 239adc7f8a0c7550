// Chiffon's chat page: plain ES module, no build step, nothing loaded from elsewhere.
//
// The page only talks to the REST API under /api/v1 with fetch(). A bearer token, when the
// user has entered one, travels in the Authorization header (kept in sessionStorage; no
// cookies). The server refuses state-changing calls from other origins and bodies that are
// not Content-Type: application/json (all a cross-site HTML form can send: docs/auth.md), so
// every POST with a body here says it is JSON. Run output is read from the Server-Sent Events
// endpoint with fetch() streaming — EventSource cannot send headers — and each SSE frame is
// parsed here.
//
// What is on the page:
//   * the conversation: the user's requests, each answered by a proposal card (the YAML that
//     would be committed, explained in plain words) with Confirm / Discard / Modify;
//   * an intent tracker under a committed proposal (or opened from the side list): it waits
//     for the plan, offers Approve / Reject / Modify bound to the plan digest, streams each
//     step's run, offers Abort while one is in flight, and ends on a summary card;
//   * the side list of intents with their conditions, refreshed every few seconds;
//   * #/audit/NAME: the intent's audit trail as a timeline.
// Every element a test needs carries a data-testid.

const API = "/api/v1";
const TOKEN_KEY = "chiffon.token";
const CONVERSATION_KEY = "chiffon.conversation";
const LIST_EVERY_MS = 3000;
const TRACK_EVERY_MS = 1000;
const TRACK_IDLE_MS = 5000;
const COMMIT_GRACE_MS = 15000;
const ROLES = ["viewer", "operator", "approver", "admin"];
const FINISHED = new Set(["successful", "failed", "timeout", "canceled"]);
const CONDITION_TYPES = ["Planned", "Approved", "Scheduled", "Ready"];

// ---------------------------------------------------------------------------------------------
// Small helpers

function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "testid") element.dataset.testid = value;
    else if (key === "class") element.className = value;
    else if (key === "text") element.textContent = value;
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

const $ = (selector, root = document) => root.querySelector(selector);

function plural(count, one, many = `${one}s`) {
  return `${count} ${count === 1 ? one : many}`;
}

/** "about 40 seconds", "about 3 minutes"; null: never run before. */
export function durationWords(seconds, { estimate = true } = {}) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) {
    return estimate ? "unknown — never run before" : "unknown";
  }
  const about = estimate ? "about " : "";
  if (seconds < 1) return estimate ? "under a second" : "less than a second";
  if (seconds < 60) {
    const rounded = seconds < 10 ? Math.round(seconds) : Math.round(seconds / 5) * 5;
    return `${about}${plural(rounded, "second")}`;
  }
  if (seconds < 3600) {
    const minutes = Math.round(seconds / 60);
    return `${about}${plural(minutes, "minute")}`;
  }
  const hours = Math.round((seconds / 3600) * 10) / 10;
  return `${about}${hours} ${hours === 1 ? "hour" : "hours"}`;
}

function sizeWords(mib) {
  if (mib >= 1024) {
    const gib = Math.round((mib / 1024) * 10) / 10;
    return `${gib} GiB`;
  }
  return `${Math.round(mib)} MiB`;
}

/** "1 CPU core, 512 MiB memory" from spec.resources (or the chat preview's resources). */
export function resourceWords(resources) {
  const parts = [];
  const cores = Number(resources?.cpuCores || 0);
  const memory = Number(resources?.memoryMiB || 0);
  const gpu = Number(resources?.gpuMemoryMiB || 0);
  if (cores > 0) parts.push(`${cores} CPU ${cores === 1 ? "core" : "cores"}`);
  if (memory > 0) parts.push(`${sizeWords(memory)} memory`);
  if (gpu > 0) parts.push(`${sizeWords(gpu)} of GPU memory`);
  return parts.length ? parts.join(", ") : "no particular CPU, memory or GPU needs";
}

function driftWords(drift) {
  if (!drift.drifted) return `none at the last check (round ${drift.round})`;
  const changes = drift.changes.map((c) => `${c.task || c.step} on ${c.host || "a host"}`).join("; ");
  const heal = drift.healDigest ? ` — heal waits for approval of ${drift.healDigest.slice(0, 12)}` : "";
  return `${plural(drift.changes.length, "change", "changes")} found: ${changes}${heal}`;
}

function usageWords(used) {
  const parts = [];
  if (used?.cpuSeconds !== null && used?.cpuSeconds !== undefined) {
    parts.push(`${used.cpuSeconds.toFixed(1)} s of CPU time`);
  }
  if (used?.peakMemoryMib !== null && used?.peakMemoryMib !== undefined) {
    parts.push(`at most ${sizeWords(used.peakMemoryMib)} of memory`);
  }
  return parts.join(", ");
}

function riskBadge(risk) {
  const word = risk || "Unknown";
  const meaning = {
    Low: "low risk",
    Medium: "medium risk",
    High: "high risk: it changes running services",
  }[word] || "risk not known";
  return h("span", { class: `risk risk-${word.toLowerCase()}`, testid: "risk", title: meaning }, `${word} risk`);
}

function shortDigest(digest) {
  return digest ? digest.slice(0, 12) : "";
}

function timeWords(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  return when.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

function condition(intent, type) {
  return (intent?.status?.conditions || []).find((c) => c.type === type) || null;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// The API, with the token when there is one

class ApiError extends Error {
  constructor(status, detail, body) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.body = body;
  }
}

const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
  get conversation() {
    return sessionStorage.getItem(CONVERSATION_KEY);
  },
  set conversation(value) {
    if (value) sessionStorage.setItem(CONVERSATION_KEY, value);
  },
  role: null, // null: not known (no whoami), show everything
};

function headers(extra = {}) {
  const all = { Accept: "application/json", ...extra };
  if (session.token) all.Authorization = `Bearer ${session.token}`;
  return all;
}

async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(`${API}${path}`, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text };
  }
  if (!response.ok) {
    const detail = typeof data?.detail === "string" ? data.detail : `${response.status} ${response.statusText}`;
    if (response.status === 401) tokenForm.ask(detail);
    throw new ApiError(response.status, detail, data);
  }
  return data;
}

function problemText(error) {
  if (error instanceof ApiError) {
    if (error.status === 401) return "The server wants an access token: enter it at the top of the page.";
    if (error.status === 403) return `Not allowed: ${error.detail}`;
    return error.detail;
  }
  return `The server could not be reached (${error.message}).`;
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events over fetch()

/** Parse one SSE frame ("id: 3\nevent: output\ndata: {...}"). */
export function parseFrame(frame) {
  const message = { id: null, event: "message", data: "" };
  const data = [];
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") message.id = value;
    else if (field === "event") message.event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length && message.id === null && message.event === "message") return null;
  message.data = data.join("\n");
  return message;
}

/**
 * Follow a run's stream until its `end`; reconnect with Last-Event-ID when the connection drops.
 * onMessage(event, payload, id) is called for every message; returns the `end` payload.
 */
async function followStream(runId, onMessage, signal) {
  let lastId = null;
  let failures = 0;
  while (!signal.aborted) {
    try {
      const extra = { Accept: "text/event-stream" };
      if (lastId !== null) extra["Last-Event-ID"] = lastId;
      const response = await fetch(`${API}/runs/${encodeURIComponent(runId)}/stream`, {
        headers: headers(extra),
        signal,
        cache: "no-store",
      });
      if (response.status === 401) tokenForm.ask("The run's output needs an access token.");
      if (!response.ok || !response.body) throw new ApiError(response.status, `stream answered ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = parseFrame(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!frame) continue;
          if (frame.id !== null) lastId = frame.id;
          let payload = {};
          try {
            payload = frame.data ? JSON.parse(frame.data) : {};
          } catch {
            payload = { message: frame.data };
          }
          failures = 0;
          onMessage(frame.event, payload, frame.id);
          if (frame.event === "end") return payload;
          if (frame.event === "error") throw new ApiError(0, payload.message || "the stream failed");
        }
      }
    } catch (error) {
      if (signal.aborted) return null;
      failures += 1;
      if (error instanceof ApiError && [401, 403, 404].includes(error.status)) throw error;
      if (failures > 30) throw error;
    }
    await sleep(Math.min(5000, 250 * 2 ** Math.min(failures, 4)));
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Token form and who am I

const tokenForm = {
  form: null,
  init() {
    this.form = $('[data-testid="token-form"]');
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $('[data-testid="token-input"]').value.trim();
      if (!value) {
        this.message("Paste a token first.");
        return;
      }
      session.token = value;
      $('[data-testid="token-input"]').value = "";
      this.form.hidden = true;
      this.message("");
      refreshEverything();
    });
    $('[data-testid="token-forget"]').addEventListener("click", () => {
      session.token = "";
      this.ask("Token forgotten.");
    });
  },
  message(text) {
    $('[data-testid="token-message"]').textContent = text;
  },
  ask(detail) {
    if (!this.form) return;
    this.form.hidden = false;
    this.message(session.token ? `That token was refused: ${detail}` : detail || "This server needs a token.");
  },
};

async function loadWhoami() {
  const who = $('[data-testid="whoami"]');
  try {
    const me = await api("/whoami");
    session.role = me.role || null;
    who.textContent = me.authenticated ? `Signed in as ${me.name} (${me.role})` : `Local access (${me.role})`;
    who.hidden = false;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) session.role = null; // older server
    who.hidden = true;
  }
  document.body.dataset.role = session.role || "unknown";
}

function mayApprove() {
  return session.role === null || ROLES.indexOf(session.role) >= ROLES.indexOf("approver");
}

function mayOperate() {
  return session.role === null || ROLES.indexOf(session.role) >= ROLES.indexOf("operator");
}

// ---------------------------------------------------------------------------------------------
// Conversation

const conversation = {
  list: null,
  modifying: null,
  init() {
    this.list = $('[data-testid="conversation"]');
    const form = $('[data-testid="composer"]');
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    $('[data-testid="message-input"]').addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        this.send();
      }
    });
    $('[data-testid="modify-cancel"]').addEventListener("click", () => this.modify(null));
  },
  add(element) {
    this.list.append(element);
    element.scrollIntoView({ block: "nearest" });
    return element;
  },
  say(text, { role = "assistant", testid = "assistant-message", extra = null } = {}) {
    return this.add(h("li", { class: `message ${role}`, testid }, h("p", {}, text), extra));
  },
  modify(name) {
    this.modifying = name;
    const banner = $('[data-testid="modify-banner"]');
    const input = $('[data-testid="message-input"]');
    banner.hidden = !name;
    $('[data-testid="modify-text"]').textContent = name ? `Changing ${name}: say what should be different.` : "";
    input.placeholder = name ? `What should change in ${name}?` : "What should your homelab do?";
    if (name) input.focus();
  },
  async send() {
    const input = $('[data-testid="message-input"]');
    const message = input.value.trim();
    if (!message) return;
    const button = $('[data-testid="send"]');
    const high = $('[data-testid="priority-high"]').checked;
    button.disabled = true;
    this.add(h("li", { class: "message user", testid: "user-message" }, h("p", {}, message)));
    const thinking = this.say("Working out a plan…", { testid: "thinking" });
    try {
      const proposal = await api("/chat", {
        method: "POST",
        body: {
          message,
          conversation: session.conversation,
          intent: this.modifying,
          priority: high ? "High" : null,
        },
      });
      input.value = "";
      this.modify(null);
      session.conversation = proposal.conversation;
      thinking.remove();
      this.add(new ProposalCard(proposal).element);
    } catch (error) {
      thinking.remove();
      this.sayProblem(error);
    } finally {
      button.disabled = false;
    }
  },
  sayProblem(error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
      this.say(
        "This server has no chat yet. Describe the change in an intent file and apply it with " +
          "`chiffonctl apply -f FILE`; it will appear on the right, where you can follow it.",
        { testid: "chat-error" },
      );
      return;
    }
    const errors = error instanceof ApiError ? error.body?.errors || [] : [];
    const details = errors.length
      ? h(
          "ul",
          { class: "problems" },
          errors.map((e) => h("li", {}, typeof e === "string" ? e : e.message || JSON.stringify(e))),
        )
      : null;
    this.say(problemText(error), { testid: "chat-error", extra: details });
  },
  async restore() {
    const id = session.conversation;
    if (!id) return;
    try {
      const history = await api(`/chat/conversations/${encodeURIComponent(id)}`);
      for (const proposal of history.items || []) {
        this.add(h("li", { class: "message user", testid: "user-message" }, h("p", {}, proposal.request)));
        this.add(new ProposalCard(proposal).element);
      }
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) this.sayProblem(error);
    }
  },
};

// ---------------------------------------------------------------------------------------------
// A proposal card: what the chat compiled, before and after it is committed

function stepLine(index, count, name, does, runs, hosts) {
  const where = hosts ? ` on ${hosts}` : "";
  return h(
    "li",
    { class: "step", testid: "plan-step" },
    h("strong", {}, `Step ${index + 1} of ${count} — ${name}`),
    does ? `: ${does}` : "",
    runs ? h("span", { class: "runs" }, ` (runs ${runs}${where})`) : where ? ` (${where.trim()})` : "",
  );
}

function facts(rows) {
  return h(
    "dl",
    { class: "facts" },
    rows.filter(Boolean).flatMap(([term, value, testid]) => [h("dt", {}, term), h("dd", { testid }, value)]),
  );
}

class ProposalCard {
  constructor(proposal) {
    this.proposal = proposal;
    this.element = h("li", { class: "message assistant card proposal", testid: "proposal", dataset: { id: proposal.id } });
    this.render();
  }

  render() {
    const p = this.proposal;
    this.element.replaceChildren();
    this.element.dataset.status = p.status;
    const engine = p.compiler?.engine === "llm" ? `the ${p.compiler.model || "language"} model` : "the offline rules";
    this.element.append(
      h("p", { class: "lead" }, p.action === "modify" ? "Here is the change I would make:" : "Here is what I would set up:"),
    );
    for (const preview of p.preview || []) this.element.append(this.previewBlock(preview));
    if (p.warnings?.length) {
      this.element.append(h("ul", { class: "warnings", testid: "proposal-warnings" }, p.warnings.map((w) => h("li", {}, w))));
    }
    const diffs = (p.intents || []).filter((i) => i.diff);
    if (diffs.length) {
      this.element.append(
        h(
          "details",
          { class: "diff", testid: "proposal-diff", open: true },
          h("summary", {}, "What changes"),
          diffs.map((i) => h("pre", {}, i.diff)),
        ),
      );
    }
    this.element.append(
      h("details", { class: "yaml" }, h("summary", {}, "The intent file that would be committed"), h("pre", { testid: "proposal-yaml" }, p.documents || "")),
      h("p", { class: "hint" }, `Compiled by ${engine}${p.compiler?.reason ? ` (${p.compiler.reason})` : ""}.`),
    );
    const status = h("p", { class: "status", testid: "proposal-status", role: "status" });
    this.statusLine = status;
    this.element.append(status);
    if (p.status === "proposed") {
      this.element.append(this.buttons());
      status.textContent = "Nothing is committed until you confirm.";
    } else if (p.status === "committed") {
      status.textContent = `Committed to the intents repo${p.revision ? ` as ${p.revision.slice(0, 7)}` : ""}.`;
      this.follow();
    } else if (p.status === "discarded") {
      status.textContent = "Discarded: nothing was committed.";
    } else {
      status.textContent = `Status: ${p.status}.`;
    }
  }

  previewBlock(preview) {
    const steps = preview.steps || [];
    const problems = preview.problems || [];
    return h(
      "section",
      { class: "preview", testid: "proposal-intent", dataset: { intent: preview.intent } },
      h("h3", {}, preview.intent, " ", riskBadge(preview.risk)),
      h("p", { testid: "proposal-summary" }, preview.summary || ""),
      h("ul", { class: "steps", testid: "plan-steps" }, steps.map((s, i) => stepLine(i, steps.length, s.name, s.does, s.runs, s.hosts))),
      facts([
        [
          "Takes",
          preview.estimatedSeconds == null && preview.estimateText ? preview.estimateText : durationWords(preview.estimatedSeconds),
          "estimate",
        ],
        ["Needs", resourceWords(preview.resources), "resources"],
        ["Approval", preview.approval === "Auto" ? "runs without waiting for approval" : "waits for your approval", "approval-policy"],
        preview.dependsOn?.length ? ["Waits for", `${preview.dependsOn.join(", ")} to be ready`, "depends-on"] : null,
      ]),
      problems.length ? h("ul", { class: "problems", testid: "proposal-problems" }, problems.map((x) => h("li", {}, x))) : null,
    );
  }

  buttons() {
    const row = h("div", { class: "actions" });
    const disable = (on) => row.querySelectorAll("button").forEach((b) => (b.disabled = on));
    const act = async (verb) => {
      disable(true);
      try {
        this.proposal = await api(`/chat/${encodeURIComponent(this.proposal.id)}/${verb}`, { method: "POST" });
        this.render();
        intentList.refresh();
      } catch (error) {
        this.statusLine.textContent = problemText(error);
        disable(false);
      }
    };
    row.append(
      h("button", { type: "button", class: "primary", testid: "confirm", disabled: !mayOperate(), onclick: () => act("confirm") }, "Confirm"),
      h("button", { type: "button", testid: "discard", onclick: () => act("discard") }, "Discard"),
      h("button", { type: "button", testid: "modify", onclick: () => this.modify() }, "Modify"),
    );
    return row;
  }

  modify() {
    const p = this.proposal;
    const existing = (p.intents || []).find((i) => i.action === "modify");
    if (existing) {
      conversation.modify(existing.name);
    } else {
      const input = $('[data-testid="message-input"]');
      input.value = p.request || "";
      input.focus();
    }
    this.statusLine.textContent = "Edit the request below and send it again.";
  }

  follow() {
    for (const item of this.proposal.intents || []) {
      const tracker = new IntentTracker(item.name, { revision: this.proposal.revision });
      this.element.append(tracker.element);
      tracker.start();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// An intent tracker: plan → approval → runs → summary

const trackers = new Map(); // intent name -> the trackers showing it

class IntentTracker {
  constructor(name, { revision = null } = {}) {
    this.name = name;
    this.revision = revision;
    this.since = Date.now();
    this.digest = null;
    this.runs = new Map(); // run id -> RunView
    this.summaryKey = null;
    this.stopped = false;
    this.wake = null;
    this.element = h("section", { class: "tracker", testid: "tracker", dataset: { intent: name }, "aria-label": `Progress of ${name}` });
    this.stateLine = h("p", { class: "state", testid: "tracker-state", role: "status" }, "Waiting for Chiffon to read the change…");
    this.planBox = h("div", { class: "plan", testid: "tracker-plan" });
    this.approvalBox = h("div", { class: "approval", testid: "approval" });
    this.runsBox = h("div", { class: "runs-box", testid: "runs" });
    this.abortBox = h("div", { class: "abort" });
    this.summaryBox = h("div", { class: "summary-box" });
    this.element.append(h("h3", {}, `Following ${name}`), this.stateLine, this.planBox, this.approvalBox, this.abortBox, this.runsBox, this.summaryBox);
    if (!trackers.has(name)) trackers.set(name, new Set());
    trackers.get(name).add(this);
  }

  start() {
    this.loop();
  }

  /** The tracker's stage (data-phase); the side list is refreshed when it moves on. */
  setPhase(phase) {
    if (this.element.dataset.phase === phase) return;
    this.element.dataset.phase = phase;
    intentList.refresh();
  }

  poke() {
    if (this.wake) this.wake();
  }

  async loop() {
    // Stops when the tracker's card leaves the page (it may start before being attached).
    while (!this.stopped && !(this.attached && !this.element.isConnected)) {
      this.attached ||= this.element.isConnected;
      let pause = TRACK_EVERY_MS;
      try {
        pause = await this.refresh();
      } catch (error) {
        this.stateLine.textContent = problemText(error);
        pause = TRACK_IDLE_MS;
      }
      await new Promise((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, pause);
      });
    }
  }

  async refresh() {
    let intent;
    try {
      intent = await api(`/intents/${encodeURIComponent(this.name)}`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        this.stateLine.textContent = `${this.name} is not known yet: waiting for Chiffon to read the intents repo…`;
        return TRACK_EVERY_MS;
      }
      throw error;
    }
    const status = intent.status || {};
    if (this.revision && status.observedRevision !== this.revision && Date.now() - this.since < COMMIT_GRACE_MS) {
      this.stateLine.textContent = "Waiting for Chiffon to read the commit…";
      return TRACK_EVERY_MS;
    }
    const planned = condition(intent, "Planned");
    if (!planned || planned.status !== "True" || !status.plan) {
      this.stateLine.textContent =
        planned && planned.status === "False"
          ? `The plan could not be made: ${planned.message}`
          : "Making the plan: finding the playbooks and checking them…";
      this.setPhase(planned && planned.status === "False" ? "plan-failed" : "planning");
      return TRACK_EVERY_MS;
    }
    if (status.plan.digest !== this.digest) this.newPlan(intent);
    this.showApproval(intent);
    const runs = await this.showRuns(intent);
    return this.showOutcome(intent, runs);
  }

  newPlan(intent) {
    const plan = intent.status.plan;
    const previous = this.digest;
    this.digest = plan.digest;
    this.element.dataset.digest = plan.digest;
    for (const view of this.runs.values()) view.stop();
    this.runs.clear();
    this.runsBox.replaceChildren();
    this.summaryBox.replaceChildren();
    this.abortBox.replaceChildren();
    this.summaryKey = null;
    this.approvalRendered = null;
    const steps = plan.steps || [];
    const hosts = plan.limit || "the hosts in the inventory";
    const parts = [
      h("h4", {}, "The plan ", riskBadge(plan.risk), " ", h("code", { class: "digest", testid: "plan-digest", title: plan.digest }, shortDigest(plan.digest))),
      previous ? h("p", { class: "notice", testid: "plan-changed" }, `The plan changed (it was ${shortDigest(previous)}): review it again.`) : null,
      h(
        "ul",
        { class: "steps", testid: "plan-steps" },
        steps.map((s, i) => stepLine(i, steps.length, s.name, null, s.playbook || (s.role ? `the role ${s.role}` : ""), hosts)),
      ),
      facts([
        ["Takes", durationWords(plan.estimatedDurationSeconds), "estimate"],
        ["Needs", resourceWords(intent.spec?.resources), "resources"],
        intent.spec?.dependsOn?.length ? ["Waits for", `${intent.spec.dependsOn.join(", ")} to be ready`, "depends-on"] : null,
      ]),
    ];
    this.planBox.replaceChildren(...parts.filter(Boolean));
  }

  showApproval(intent) {
    const approved = condition(intent, "Approved");
    const key = `${this.digest}/${approved?.status}/${approved?.reason}`;
    if (this.approvalRendered === key) return;
    this.approvalRendered = key;
    const box = this.approvalBox;
    box.dataset.state = approved?.status === "True" ? "approved" : approved?.reason || "unknown";
    const modify = h("button", { type: "button", testid: "modify", onclick: () => conversation.modify(this.name) }, "Modify");
    if (approved?.status === "True") {
      box.replaceChildren(
        h("p", { class: "ok", testid: "approved" }, approved.message || "Approved."),
        h("div", { class: "actions" }, modify),
      );
      return;
    }
    const why = approved?.reason === "Rejected" ? `Rejected: ${approved.message}` : approved?.message || "Waiting for approval.";
    const note = h("p", { class: approved?.reason === "Rejected" ? "bad" : "", testid: "approval-state" }, why);
    // A refused decision's reason stays shown until the next decision is sent.
    const error = h("p", { class: "error", testid: "approval-error", role: "alert" }, this.notice || "");
    const row = h("div", { class: "actions" });
    const digest = this.digest;
    const decide = async (verb, reason) => {
      row.querySelectorAll("button").forEach((b) => (b.disabled = true));
      error.textContent = "";
      this.notice = null;
      try {
        await api(`/intents/${encodeURIComponent(this.name)}/${verb}`, { method: "POST", body: { plan: digest, reason } });
        this.approvalRendered = null;
        box.replaceChildren(h("p", { class: "ok", testid: "decision-sent" }, verb === "approve" ? "Approved; starting…" : "Rejected."));
        this.poke();
        intentList.refresh();
      } catch (failure) {
        row.querySelectorAll("button").forEach((b) => (b.disabled = false));
        if (failure instanceof ApiError && failure.status === 409) {
          // Stale digest: show why, and redraw the plan and these buttons for the current one.
          this.notice = `${failure.detail} The page now shows the current plan: review it and decide again.`;
          this.approvalRendered = null;
          this.poke();
          return;
        }
        error.textContent = problemText(failure);
      }
    };
    const rejectForm = h(
      "form",
      { class: "reject-form", testid: "reject-form", hidden: true },
      h("label", { for: `reject-${this.name}-${digest.slice(0, 8)}` }, "Why are you rejecting this plan?"),
      h("textarea", { id: `reject-${this.name}-${digest.slice(0, 8)}`, rows: 2, maxlength: 2000, testid: "reject-reason" }),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "danger", testid: "reject-confirm" }, "Reject the plan")),
    );
    rejectForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const reason = $('[data-testid="reject-reason"]', rejectForm).value.trim();
      if (!reason) {
        error.textContent = "Please say why: a rejection needs a reason, so others know what to change.";
        $('[data-testid="reject-reason"]', rejectForm).focus();
        return;
      }
      decide("reject", reason);
    });
    if (mayApprove()) {
      row.append(
        h("button", { type: "button", class: "primary", testid: "approve", dataset: { digest }, onclick: () => decide("approve", "approved in the chat page") }, "Approve"),
        h("button", { type: "button", testid: "reject", dataset: { digest }, onclick: () => {
          rejectForm.hidden = false;
          $('[data-testid="reject-reason"]', rejectForm).focus();
        } }, "Reject"),
      );
    } else {
      row.append(h("p", { class: "hint", testid: "approve-not-allowed" }, `Approving needs the approver role; you have ${session.role}.`));
    }
    row.append(modify);
    box.replaceChildren(note, row, rejectForm, error);
  }

  async showRuns(intent) {
    const approved = condition(intent, "Approved");
    if (approved?.status !== "True" && this.runs.size === 0) {
      const blocked = intent.status.blockedBy;
      this.stateLine.textContent = blocked ? `Waiting: ${blocked}.` : "Waiting for approval.";
      this.setPhase("awaiting-approval");
      return [];
    }
    const listed = await api(`/runs?intent=${encodeURIComponent(this.name)}&limit=100`);
    const runs = (listed.items || [])
      .filter((run) => run.planDigest === this.digest && !run.checkMode)
      .sort((a, b) => a.stepIndex - b.stepIndex || a.attempt - b.attempt);
    const count = intent.status.plan.steps.length;
    for (const run of runs) {
      if (!this.runs.has(run.id)) {
        const view = new RunView(run, count);
        this.runs.set(run.id, view);
        this.runsBox.append(view.element);
        view.start();
      }
    }
    const inFlight = runs.filter((run) => !FINISHED.has(run.status));
    this.showAbort(inFlight.length > 0);
    if (inFlight.length) {
      const run = inFlight[inFlight.length - 1];
      this.stateLine.textContent = `Running step ${run.stepIndex + 1} of ${count} — ${run.step}${run.agentId ? ` on ${run.agentId}` : ""}.`;
      this.setPhase("running");
    } else if (!runs.length) {
      const blocked = intent.status.blockedBy;
      this.stateLine.textContent = blocked ? `Approved; waiting: ${blocked}.` : "Approved; starting soon…";
      this.setPhase("scheduling");
    }
    return runs;
  }

  showAbort(visible) {
    if (!visible) {
      if (!this.abortBox.dataset.sent) this.abortBox.replaceChildren();
      return;
    }
    if (this.abortBox.firstChild || !mayOperate()) return;
    const error = h("p", { class: "error", role: "alert", testid: "abort-error" });
    const form = h(
      "form",
      { class: "abort-form", testid: "abort-form", hidden: true },
      h("label", { for: `abort-${this.name}` }, "Why stop it? (optional)"),
      h("input", { id: `abort-${this.name}`, type: "text", maxlength: 2000, testid: "abort-reason" }),
      h("button", { type: "submit", class: "danger", testid: "abort-confirm" }, "Stop the run"),
    );
    const button = h("button", { type: "button", class: "danger", testid: "abort", onclick: () => {
      form.hidden = false;
      $('[data-testid="abort-reason"]', form).focus();
    } }, "Abort");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const reason = $('[data-testid="abort-reason"]', form).value.trim() || "stopped from the chat page";
      form.querySelectorAll("button").forEach((b) => (b.disabled = true));
      try {
        const done = await api(`/intents/${encodeURIComponent(this.name)}/abort`, { method: "POST", body: { reason } });
        const count = (done.canceledRuns || []).length;
        this.abortBox.dataset.sent = "yes";
        this.abortBox.replaceChildren(
          h("p", { class: "notice", testid: "abort-sent" }, `Stopping ${plural(count, "run")}; the plan stays rejected until someone approves it again.`),
        );
        this.poke();
      } catch (failure) {
        form.querySelectorAll("button").forEach((b) => (b.disabled = false));
        error.textContent =
          failure instanceof ApiError && failure.status === 404 ? "This server cannot stop runs." : problemText(failure);
      }
    });
    this.abortBox.replaceChildren(button, form, error);
  }

  async showOutcome(intent, runs) {
    const status = intent.status;
    const ready = condition(intent, "Ready");
    const inFlight = runs.some((run) => !FINISHED.has(run.status));
    const latest = new Map();
    for (const run of runs) latest.set(run.step, run);
    const stopped = [...latest.values()].find((run) => ["failed", "timeout", "canceled"].includes(run.status));
    const ended = Boolean(stopped);
    const applied = ready?.status === "True" && status.lastAppliedDigest === this.digest;
    if (inFlight || !(applied || ended)) {
      if (!inFlight && ready && ready.status !== "True" && runs.length) {
        this.stateLine.textContent = ready.message || "A step did not succeed.";
      }
      return TRACK_EVERY_MS;
    }
    const key = `${this.digest}:${runs.map((run) => `${run.id}=${run.status}`).join(",")}`;
    if (this.summaryKey !== key) {
      const summary = await api(`/intents/${encodeURIComponent(this.name)}/summary?plan=${this.digest}`);
      this.summaryKey = key;
      this.summaryBox.replaceChildren(summaryCard(summary));
      this.setPhase(applied ? "done" : summary.outcome);
    }
    this.stateLine.textContent = applied
      ? `Done: ${ready.message}`
      : `Stopped: step ${stopped.stepIndex + 1} — ${stopped.step} ${RUN_WORDS[stopped.status] || stopped.status}.`;
    return TRACK_IDLE_MS;
  }
}

// ---------------------------------------------------------------------------------------------
// One run's output, live

const STATUS_WORDS = {
  ok: "ok",
  changed: "changed",
  failed: "failed",
  skipped: "skipped",
  unreachable: "unreachable",
};

const RUN_WORDS = {
  pending: "waiting for an agent",
  starting: "starting",
  running: "running",
  successful: "succeeded",
  failed: "failed",
  timeout: "ran out of time",
  canceled: "was stopped",
  unknown: "state unknown",
};

/** One line of run output for an ansible event, or null for the noise. */
export function eventLine(event) {
  const base = { class: "event", testid: "event", dataset: { seq: event.seq, created: event.created || "", kind: event.event } };
  if (event.event === "playbook_on_play_start") {
    const name = (event.output || "").replace(/^PLAY \[(.*)\].*$/s, "$1").trim() || "play";
    return h("li", { ...base, class: "event play" }, `Starting: ${name}`);
  }
  if (event.event === "playbook_on_task_start") {
    return h("li", { ...base, class: "event task" }, event.task || "task");
  }
  if (event.event === "playbook_on_stats") {
    return h("li", { ...base, class: "event recap" }, "Finished the playbook.");
  }
  if (event.status) {
    const item = /\(item=(.*)\)\s*$/.exec((event.output || "").split("\n")[0]);
    const line = h(
      "li",
      { ...base, class: `event result status-${event.status}`, dataset: { ...base.dataset, status: event.status } },
      h("span", { class: "word" }, STATUS_WORDS[event.status] || event.status),
      " ",
      h("span", { class: "host" }, event.host || ""),
      " — ",
      event.task || "",
      item ? h("span", { class: "item" }, ` (${item[1]})`) : null,
    );
    if (event.status === "failed" || event.status === "unreachable") {
      line.append(h("pre", { class: "output" }, event.output || ""));
    }
    return line;
  }
  const text = (event.output || "").trim();
  if (!text) return null;
  if (["playbook_on_start", "runner_on_start", "playbook_on_include"].includes(event.event)) return null;
  return h("li", { ...base, class: "event note" }, text);
}

class RunView {
  constructor(run, count) {
    this.run = run;
    this.count = count;
    this.controller = new AbortController();
    this.state = h("span", { class: "run-state", testid: "run-status", dataset: { status: run.status } }, RUN_WORDS[run.status] || run.status);
    this.lines = h("ol", { class: "events", role: "log", "aria-live": "polite", "aria-label": `Output of step ${run.step}`, testid: "run-events" });
    this.element = h(
      "section",
      { class: "run", testid: "run", dataset: { run: run.id, step: run.step } },
      h("h4", {}, `Step ${run.stepIndex + 1} of ${count} — ${run.step}`, run.attempt > 1 ? ` (try ${run.attempt})` : "", ": ", this.state),
      this.lines,
    );
  }

  setStatus(run) {
    this.run = run;
    this.state.dataset.status = run.status;
    const where = run.agentId && !FINISHED.has(run.status) ? ` on ${run.agentId}` : "";
    this.state.textContent = `${RUN_WORDS[run.status] || run.status}${where}`;
    if (run.error && FINISHED.has(run.status) && run.status !== "successful") {
      this.element.append(h("p", { class: "error", testid: "run-error" }, run.error));
    }
  }

  start() {
    followStream(
      this.run.id,
      (kind, payload) => {
        if (kind === "output") {
          const line = eventLine(payload);
          if (line) {
            this.lines.append(line);
            line.scrollIntoView({ block: "nearest" });
          }
        } else if (kind === "run" || kind === "end") {
          this.setStatus(payload);
        } else if (kind === "error") {
          this.lines.append(h("li", { class: "event note" }, payload.message || "The output stream failed."));
        }
      },
      this.controller.signal,
    ).catch((error) => {
      this.lines.append(h("li", { class: "event note", testid: "stream-error" }, problemText(error)));
    });
  }

  stop() {
    this.controller.abort();
  }
}

// ---------------------------------------------------------------------------------------------
// The summary card

const OUTCOME_WORDS = {
  succeeded: "Everything went as planned",
  failed: "A step failed",
  timeout: "A step ran out of time",
  canceled: "The run was stopped",
  running: "Still running",
  waiting: "Nothing has run yet",
};

function summaryCard(summary) {
  const rows = summary.steps.map((step) =>
    h(
      "tr",
      { testid: "summary-step", dataset: { status: step.status } },
      h("th", { scope: "row" }, `${step.index + 1}. ${step.name}`),
      h("td", { class: `status-${step.status}` }, RUN_WORDS[step.status] || step.status),
      h("td", {}, step.durationSeconds === null || step.durationSeconds === undefined ? "—" : `${step.durationSeconds.toFixed(1)} s`),
      h("td", {}, step.run ? `${plural(step.changed || 0, "change")}${step.failed ? `, ${step.failed} failed` : ""}` : "—"),
      h("td", {}, step.agent || "—"),
    ),
  );
  const used = usageWords(summary.resourcesUsed);
  const suggestions = summary.suggestions || [];
  const audit = summary.audit;
  return h(
    "section",
    { class: `card summary outcome-${summary.outcome}`, testid: "summary", dataset: { outcome: summary.outcome } },
    h("h4", {}, `Summary — ${OUTCOME_WORDS[summary.outcome] || summary.outcome}`),
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, ["Step", "Result", "Took", "Changes", "Agent"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows),
    ),
    facts([
      ["Took", summary.totalSeconds === null ? "—" : `${durationWords(summary.totalSeconds, { estimate: false })} in all (${summary.totalSeconds.toFixed(1)} s)`, "summary-total"],
      used ? ["Used", used, "summary-used"] : null,
      ["Asked for", resourceWords(summary.resourcesRequested), "summary-requested"],
      summary.drift && summary.drift.checkedAt ? ["Drift", driftWords(summary.drift), "summary-drift"] : null,
    ]),
    suggestions.length
      ? h(
          "div",
          { class: "suggestions", testid: "summary-suggestions" },
          h("h5", {}, "Suggestions for these playbooks"),
          h("ul", {}, suggestions.map((s) => h("li", { testid: "suggestion" }, h("code", {}, `${s.file}${s.line ? `:${s.line}` : ""}`), " — ", s.reasoning))),
        )
      : h("p", { class: "hint" }, "No open suggestions for these playbooks."),
    h(
      "p",
      { class: "audit-links" },
      h("a", { href: `#/audit/${encodeURIComponent(summary.intent)}`, testid: "audit-link" }, `Audit trail (${plural(audit.events, "entry", "entries")})`),
      " · ",
      h("a", { href: audit.href, testid: "audit-json", target: "_blank", rel: "noopener" }, "as JSON"),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// The audit trail view (#/audit/NAME)

const ACTION_WORDS = {
  "intent.created": "the intent was created",
  "intent.updated": "the intent was changed",
  "intent.deleted": "the intent was deleted",
  plan: "made a plan",
  approve: "approved the plan",
  reject: "rejected the plan",
  dispatch: "sent a step to an agent",
  "run.result": "a step finished",
  applied: "the plan was applied",
  abort: "stopped the run",
};

function auditLine(event) {
  const d = event.details || {};
  const bits = [];
  if (d.step) bits.push(`step ${d.step}`);
  if (d.agent) bits.push(`on ${d.agent}`);
  if (d.status) bits.push(d.status);
  if (d.digest) bits.push(`plan ${shortDigest(d.digest)}`);
  if (d.reason) bits.push(`“${d.reason}”`);
  if (d.error) bits.push(d.error);
  return h(
    "li",
    { class: `audit-event outcome-${event.outcome}`, testid: "audit-event", dataset: { action: event.action } },
    h("time", { datetime: event.time }, timeWords(event.time)),
    h("span", { class: "actor" }, event.actor),
    h("span", { class: "what" }, ACTION_WORDS[event.action] || event.action),
    bits.length ? h("span", { class: "detail" }, bits.join(" · ")) : null,
    h("details", {}, h("summary", {}, "details"), h("pre", {}, JSON.stringify(event, null, 2))),
  );
}

async function showAudit(name) {
  const view = $('[data-testid="audit-view"]');
  const resource = `DeploymentIntent/${name}`;
  const href = `${API}/audit?resource=${encodeURIComponent(resource)}&limit=200`;
  view.hidden = false;
  document.body.dataset.view = "audit";
  view.replaceChildren(
    h("h2", { testid: "audit-title" }, `Audit trail of ${name}`),
    h("p", {}, h("a", { href: "#/", testid: "audit-back" }, "Back to the conversation"), " · ", h("a", { href, target: "_blank", rel: "noopener" }, "as JSON")),
    h("p", { class: "hint" }, "Loading…"),
  );
  try {
    const events = await api(`/audit?resource=${encodeURIComponent(resource)}&limit=200`);
    const items = events.items || [];
    view.lastChild.replaceWith(
      items.length
        ? h("ol", { class: "timeline", testid: "audit-events" }, items.map(auditLine))
        : h("p", { class: "hint" }, "Nothing recorded yet."),
    );
  } catch (error) {
    view.lastChild.textContent = problemText(error);
  }
  view.scrollIntoView({ block: "start" });
}

function route() {
  const match = /^#\/audit\/(.+)$/.exec(location.hash);
  if (match) {
    showAudit(decodeURIComponent(match[1]));
    return;
  }
  $('[data-testid="audit-view"]').hidden = true;
  document.body.dataset.view = "chat";
}

// ---------------------------------------------------------------------------------------------
// The side list of intents

const BADGE_WORDS = { True: "yes", False: "no", Unknown: "?" };

const intentList = {
  timer: null,
  init() {
    this.list = $('[data-testid="intent-list"]');
    this.updated = $('[data-testid="intents-updated"]');
  },
  async refresh() {
    clearTimeout(this.timer);
    try {
      const intents = await api("/intents");
      this.render(intents.items || []);
      this.updated.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
    } catch (error) {
      this.updated.textContent = problemText(error);
    } finally {
      this.timer = setTimeout(() => this.refresh(), LIST_EVERY_MS);
    }
  },
  render(items) {
    if (!items.length) {
      this.list.replaceChildren(h("li", { class: "hint", testid: "no-intents" }, "Nothing yet: ask for something in the conversation."));
      return;
    }
    // Redraw only what changed, so focus and open details survive the refresh.
    const before = new Map([...this.list.children].map((node) => [node.dataset.name, node]));
    const nodes = items.map((intent) => {
      const name = intent.metadata.name;
      const key = JSON.stringify([intent.metadata.generation, intent.spec?.service, intent.status]);
      const old = before.get(name);
      if (old && old.dataset.key === key) return old;
      const node = this.item(intent, Boolean(old?.querySelector("details[open]")));
      node.dataset.key = key;
      return node;
    });
    nodes.forEach((node, index) => {
      if (this.list.children[index] !== node) this.list.insertBefore(node, this.list.children[index] || null);
    });
    while (this.list.children.length > nodes.length) this.list.lastElementChild.remove();
  },
  item(intent, expanded) {
    const name = intent.metadata.name;
    const status = intent.status || {};
    const badges = CONDITION_TYPES.map((type) => {
      const c = condition(intent, type);
      const value = c ? c.status : "Unknown";
      return h(
        "li",
        { class: `badge cond-${value.toLowerCase()}`, testid: `condition-${type}`, dataset: { status: value, reason: c?.reason || "" }, title: c ? `${c.reason}: ${c.message}` : "not reported yet" },
        `${type} `,
        h("span", { class: "visually-hidden" }, BADGE_WORDS[value]),
        h("small", {}, c?.reason || "—"),
      );
    });
    const conditions = (status.conditions || []).map((c) =>
      h("li", {}, h("strong", {}, `${c.type}: ${c.status}`), ` (${c.reason}) ${c.message || ""}`),
    );
    return h(
      "li",
      { class: "intent", testid: `intent-${name}`, dataset: { name } },
      h("div", { class: "intent-head" }, h("strong", { class: "name" }, name), intent.spec?.service && intent.spec.service !== name ? h("span", { class: "service" }, intent.spec.service) : null),
      h("ul", { class: "badges", "aria-label": `Conditions of ${name}` }, badges),
      status.blockedBy ? h("p", { class: "blocked", testid: "blocked-by" }, `Waiting: ${status.blockedBy}`) : null,
      h(
        "details",
        { dataset: { intent: name }, open: expanded },
        h("summary", {}, "Conditions"),
        h("ul", { class: "conditions" }, conditions),
      ),
      h(
        "div",
        { class: "actions small" },
        h("button", { type: "button", testid: `follow-${name}`, onclick: () => followIntent(name) }, "Follow"),
        h("a", { href: `#/audit/${encodeURIComponent(name)}`, testid: `audit-${name}` }, "Audit trail"),
      ),
    );
  },
};

function followIntent(name) {
  const existing = [...(trackers.get(name) || [])].find((t) => t.element.isConnected && !t.revision);
  if (existing) {
    existing.element.scrollIntoView({ block: "start" });
    return;
  }
  location.hash = "#/";
  const tracker = new IntentTracker(name);
  conversation.add(h("li", { class: "message assistant card", testid: "follow-card" }, tracker.element));
  tracker.start();
}

async function refreshEverything() {
  await loadWhoami();
  intentList.refresh();
  for (const set of trackers.values()) for (const t of set) t.poke();
}

// ---------------------------------------------------------------------------------------------

async function main() {
  tokenForm.init();
  conversation.init();
  intentList.init();
  window.addEventListener("hashchange", route);
  route();
  await loadWhoami();
  intentList.refresh();
  await conversation.restore();
  document.body.dataset.ready = "yes";
}

main();
