// Syntax highlighting for smtpfw's rule language (grammar/smtpfw.lark) and
// for .tests files, as CodeMirror stream parsers: the highlighting only
// colours; every judgement on the text comes from the server's lint.
import { StreamLanguage } from "@codemirror/language";

const DECLARATIONS = new Set(["list", "map", "zone", "plugin", "option", "include", "limit", "counter", "class"]);
const ACTIONS = new Set(["accept", "reject", "tempfail", "disconnect", "tag", "log", "warn", "add_header", "run",
  "score", "use", "apply", "count", "tarpit", "stutter"]);
const KEYWORDS = new Set(["on", "if", "and", "or", "not", "in", "matches", "like", "listed", "lookup", "codes",
  "within", "per", "concurrent", "counting", "tagged", "failed", "file", "by", "mask", "monitor", "regexp", "pcre",
  "dnsbl", "rhsbl"]);
const HOOKS = new Set(["connect", "helo", "mail", "rcpt", "data", "queue", "disconnect"]);

function quoted(stream) {
  let escaped = false, ch;
  while ((ch = stream.next()) != null) {
    if (ch === '"' && !escaped) return true;
    escaped = !escaped && ch === "\\";
  }
  return false;
}

export const rulesLanguage = StreamLanguage.define({
  name: "smtpfw-rules",
  startState: () => ({ afterOn: false }),
  token(stream, state) {
    if (stream.sol()) state.afterOn = false;
    if (stream.eatSpace()) return null;
    const ch = stream.peek();
    if (ch === "#") { stream.skipToEnd(); return "comment"; }
    if (ch === '"') { stream.next(); quoted(stream); return "string"; }
    if (ch === "[" && stream.match(/^\[[A-Za-z0-9_.:-]+\]/)) return "labelName";
    if (stream.match(/^[0-9]+(\.[0-9]+){3}(\/[0-9]+)?/)) return "number";
    if (stream.match(/^[0-9]+(\.[0-9]+)*[smhdKMG]?\b/)) return "number";
    if (stream.match(/^(!=|<=|>=|=|<|>|->|\+|-)/)) return "operator";
    const word = stream.match(/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_-]*)*/);
    if (word) {
      const w = word[0];
      if (state.afterOn && HOOKS.has(w)) { state.afterOn = false; return "typeName"; }
      if (w === "on") { state.afterOn = true; return "keyword"; }
      if (DECLARATIONS.has(w)) return "definitionKeyword";
      if (ACTIONS.has(w)) return "controlKeyword";
      if (KEYWORDS.has(w)) return "keyword";
      if (w.includes(".")) return "propertyName";
      return "variableName";
    }
    stream.next();
    return null;
  },
  languageData: { commentTokens: { line: "#" } },
});

const TEST_WORDS = new Set(["client", "port", "tls", "auth", "unrecognized", "helo", "ehlo", "from", "rcpt",
  "header", "size", "nodata", "at", "dns", "map"]);
const EXPECT_WORDS = new Set(["accept", "no-mail", "reject", "tempfail", "disconnect", "by", "code", "text"]);

export const testsLanguage = StreamLanguage.define({
  name: "smtpfw-tests",
  startState: () => ({ expect: false }),
  token(stream, state) {
    if (stream.sol()) state.expect = false;
    if (stream.eatSpace()) return null;
    if (stream.peek() === "#") { stream.skipToEnd(); return "comment"; }
    if (stream.peek() === '"') { stream.next(); quoted(stream); return "string"; }
    if (stream.match("->")) { state.expect = true; return "operator"; }
    const word = stream.match(/^[^\s"]+/);
    if (word) {
      const w = word[0];
      if (state.expect && EXPECT_WORDS.has(w)) return "controlKeyword";
      if (state.expect && w === "at") return "keyword";
      if (!state.expect && TEST_WORDS.has(w)) return "keyword";
      if (/^[0-9.:\/]+$/.test(w)) return "number";
      return null;
    }
    stream.next();
    return null;
  },
  languageData: { commentTokens: { line: "#" } },
});

export const listLanguage = StreamLanguage.define({
  name: "smtpfw-list",
  token(stream) {
    if (stream.eatSpace()) return null;
    if (stream.peek() === "#") { stream.skipToEnd(); return "comment"; }
    stream.match(/^\S+/);
    return null;
  },
  languageData: { commentTokens: { line: "#" } },
});
