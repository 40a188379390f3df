// smtpfw workbench: the page.  Every judgement (lint, tests, dry-run,
// trace, compile) is made by the server with smtpfw's own engine; this
// script edits text, sends the edited files, and shows the answers.
import { EditorState } from "@codemirror/state";
import { EditorView, keymap, lineNumbers, highlightActiveLine, highlightActiveLineGutter, drawSelection }
  from "@codemirror/view";
import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import { syntaxHighlighting, defaultHighlightStyle, bracketMatching } from "@codemirror/language";
import { linter, lintGutter, forceLinting } from "@codemirror/lint";
import { searchKeymap, highlightSelectionMatches } from "@codemirror/search";
import { rulesLanguage, testsLanguage, listLanguage } from "./language.js";

// ---- state -----------------------------------------------------------------

const S = {
  info: null,              // /api/state
  buffers: new Map(),      // name -> {state: EditorState, saved: text, digest, kind}
  current: null,           // the file shown
  diagnostics: [],         // the last lint, every file
  lintSeq: 0,
  dryrun: null,            // the running job's id
};

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c.nodeType ? c : String(c));
  return e;
};

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-Smtpfw-Workbench"] = "1";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  let data;
  try { data = await resp.json(); } catch { data = { error: `${resp.status} ${resp.statusText}` }; }
  if (!resp.ok) {
    const err = new Error(data.error || `${resp.status}`);
    err.data = data;
    err.status = resp.status;
    throw err;
  }
  return data;
}

/** Replace the children of ``node``, leaving out null ones. */
const put = (node, ...children) => node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));

function textOf(name) {
  const b = S.buffers.get(name);
  if (!b) return null;
  return name === S.current ? view.state.doc.toString() : b.state.doc.toString();
}

/** The edited files: name -> text, only those that differ from disk. */
function edits() {
  const out = {};
  for (const [name, b] of S.buffers) {
    const text = textOf(name);
    if (text !== b.saved) out[name] = text;
  }
  return out;
}

function status(msg, kind = "") {
  const s = $("#status");
  s.textContent = msg;
  s.className = kind;
}

// ---- the editor ------------------------------------------------------------------

function languageFor(kind) {
  return kind === "rules" || kind === "include" ? rulesLanguage : kind === "tests" ? testsLanguage : listLanguage;
}

const lintSource = linter(async (v) => {
  const seq = ++S.lintSeq;
  let result;
  try {
    result = await api("POST", "/api/lint", { files: edits() });
  } catch (err) {
    status(`lint: ${err.message}`, "bad");
    return [];
  }
  if (seq !== S.lintSeq) return [];            // a newer lint is on its way
  S.diagnostics = result.diagnostics;
  renderProblems(result);
  const doc = v.state.doc;
  const out = [];
  for (const d of result.diagnostics) {
    if (d.file !== S.current || d.line === null) continue;
    const range = rangeOf(doc, d.line, d.column, d.end_line, d.end_column);
    if (!range) continue;
    const item = {
      from: range.from, to: range.to, severity: d.severity === "hint" ? "hint" : d.severity,
      source: d.code, message: `${d.code} ${d.message}` + (d.help ? `\nhelp: ${d.help}` : ""),
    };
    if (d.fix) item.actions = [{ name: `use \`${d.fix.insert}\``, apply: (view) => applyFix(view, d.fix) }];
    out.push(item);
  }
  return out;
}, { delay: 250 });

function rangeOf(doc, line, column, endLine, endColumn) {
  if (line < 1 || line > doc.lines) return null;
  const l = doc.line(line);
  const from = Math.min(l.from + Math.max(column - 1, 0), l.to);
  let to = from;
  if (endLine && endLine <= doc.lines) {
    const e = doc.line(endLine);
    to = Math.min(e.from + Math.max(endColumn - 1, 0), e.to);
  }
  return { from, to: Math.max(to, from) };
}

/** Apply a did-you-mean: only if the text there is still the word it names. */
function applyFix(v, fix) {
  const range = rangeOf(v.state.doc, fix.line, fix.column, fix.line, fix.end_column);
  if (!range || v.state.sliceDoc(range.from, range.to) !== fix.from) {
    status("the text changed: the fix no longer applies", "bad");
    return false;
  }
  v.dispatch({ changes: { from: range.from, to: range.to, insert: fix.insert }, selection: { anchor: range.from + fix.insert.length } });
  v.focus();
  return true;
}

function extensions(kind) {
  return [
    lineNumbers(), highlightActiveLineGutter(), history(), drawSelection(), highlightActiveLine(),
    bracketMatching(), highlightSelectionMatches(),
    syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
    languageFor(kind),
    keymap.of([...defaultKeymap, ...historyKeymap, ...searchKeymap, indentWithTab]),
    EditorView.lineWrapping, lintGutter(), lintSource,
    EditorView.updateListener.of((u) => { if (u.docChanged) renderFiles(); }),
  ];
}

const view = new EditorView({ parent: $("#editor"), state: EditorState.create({ doc: "" }) });

async function openFile(name, line) {
  if (S.current === name) return goto(line);
  let b = S.buffers.get(name);
  if (!b) {
    const f = (S.info.files.find((x) => x.name === name) || { kind: "list" });
    const data = await api("GET", `/api/file?name=${encodeURIComponent(name)}`);
    b = { saved: data.text, digest: data.digest, kind: f.kind,
          state: EditorState.create({ doc: data.text, extensions: extensions(f.kind) }) };
    S.buffers.set(name, b);
  }
  if (S.current) S.buffers.get(S.current).state = view.state;
  S.current = name;
  view.setState(b.state);
  $("#filename").textContent = name;
  renderFiles();
  forceLinting(view);
  goto(line);
}

function goto(line) {
  if (!line) return;
  const l = view.state.doc.line(Math.min(Math.max(line, 1), view.state.doc.lines));
  view.dispatch({ selection: { anchor: l.from }, scrollIntoView: true });
  view.focus();
}

// ---- files and problems ------------------------------------------------------------

function renderFiles() {
  const list = $("#files");
  const changed = edits();
  put(list, ...S.info.files.map((f) => {
    const errors = S.diagnostics.filter((d) => d.file === f.name && d.severity === "error").length;
    return el("li", {
      class: [f.name === S.current ? "current" : "", f.editable ? "" : "outside", f.exists ? "" : "missing"].join(" "),
      dataset: { name: f.name }, title: f.editable ? f.name : `${f.name}: outside the ruleset's folder, not editable here`,
      onclick: () => f.editable && openFile(f.name),
    }, el("span", { class: "kind" }, f.kind), " ", f.name, changed[f.name] !== undefined ? el("span", { class: "dot" }, " ●") : null,
    errors ? el("span", { class: "count error" }, ` ${errors}`) : null);
  }));
  const n = Object.keys(changed).length;
  $("#unsaved").textContent = n ? `${n} unsaved file${n > 1 ? "s" : ""}` : "saved";
}

function renderProblems(result) {
  const s = result.summary;
  $("#lint-summary").textContent = s.error + s.warning + s.hint === 0 ? "no problems"
    : `${s.error} error${s.error !== 1 ? "s" : ""}, ${s.warning} warning${s.warning !== 1 ? "s" : ""}, ${s.hint} hint${s.hint !== 1 ? "s" : ""}`;
  $("#lint-summary").className = s.error ? "bad" : s.warning ? "warn" : "good";
  const list = $("#problems");
  put(list, ...result.diagnostics.map((d) => el("li", {
    class: `diag ${d.severity}`, dataset: { file: d.file || "", line: d.line || "", code: d.code },
  },
  el("div", { class: "where", onclick: () => d.editable && openFile(d.file, d.line) },
    `${d.file || ""}${d.line ? `:${d.line}:${d.column}` : ""}`, " ", el("b", {}, `${d.severity}[${d.code}]`), " ", d.message),
  d.help ? el("div", { class: "help" }, `help: ${d.help}`) : null,
  d.fix ? el("button", { class: "fix", onclick: async () => {
    await openFile(d.file);
    applyFix(view, d.fix);
  } }, `fix: use \`${d.fix.insert}\``) : null,
  el("a", { class: "doc", href: `#`, title: d.url, onclick: (e) => e.preventDefault() }, d.name))));
  renderFiles();
}

// ---- tabs ------------------------------------------------------------------------------

function showTab(name) {
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.tab === name);
  for (const p of document.querySelectorAll(".pane")) p.hidden = p.id !== `pane-${name}`;
  if (name === "trace") loadSessions();
}

// ---- tests --------------------------------------------------------------------------------

async function runTests() {
  const out = $("#tests-result");
  put(out, el("p", {}, "running…"));
  let r;
  try { r = await api("POST", "/api/tests", { files: edits() }); } catch (err) {
    put(out, el("p", { class: "bad" }, err.message));
    return;
  }
  if (r.error) { put(out, el("p", { class: "bad", id: "tests-summary" }, r.error)); return; }
  const s = r.summary;
  put(out,
    el("p", { id: "tests-summary", class: s.failed || s.unreadable ? "bad" : "good" },
      `${s.tests} tests: ${s.passed} passed, ${s.failed} failed` + (s.unreadable ? `, ${s.unreadable} unreadable lines` : "")),
    el("ul", { class: "cases" }, r.cases.map((c) => el("li", { class: c.passed ? "ok" : "fail", dataset: { line: c.line } },
      el("span", { class: "mark" }, c.passed ? "ok" : "FAIL"), " ",
      el("a", { href: "#", onclick: (e) => { e.preventDefault(); openFile(S.info.tests_name, c.line); } }, `${S.info.tests_name}:${c.line}`),
      " ", el("code", {}, c.text)))),
    ...r.failures.map((f) => el("div", { class: "failure" },
      el("p", {}, el("b", {}, `${f.file}:${f.line}: ${f.severity}[${f.code}]`), " ", f.message),
      f.help ? el("p", { class: "help" }, `help: ${f.help}`) : null,
      f.trace ? el("pre", { class: "trace" }, f.trace) : null)));
}

// ---- trace ------------------------------------------------------------------------------

async function loadSessions() {
  const sel = $("#session-list");
  if (sel.dataset.loaded) return;
  try {
    const r = await api("GET", "/api/sessions");
    put(sel, el("option", { value: "" }, r.sessions.length ? "— a recorded session —" : (r.error || "no recorded sessions")),
      ...r.sessions.map((s) => el("option", { value: s.id },
        `${s.id}  ${s.client}  ${s.helo || "-"}  <${s.from ?? ""}> → ${(s.rcpts || []).join(", ")}`)));
    sel.dataset.loaded = "1";
  } catch (err) { status(err.message, "bad"); }
}

async function traceSession(body, title) {
  showTab("trace");
  const out = $("#trace-result");
  put(out, el("p", {}, "tracing…"));
  try {
    const r = await api("POST", "/api/trace", { files: edits(), which: $("#trace-which").value, ...body });
    const v = r.verdict;
    put(out,
      el("p", { id: "trace-verdict", class: ["rejected", "tempfailed", "disconnected"].includes(v.kind) ? "bad" : "good" },
        `${title}: ${v.kind}${v.stage ? ` at ${v.stage}` : ""}${v.rule ? ` by ${v.rule}` : ""}${v.code ? ` (${v.code})` : ""}`,
        ` — ruleset ${r.ruleset} (${r.which})`),
      r.dns.length ? el("div", { class: "dns" }, el("b", {}, "DNS answers used: "),
        el("ul", {}, r.dns.map((d) => el("li", {}, `${d.lookup.kind} ${d.lookup.name}${d.lookup.zone ? ` in ${d.lookup.zone}` : ""}: ${d.answer.status}` +
          (d.answer.codes && d.answer.codes.length ? ` ${d.answer.codes.join(",")}` : ""))))) : null,
      el("button", { id: "add-test", onclick: () => addTest(body) }, `add a test for this session to ${S.info.tests_name}`),
      el("pre", { class: "trace" }, r.text));
  } catch (err) {
    put(out, el("p", { class: "bad" }, err.message));
  }
}

function formBody() {
  return { form: { ip: $("#f-ip").value.trim(), helo: $("#f-helo").value.trim(), sender: $("#f-from").value.trim(),
    rcpts: $("#f-rcpts").value.trim() }, dns: $("#f-dns").value };
}

async function addTest(body) {
  try {
    const r = await api("POST", "/api/test-line", { files: edits(), session_id: body.session_id, form: body.form });
    await openFile(r.tests);
    const doc = view.state.doc;
    const text = doc.toString();
    const insert = (text && !text.endsWith("\n") ? "\n" : "") + r.line + "\n";
    view.dispatch({ changes: { from: doc.length, insert }, scrollIntoView: true,
                    selection: { anchor: doc.length + insert.length - 1 } });
    status(`added to ${r.tests} (unsaved): ${r.line}`, "good");
  } catch (err) { status(err.message, "bad"); }
}

// ---- dry-run ---------------------------------------------------------------------------------

async function startDryRun() {
  const out = $("#dryrun-result");
  put(out);
  try {
    const job = await api("POST", "/api/dryrun", { files: edits() });
    S.dryrun = job.id;
    $("#dryrun-cancel").disabled = false;
    pollDryRun(job.id);
  } catch (err) { put(out, el("p", { class: "bad" }, err.message)); }
}

async function pollDryRun(id) {
  if (S.dryrun !== id) return;
  let job;
  try { job = await api("GET", `/api/dryrun/${id}`); } catch (err) { status(err.message, "bad"); return; }
  const pct = job.bytes_total ? Math.floor(100 * job.bytes_done / job.bytes_total) : 0;
  $("#dryrun-progress").value = job.state === "done" ? 100 : pct;
  $("#dryrun-count").textContent = `${job.state}: ${job.sessions.toLocaleString()} sessions, ${pct}% of ${(job.bytes_total / 1e6).toFixed(1)} MB in ${job.files} files, ${job.elapsed.toFixed(1)} s`;
  if (job.state === "running") { setTimeout(() => pollDryRun(id), 300); return; }
  $("#dryrun-cancel").disabled = true;
  if (job.state === "done") renderDryRun(job.report);
  else if (job.error) put($("#dryrun-result"), el("p", { class: "bad" }, job.error));
}

const TITLES = { newly_rejected: "newly rejected", newly_accepted: "newly accepted", changed: "changed" };

function renderDryRun(rep) {
  const kinds = Object.keys(rep.verdicts);
  const c = rep.changes;
  const out = $("#dryrun-result");
  put(out,
    el("p", { id: "dryrun-summary", class: c.sessions ? "warn" : "good" },
      c.sessions ? `${c.sessions} of ${rep.sessions} sessions change (newly rejected ${c.newly_rejected.count}, newly accepted ${c.newly_accepted.count}, changed ${c.changed.count})`
        : `no changes in ${rep.sessions} sessions`),
    el("table", { class: "verdicts" }, el("tr", {}, el("th", {}, "verdict"), el("th", {}, "edited"), el("th", {}, "saved")),
      kinds.map((k) => el("tr", {}, el("td", {}, k), el("td", {}, rep.verdicts[k]), el("td", {}, rep.baseline_verdicts[k])))),
    ...["newly_rejected", "newly_accepted", "changed"].filter((cat) => c[cat].count).map((cat) => el("section", { class: "category", dataset: { category: cat } },
      el("h3", {}, `${TITLES[cat]}: ${c[cat].count}`),
      c[cat].groups.map((g) => el("div", { class: "group", dataset: { rule: g.rule || g.key } },
        el("h4", {}, cat === "newly_rejected" ? `by ${g.key}, ${g.detail.replace(/^now /, "")}` : cat === "newly_accepted"
          ? `no longer refused by ${g.key} (${g.detail})` : g.key, `: ${g.count} session${g.count !== 1 ? "s" : ""}`),
        el("ul", {}, g.examples.map((ex) => el("li", { class: "session", dataset: { id: ex.id } },
          el("a", { href: "#", onclick: (e) => { e.preventDefault(); traceSession({ session_id: ex.id }, `session ${ex.id}`); } }, ex.id),
          `  ${ex.client}  helo ${ex.helo || "-"}  <${ex.from ?? ""}> → ${(ex.rcpts || []).map((r) => `<${r}>`).join(", ")}`,
          el("div", { class: "was" }, `was ${ex.was}${ex.was_reply ? `: ${ex.was_reply}` : ""}`),
          el("div", { class: "now" }, `now ${ex.now}${ex.now_reply ? `: ${ex.now_reply}` : ""}`)))))))));
}

// ---- save and reload --------------------------------------------------------------------------

async function previewSave() {
  const out = $("#save-result");
  put(out, el("p", {}, "checking…"));
  try {
    const r = await api("POST", "/api/preview", { files: edits() });
    $("#save-button").disabled = !(r.compiles && r.diffs.length);
    put(out,
      el("p", { id: "save-compiles", class: r.compiles ? "good" : "bad" }, r.compiles
        ? `the edited ruleset compiles: version ${r.version} (saved: ${r.saved_version || "does not compile"})`
        : `the edited ruleset does not compile (${r.errors.length} error${r.errors.length !== 1 ? "s" : ""}): it cannot be saved`),
      r.diffs.length ? null : el("p", {}, "nothing to save: no file differs from the one on disk"),
      ...r.diffs.map((d) => el("div", { class: "diff" }, el("h4", {}, d.name + (d.new ? " (new file)" : "")),
        el("pre", {}, d.diff.split("\n").map((line) => el("span", {
          class: line.startsWith("+") && !line.startsWith("+++") ? "add" : line.startsWith("-") && !line.startsWith("---") ? "del" : line.startsWith("@@") ? "hunk" : "",
        }, line + "\n"))))));
  } catch (err) { put(out, el("p", { class: "bad" }, err.message)); }
}

async function save() {
  const files = edits();
  const bases = {};
  for (const name of Object.keys(files)) bases[name] = S.buffers.get(name).digest;
  try {
    const r = await api("POST", "/api/save", { files, bases });
    for (const name of r.saved) {
      const b = S.buffers.get(name);
      b.saved = textOf(name);
      b.digest = r.digests[name];
    }
    S.info.saved_version = r.version;
    $("#version").textContent = r.version;
    $("#save-button").disabled = true;
    $("#save-result").prepend(el("p", { id: "saved", class: "good" }, `saved ${r.saved.join(", ")}: version ${r.version}`));
    renderFiles();
    if ($("#reload-after").checked) await reloadServer();
  } catch (err) {
    $("#save-result").prepend(el("p", { class: "bad" }, err.message));
  }
}

async function reloadServer() {
  const out = $("#reload-result");
  try {
    let r = await api("POST", "/api/reload", {});
    out.textContent = `sent SIGHUP to process ${r.pid}; waiting for version ${r.expected}…`;
    out.className = "";
    for (let i = 0; i < 100 && r.state === "waiting"; i++) {
      await new Promise((res) => setTimeout(res, 300));
      r = await api("GET", "/api/reload");
    }
    const say = {
      reloaded: [`the server reloaded: it runs version ${r.version}` + (r.processes > 1 ? ` (${r.processes} processes)` : ""), "good"],
      refused: [`the server refused the reload: ${(r.lines || []).join(" ")}`, "bad"],
      other: [`the server reloaded to version ${r.version}, not ${r.expected}: the files changed again?`, "warn"],
      signalled: [`SIGHUP sent to process ${r.pid}: ${r.note}`, "warn"],
      "no answer": [`no answer from the server: ${r.note}`, "bad"],
      waiting: ["still waiting for the server", "warn"],
    }[r.state] || [JSON.stringify(r), ""];
    out.textContent = say[0];
    out.className = say[1];
    out.dataset.state = r.state;
    if (r.state === "reloaded") $("#server-version").textContent = r.version;
  } catch (err) { out.textContent = err.message; out.className = "bad"; }
}

// ---- start ------------------------------------------------------------------------------------------

async function main() {
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => showTab(t.dataset.tab));
  $("#run-tests").addEventListener("click", runTests);
  $("#dryrun-start").addEventListener("click", startDryRun);
  $("#dryrun-cancel").addEventListener("click", async () => { if (S.dryrun) await api("POST", `/api/dryrun/${S.dryrun}/cancel`, {}); });
  $("#trace-form").addEventListener("submit", (e) => { e.preventDefault(); traceSession(formBody(), "the session"); });
  $("#trace-recorded").addEventListener("click", () => {
    const id = $("#session-list").value;
    if (id) traceSession({ session_id: id }, `session ${id}`);
  });
  $("#preview").addEventListener("click", previewSave);
  $("#save-button").addEventListener("click", save);
  $("#reload-button").addEventListener("click", reloadServer);
  window.addEventListener("beforeunload", (e) => { if (Object.keys(edits()).length) e.preventDefault(); });
  try {
    S.info = await api("GET", "/api/state");
  } catch (err) {
    status(err.message, "bad");
    return;
  }
  $("#rules").textContent = S.info.rules;
  $("#version").textContent = S.info.saved_version || "(does not compile)";
  $("#server-version").textContent = S.info.server.running_version || "unknown";
  $("#recordings").textContent = S.info.recordings || "none (--recordings DIR)";
  $("#reload-button").disabled = !S.info.server.pid_file;
  $("#reload-after").disabled = !S.info.server.pid_file;
  renderFiles();
  await openFile(S.info.rules_name);
  showTab("problems");
  document.body.dataset.ready = "1";
}

main();
window.workbench = { view, S, edits, openFile };
