// The chat page's behaviour: streams replies from POST /v1/chat/completions (SSE), renders them
// as Markdown (markdown.js), and keeps conversations and settings in the browser (storage.js).
import { renderMarkdown } from './markdown.js';
import { Store } from './storage.js';

const $ = (id) => document.getElementById(id);
const els = {
  system: $('system'), temperature: $('temperature'), topP: $('top-p'), maxTokens: $('max-tokens'), seed: $('seed'),
  apiKey: $('api-key'), input: $('input'), send: $('send'), stop: $('stop'), newChat: $('new-chat'),
  messages: $('messages'), status: $('status'), model: $('model-name'), form: $('composer'),
  chatList: $('chat-list'), notice: $('notice'), contextFull: $('context-full'),
  contextDetail: $('context-full-detail'), contextNewChat: $('context-new-chat'), contextDrop: $('context-drop'),
  toggleChats: $('toggle-chats'), toggleSettings: $('toggle-settings'),
};

function showNotice(text) {
  els.notice.textContent = text;
  els.notice.hidden = false;
}

const store = new Store(showNotice);
const newConversation = () => ({
  id: Date.now().toString(36) + Math.random().toString(36).slice(2, 8),
  title: '', renamed: false, updated: Date.now(), contextStart: 0, messages: [],
});

// Every conversation, most recently used first; `current` is the open one (maybe still empty,
// and then not saved until its first message).
let conversations = store.loadConversations();
let current = conversations.find((c) => c.id === store.loadCurrent()) || newConversation();
if (!conversations.includes(current)) conversations.unshift(current);

let modelId = '';
let controller = null;   // AbortController of the request in flight, or null when idle.
let chatEpoch = 0;       // Bumped when another conversation is opened, so a late reply leaves the page alone.

function setStatus(text, isError = false) {
  els.status.textContent = text;
  els.status.classList.toggle('error', isError);
}

function saveAll() {
  store.saveConversations(conversations);
  store.saveCurrent(current.id);
}

// ---- Settings ------------------------------------------------------------------------------
// The inputs' text is stored as typed, so a reload shows exactly what was there.
const SETTINGS = { system: els.system, temperature: els.temperature, top_p: els.topP, max_tokens: els.maxTokens, seed: els.seed };
{
  const saved = store.loadSettings();
  for (const [key, input] of Object.entries(SETTINGS)) {
    if (typeof saved[key] === 'string') input.value = saved[key];
  }
}
function saveSettings() {
  const values = {};
  for (const [key, input] of Object.entries(SETTINGS)) values[key] = input.value;
  store.saveSettings(values);
}
for (const input of Object.values(SETTINGS)) input.addEventListener('input', saveSettings);

function numberOr(input, fallback) {
  const v = input.valueAsNumber;
  return Number.isFinite(v) ? v : fallback;
}

// ---- Messages on the page ------------------------------------------------------------------
function nearBottom() {
  const m = els.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}
function scrollToBottom() { els.messages.scrollTop = els.messages.scrollHeight; }

// User messages and errors are plain text (textContent); assistant messages are Markdown,
// rendered through DOMPurify (markdown.js).
function renderInto(el, text) {
  if (el.classList.contains('assistant')) el.replaceChildren(renderMarkdown(text));
  else el.textContent = text;
}

function addMessage(kind, text) {
  const stick = nearBottom();
  const div = document.createElement('div');
  div.className = 'message ' + kind;
  renderInto(div, text);
  if (kind === 'error') div.setAttribute('role', 'alert');
  els.messages.appendChild(div);
  if (stick || kind === 'user') scrollToBottom();
  return div;
}

function renderConversation() {
  els.messages.replaceChildren();
  current.messages.forEach((m, i) => {
    if (i === current.contextStart && i > 0) {
      const divider = document.createElement('div');
      divider.className = 'context-divider';
      divider.textContent = 'The turns above no longer fit in the model\'s context and are not sent to it.';
      els.messages.appendChild(divider);
    }
    const el = addMessage(m.role, m.content);
    if (i < current.contextStart) el.classList.add('dropped');
    if (m.role === 'assistant' && m.finish) el.dataset.finish = m.finish;
  });
  scrollToBottom();
}

// ---- The conversation list -----------------------------------------------------------------
const titleOf = (c) => c.title || 'New chat';

// A small icon button of the conversation list: its class, glyph, tooltip, accessible label and
// action.
function iconButton(className, glyph, title, label, onClick) {
  const button = document.createElement('button');
  button.type = 'button';
  button.className = className;
  button.textContent = glyph;
  button.title = title;
  button.setAttribute('aria-label', label);
  button.addEventListener('click', onClick);
  return button;
}
function renderList() {
  els.chatList.replaceChildren(...conversations.filter((c) => c.messages.length > 0).map((c) => {
    const li = document.createElement('li');
    li.className = 'chat-item' + (c === current ? ' current' : '');
    li.dataset.id = c.id;
    const open = document.createElement('button');
    open.type = 'button';
    open.className = 'chat-open';
    open.textContent = titleOf(c);
    open.title = titleOf(c);
    if (c === current) open.setAttribute('aria-current', 'true');
    open.addEventListener('click', () => openConversation(c));
    const rename = iconButton('chat-rename', '✎', 'Rename', `Rename “${titleOf(c)}”`,
                              () => startRename(li, c));
    const del = iconButton('chat-delete', '×', 'Delete', `Delete “${titleOf(c)}”`,
                           () => deleteConversation(c));
    li.append(open, rename, del);
    return li;
  }));
}

function startRename(li, c) {
  const input = document.createElement('input');
  input.type = 'text';
  input.value = titleOf(c);
  input.setAttribute('aria-label', 'New name');
  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    const name = input.value.trim();
    if (save && name) { c.title = name; c.renamed = true; saveAll(); }
    renderList();
  };
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); finish(true); }
    else if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); finish(false); }
  });
  input.addEventListener('blur', () => finish(true));
  li.replaceChildren(input);
  input.focus();
  input.select();
}

function deleteConversation(c) {
  if (!window.confirm(`Delete the conversation “${titleOf(c)}”? This cannot be undone.`)) return;
  c.deleted = true;   // a reply still streaming into it must not bring it back (send)
  conversations = conversations.filter((x) => x !== c);
  if (c === current) {
    // Open the most recent remaining conversation, or a new one.
    openConversation(conversations.find((x) => x.messages.length > 0) || newConversation(), { status: 'Conversation deleted.' });
  } else {
    saveAll();
    renderList();
    setStatus('Conversation deleted.');
  }
}

function openConversation(c, { status = '' } = {}) {
  chatEpoch++;
  stop();   // a reply still streaming ends here and is kept in its own conversation
  conversations = conversations.filter((x) => x.messages.length > 0 || x === c);
  if (!conversations.includes(c)) conversations.unshift(c);
  current = c;
  hideContextFull();
  renderConversation();
  renderList();
  saveAll();
  closeDrawers();
  setStatus(status || (c.messages.length ? `Opened “${titleOf(c)}”.` : 'New chat.'));
}

function newChat() {
  if (current.messages.length === 0 && !controller) {   // already on an empty chat
    hideContextFull();
    setStatus('New chat.');
    els.input.focus();
    return;
  }
  openConversation(newConversation());
  els.input.focus();
}

// ---- Drawers (narrow screens) --------------------------------------------------------------
function setDrawer(name) {
  document.body.classList.toggle('show-chats', name === 'chats');
  document.body.classList.toggle('show-settings', name === 'settings');
  els.toggleChats.setAttribute('aria-expanded', String(name === 'chats'));
  els.toggleSettings.setAttribute('aria-expanded', String(name === 'settings'));
}
function closeDrawers() { setDrawer(null); }
els.toggleChats.addEventListener('click', () => setDrawer(document.body.classList.contains('show-chats') ? null : 'chats'));
els.toggleSettings.addEventListener('click', () => setDrawer(document.body.classList.contains('show-settings') ? null : 'settings'));
// A tap beside an open drawer (on the dimmed chat) closes it.
document.querySelector('main').addEventListener('click', (e) => {
  if (document.body.matches('.show-chats, .show-settings')) { e.preventDefault(); e.stopPropagation(); closeDrawers(); }
}, true);

// ---- Copy buttons of code blocks -----------------------------------------------------------
async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try { await navigator.clipboard.writeText(text); return true; } catch { /* fall back below */ }
  }
  // Plain-HTTP pages (a server on the LAN) have no navigator.clipboard.
  const ta = document.createElement('textarea');
  ta.value = text;
  ta.setAttribute('readonly', '');
  ta.style.position = 'fixed';
  ta.style.opacity = '0';
  document.body.appendChild(ta);
  ta.select();
  let ok = false;
  try { ok = document.execCommand('copy'); } catch { ok = false; }
  ta.remove();
  return ok;
}
els.messages.addEventListener('click', async (e) => {
  const button = e.target.closest('.copy-code');
  if (!button) return;
  const code = button.closest('.code-block')?.querySelector('pre code');
  if (!code) return;
  const ok = await copyText(code.textContent);
  button.textContent = ok ? 'Copied' : 'Copy failed';
  setTimeout(() => { button.textContent = 'Copy'; }, 1500);
});

// ---- Talking to the server -----------------------------------------------------------------
function authHeaders() {
  const key = els.apiKey.value.trim();
  return key ? { Authorization: 'Bearer ' + key } : {};
}

function setBusy(busy) {
  els.send.disabled = busy;
  els.stop.disabled = !busy;
  els.messages.setAttribute('aria-busy', busy ? 'true' : 'false');
}

// An error answer of the server: its readable text and OpenAI-style error code.
class ApiFailure extends Error {
  constructor(message, code) { super(message); this.code = code; }
}

async function readError(res) {
  let body = '';
  try { body = await res.text(); } catch { /* ignore */ }
  let msg = '';
  let code = '';
  try {
    const j = JSON.parse(body);
    if (j && j.error) {
      msg = typeof j.error === 'string' ? j.error : (j.error.message || JSON.stringify(j.error));
      code = (j.error && j.error.code) || '';
    }
  } catch { msg = body.trim().slice(0, 500); }
  const head = 'HTTP ' + res.status + (res.statusText ? ' ' + res.statusText : '');
  if (res.status === 401 && !els.apiKey.value.trim()) msg = (msg ? msg + ' ' : '') + '(set the API key in Settings)';
  return new ApiFailure(msg ? head + ': ' + msg : head, code);
}

async function loadModel() {
  try {
    const res = await fetch('/v1/models', { headers: authHeaders() });
    if (!res.ok) {
      if (res.status === 401) setStatus('This server needs an API key: enter it in Settings.', true);
      return;
    }
    const j = await res.json();
    const m = j && Array.isArray(j.data) && j.data[0];
    modelId = (m && m.id) ? String(m.id) : '';
    els.model.textContent = modelId;
    if (els.status.classList.contains('error')) setStatus('Ready.');
  } catch { /* the header simply stays without a model name */ }
}

// Parses a text/event-stream body incrementally; calls onData(payload) for each event.
// onData returns true to stop reading ([DONE]). Handles lines and UTF-8 split across reads.
async function readSSE(body, onData, onBatch) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let data = [];
  const dispatch = () => {
    if (!data.length) return false;
    const payload = data.join('\n');
    data = [];
    return onData(payload);
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buf += done ? decoder.decode() : decoder.decode(value, { stream: true });
      let nl;
      let stop = false;
      while (!stop && (nl = buf.indexOf('\n')) >= 0) {
        let line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') { stop = dispatch(); continue; }
        if (line.startsWith(':')) continue;               // SSE comment / keep-alive
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? '' : line.slice(colon + 1);
        if (val.startsWith(' ')) val = val.slice(1);
        if (field === 'data') data.push(val);
      }
      onBatch();
      if (stop) { reader.cancel().catch(() => {}); return true; }
      if (done) {
        if (buf.trim() !== '' && buf.replace(/\r$/, '').startsWith('data:')) data.push(buf.replace(/^data: ?/, '').replace(/\r$/, ''));
        const ended = dispatch();
        onBatch();
        return ended;
      }
    }
  } finally {
    try { reader.releaseLock(); } catch { /* ignore */ }
  }
}

function titleFrom(text) {
  const line = text.trim().split('\n')[0].replace(/\s+/g, ' ');
  return line.length > 48 ? line.slice(0, 47) + '…' : line;
}

// Sends `text` as the next user turn of the open conversation and streams the reply into it.
// Returns how it ended: 'done', 'aborted', 'error', 'truncated', 'context' (the server said the
// conversation does not fit its context) or 'busy' (nothing sent).
async function send(text) {
  if (controller || text.trim() === '') return 'busy';
  const conv = current;
  hideContextFull();

  const userMsg = { role: 'user', content: text };
  const messages = [];
  const system = els.system.value.trim();
  if (system) messages.push({ role: 'system', content: system });
  for (const m of conv.messages.slice(conv.contextStart)) messages.push({ role: m.role, content: m.content });
  messages.push(userMsg);

  const userEl = addMessage('user', text);
  els.input.value = '';
  autosize();
  const reply = addMessage('assistant', '');
  reply.classList.add('streaming');

  controller = new AbortController();
  const myController = controller;
  const myEpoch = chatEpoch;
  setBusy(true);
  setStatus('Generating…');
  const t0 = performance.now();
  let replyText = '';
  let pending = '';
  let chunks = 0;
  let finish = null;
  let streamError = null;
  let usage = null;

  // Markdown is re-rendered from the whole text on each update. That costs more as the reply
  // grows, so updates wait until 4 times the last render's time has passed since it ended: a
  // short reply shows every piece as it arrives, a long one spends at most a fifth of the time
  // rendering.
  let renderEnd = 0;
  let renderCost = 0;
  let renderTimer = null;
  const render = () => {
    clearTimeout(renderTimer);
    renderTimer = null;
    const start = performance.now();
    const stick = nearBottom();
    renderInto(reply, replyText);
    if (stick) scrollToBottom();
    renderEnd = performance.now();
    renderCost = renderEnd - start;
  };
  const flush = () => {
    if (!pending) return;
    replyText += pending;
    pending = '';
    const wait = 4 * renderCost - (performance.now() - renderEnd);
    if (wait <= 0) render();
    else if (!renderTimer) renderTimer = setTimeout(render, wait);
  };

  let outcome = 'done';
  let failure = null;
  try {
    const body = {
      messages, stream: true,
      temperature: numberOr(els.temperature, 0.8),
      top_p: numberOr(els.topP, 1),
      max_tokens: Math.max(1, Math.round(numberOr(els.maxTokens, 256))),
    };
    const seed = els.seed.valueAsNumber;
    if (Number.isInteger(seed)) body.seed = seed;
    if (modelId) body.model = modelId;
    const res = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: Object.assign({ 'Content-Type': 'application/json', Accept: 'text/event-stream' }, authHeaders()),
      body: JSON.stringify(body),
      signal: myController.signal,
    });
    if (!res.ok) throw await readError(res);
    if (!res.body) throw new Error('The response has no body.');
    const sawDone = await readSSE(res.body, (payload) => {
      if (payload.trim() === '[DONE]') return true;
      let j;
      try { j = JSON.parse(payload); } catch { return false; }   // ignore malformed events
      if (j.error) {
        streamError = typeof j.error === 'string' ? j.error : (j.error.message || JSON.stringify(j.error));
        return true;
      }
      if (j.usage) usage = j.usage;
      const c = j.choices && j.choices[0];
      if (!c) return false;
      const piece = c.delta && typeof c.delta.content === 'string' ? c.delta.content : '';
      if (piece) { pending += piece; chunks++; }
      if (c.finish_reason) finish = c.finish_reason;
      return false;
    }, flush);
    flush();
    if (streamError) throw new Error(streamError);
    if (!sawDone && !finish) outcome = 'truncated';
  } catch (e) {
    flush();
    if (e && e.name === 'AbortError') outcome = 'aborted';
    else if (e instanceof ApiFailure && e.code === 'context_length_exceeded') { outcome = 'context'; failure = e; }
    else {
      outcome = 'error';
      const msg = e && e.message ? e.message : String(e);
      addMessage('error', e instanceof TypeError ? 'Could not reach the server: ' + msg : msg);
    }
  } finally {
    render();
    reply.classList.remove('streaming');
    if (controller === myController) controller = null;
    setBusy(!!controller);
  }

  const here = myEpoch === chatEpoch;   // false: another conversation was opened meanwhile
  const secs = (performance.now() - t0) / 1000;
  const tokens = usage && usage.completion_tokens ? usage.completion_tokens : chunks;
  const rate = secs > 0 ? ' (' + (tokens / secs).toFixed(1) + ' tok/s)' : '';

  if (replyText === '' && outcome !== 'done') {
    // Nothing came back: take the turn back so the user can edit and resend it.
    reply.remove();
    userEl.remove();
    if (!here) return outcome;
    if (els.input.value === '') { els.input.value = text; autosize(); }
    if (outcome === 'context') {
      showContextFull(failure.message);
      setStatus('The conversation is too long for the model; your message is back in the input.', true);
    } else {
      setStatus(outcome === 'aborted' ? 'Stopped before any reply; your message is back in the input.'
        : outcome === 'error' ? 'The request failed; your message is back in the input.'
          : 'The server closed the stream without a reply.', outcome !== 'aborted');
    }
    return outcome;
  }

  // The turn is kept in its conversation even if another one is open by now (not if deleted).
  if (conv.deleted) return outcome;
  const finishTag = outcome === 'done' ? (finish || 'stop') : outcome;
  conv.messages.push(userMsg, { role: 'assistant', content: replyText, finish: finishTag });
  if (!conv.renamed && !conv.title) conv.title = titleFrom(text);
  conv.updated = Date.now();
  conversations = [conv, ...conversations.filter((c) => c !== conv)];
  saveAll();
  renderList();
  if (!here) return outcome;

  reply.dataset.finish = finishTag;
  if (outcome === 'aborted') setStatus('Stopped after ' + tokens + ' tokens; the partial reply is kept.');
  else if (outcome === 'error') setStatus('The reply was cut short by an error.', true);
  else if (outcome === 'truncated') setStatus('The server closed the stream early; the partial reply is kept.', true);
  else if (finish === 'length') setStatus('Reached the max-tokens limit: ' + tokens + ' tokens in ' + secs.toFixed(2) + ' s' + rate + '.');
  else setStatus('Done: ' + tokens + ' tokens in ' + secs.toFixed(2) + ' s' + rate + '.');
  return outcome;
}

function stop() { if (controller) controller.abort(); }

// ---- A full context ------------------------------------------------------------------------
function showContextFull(detail) {
  els.contextDetail.textContent = detail ? ` (${detail})` : '';
  els.contextFull.hidden = false;
  els.contextDrop.disabled = current.messages.length <= current.contextStart;
}
function hideContextFull() { els.contextFull.hidden = true; }

// Stops sending the oldest user/assistant pair (they stay visible, dimmed) and sends the
// message again; repeats while the server still says it does not fit and turns remain.
async function dropOldestAndRetry() {
  const conv = current;
  const text = els.input.value;
  if (controller || text.trim() === '') return;
  for (;;) {
    if (conv.messages.length <= conv.contextStart) {
      showContextFull('even the newest message alone does not fit: shorten it or lower Max tokens');
      return;
    }
    let next = conv.contextStart + 1;
    while (next < conv.messages.length && conv.messages[next].role !== 'user') next++;
    conv.contextStart = next;
    saveAll();
    renderConversation();
    const outcome = await send(text);
    if (outcome !== 'context' || conv !== current) return;
  }
}

// ---- Wiring --------------------------------------------------------------------------------
function autosize() {
  els.input.style.height = 'auto';
  els.input.style.height = Math.min(els.input.scrollHeight + 2, 192) + 'px';
}

els.form.addEventListener('submit', (e) => { e.preventDefault(); send(els.input.value); });
els.stop.addEventListener('click', stop);
els.newChat.addEventListener('click', newChat);
els.contextNewChat.addEventListener('click', newChat);
els.contextDrop.addEventListener('click', dropOldestAndRetry);
els.input.addEventListener('input', autosize);
els.input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
    e.preventDefault();
    if (!els.send.disabled) send(els.input.value);
  }
});
document.addEventListener('keydown', (e) => {
  if (e.key !== 'Escape') return;
  if (controller) stop();
  else closeDrawers();
});
els.apiKey.addEventListener('change', loadModel);

// Another tab of this page saved its conversations: take them over while idle, so the two tabs
// do not overwrite each other's lists.
window.addEventListener('storage', (e) => {
  if (e.key !== 'starling.chat.v1.conversations' || controller) return;
  const fresh = store.loadConversations();
  const same = fresh.find((c) => c.id === current.id);
  conversations = same ? fresh : [current, ...fresh];
  if (same) { current = same; renderConversation(); }
  renderList();
});

// The composer's hint does not fit one line on a phone, and a cut-off placeholder reads badly.
const narrow = window.matchMedia('(max-width: 760px)');
const setPlaceholder = () => { els.input.placeholder = narrow.matches ? 'Message' : 'Message (Shift+Enter for a new line)'; };
narrow.addEventListener('change', setPlaceholder);
setPlaceholder();

setBusy(false);
renderConversation();
renderList();
loadModel();
els.input.focus();
