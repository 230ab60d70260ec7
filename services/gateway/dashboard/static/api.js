// Talking to the gateway: relative URLs (the page works from any machine that reaches the gateway), the API key
// as a Bearer header when one is needed. Server-sent events are read with fetch, not EventSource, because
// EventSource cannot send a header and a key in the URL would land in logs and browser history.

const KEY = "exo-api-key";
let onUnauthorized = () => {};

export function setUnauthorizedHandler(handler) { onUnauthorized = handler; }
export function setKey(key) { key ? localStorage.setItem(KEY, key) : localStorage.removeItem(KEY); }

function headers(extra = {}) {
  const key = localStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

export class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function check(response) {
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  try { message = (await response.json()).error?.message || message; } catch { /* not JSON */ }
  if (response.status === 401) onUnauthorized(message);
  throw new HttpError(response.status, message);
}

export async function getJSON(url) {
  return (await check(await fetch(url, { headers: headers() }))).json();
}

export async function sendJSON(method, url, body) {
  const init = { method, headers: headers({ "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  return (await check(await fetch(url, init))).json();
}

// Reads a text/event-stream response; calls onEvent(name, data) per event ("message" when unnamed).
export async function readSSE(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      let name = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

// Follows an SSE endpoint for as long as the page lives, reconnecting after a drop.
export async function follow(url, onEvent, onState) {
  for (;;) {
    try {
      const response = await check(await fetch(url, { headers: headers({ Accept: "text/event-stream" }) }));
      onState("on");
      await readSSE(response, onEvent);
      onState("off");
    } catch (err) {
      onState(err.status === 401 ? "locked" : "off");
      if (err.status === 401) await new Promise((resolve) => { keyEntered = resolve; });
    }
    await new Promise((r) => setTimeout(r, 1500));
  }
}

let keyEntered = () => {};
export function keyWasEntered() { keyEntered(); }

// POST /v1/chat/completions with stream: true; onText(piece) per token chunk.
export async function streamChat(model, messages, onText) {
  const response = await check(await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify({ model, messages, stream: true, max_tokens: 256, temperature: 0.7 }),
  }));
  await readSSE(response, (_name, data) => {
    if (data === "[DONE]") return;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new Error(chunk.error.message);
    const piece = chunk.choices?.[0]?.delta?.content;
    if (piece) onText(piece);
  });
}
