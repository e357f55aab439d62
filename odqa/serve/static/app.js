// The page of `odqa serve`: ask a question, see the answer, the passages the reader read and the
// time of each stage. Plain DOM, no framework. Text from the server only ever goes in through
// textContent (never innerHTML), so a passage cannot inject markup.
"use strict";

const KEY_STORAGE = "odqa-api-key"; // sessionStorage: the key lives as long as this tab
const RETRY_MS = 1000; // the server's Retry-After while it loads

const $ = (id) => document.getElementById(id);

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

// fetch() of an API path (relative, so the page also works behind a path prefix), with the key.
function call(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const key = apiKey();
  if (key) headers["Authorization"] = "Bearer " + key;
  return fetch(path, { ...options, headers });
}

// The message of an error response: its {"error": message}, else its status line.
async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch (_) {
    // not JSON: fall through
  }
  return `HTTP ${response.status} ${response.statusText}`.trim();
}

function setStatus(text, state) {
  $("status").textContent = text;
  document.body.dataset.state = state; // loading | key | ready | asking | down
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function needKey(message) {
  $("key-form").hidden = false;
  $("ask").disabled = true;
  setStatus(message, "key");
  $("api-key").focus();
}

// --- start: wait for /readyz, then fill the pipeline picker ---------------------------------
async function waitUntilReady() {
  for (;;) {
    let response = null;
    try {
      response = await call("readyz");
    } catch (_) {
      setStatus("Cannot reach the server; retrying\u2026", "down");
    }
    if (response && response.ok) return;
    if (response) {
      setStatus(`The server is loading its pipelines; retrying\u2026 (${await errorOf(response)})`, "loading");
    }
    await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
  }
}

async function loadPipelines() {
  const response = await call("v1/pipelines");
  if (response.status === 401) {
    needKey(sessionStorage.getItem(KEY_STORAGE)
      ? "The server refused this API key; enter the right one."
      : "This server needs an API key; enter it to ask questions.");
    return false;
  }
  if (!response.ok) {
    showError(await errorOf(response));
    return false;
  }
  const picker = $("pipeline");
  picker.replaceChildren();
  for (const pipeline of await response.json()) {
    const option = document.createElement("option");
    option.value = pipeline.name;
    option.textContent = pipeline.default ? `${pipeline.name} (default)` : pipeline.name;
    option.selected = Boolean(pipeline.default);
    picker.append(option);
  }
  return true;
}

async function start() {
  $("key-form").hidden = !apiKey();
  $("ask").disabled = true;
  showError("");
  await waitUntilReady();
  if (!(await loadPipelines())) return;
  $("key-form").hidden = true;
  $("ask").disabled = false;
  setStatus("Ready.", "ready");
}

// --- asking -----------------------------------------------------------------------------------
async function ask(question) {
  $("ask").disabled = true;
  setStatus("Asking\u2026", "asking");
  showError("");
  try {
    const response = await call("v1/ask", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ question, pipeline: $("pipeline").value || null }),
    });
    if (response.status === 401) {
      sessionStorage.removeItem(KEY_STORAGE);
      needKey("The server refused the API key; enter it again.");
      return;
    }
    if (!response.ok) {
      showError(await errorOf(response));
      setStatus("Ready.", "ready");
      return;
    }
    render(await response.json());
    setStatus("Ready.", "ready");
  } catch (e) {
    showError(`Cannot reach the server: ${e.message}`);
    setStatus("Ready.", "ready");
  } finally {
    if (document.body.dataset.state === "ready") $("ask").disabled = false;
  }
}

function render(answer) {
  $("answer").textContent = answer.answer || ""; // empty: style.css says "(no answer)"
  const score = typeof answer.score === "number" ? answer.score.toFixed(3) : "?";
  $("answer-meta").textContent = `pipeline ${answer.pipeline}, score ${score}`;

  const list = $("passages");
  list.replaceChildren();
  for (const passage of answer.passages || []) {
    const item = document.createElement("li");
    const title = document.createElement("h3");
    title.className = "title";
    title.textContent = passage.title || passage.id;
    const text = document.createElement("p");
    text.className = "text";
    text.append(...highlighted(passage.text ?? passage.content ?? "", answer.answer || ""));
    const meta = document.createElement("p");
    meta.className = "meta";
    const passageScore = typeof passage.score === "number" ? `, score ${passage.score.toFixed(3)}` : "";
    meta.textContent = `id ${passage.id}${passageScore}`;
    item.append(title, text, meta);
    list.append(item);
  }
  if (!list.children.length) {
    const none = document.createElement("li");
    none.textContent = "(no passage was read)";
    list.append(none);
  }

  const rows = $("timings").tBodies[0];
  rows.replaceChildren();
  for (const [stage, seconds] of Object.entries(answer.timings || {})) {
    const row = rows.insertRow();
    row.insertCell().textContent = stage;
    const ms = row.insertCell();
    ms.textContent = (seconds * 1000).toFixed(1);
    ms.className = "number";
  }
  $("result").hidden = false;
}

// Text nodes of `text`, with each case-insensitive occurrence of `span` inside a <mark>.
function highlighted(text, span) {
  const needle = span.trim();
  if (!needle) return [document.createTextNode(text)];
  const pattern = new RegExp(needle.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "giu");
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
    const mark = document.createElement("mark");
    mark.textContent = match[0];
    nodes.push(mark);
    last = match.index + match[0].length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

// --- wiring -----------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  // A submit event: the Ask button, or Enter in the question box.
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!$("ask").disabled) ask($("question").value);
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    $("api-key").value = "";
    start();
  });
  start();
});
