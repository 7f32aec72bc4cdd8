// Conversations and settings kept in the browser's localStorage, under keys of this origin:
//   starling.chat.v1.conversations  [{ id, title, renamed, updated, contextStart, messages: [{ role, content, finish? }] }]
//   starling.chat.v1.current        the id of the open conversation
//   starling.chat.v1.settings       { system, temperature, top_p, max_tokens, seed }
// Storage can be missing (disabled, private mode), full (QuotaExceededError) or hold data that
// does not parse: every such case is reported through onProblem and the page keeps working in
// memory. Unreadable data is copied aside (KEY.unreadable) rather than overwritten unseen.

const PREFIX = 'starling.chat.v1.';
const KEYS = { conversations: PREFIX + 'conversations', current: PREFIX + 'current', settings: PREFIX + 'settings' };

export class Store {
  constructor(onProblem) {
    this.onProblem = onProblem;
    try {
      this.ls = window.localStorage;
      this.ls.getItem(KEYS.current);   // throws where storage is blocked
    } catch (e) {
      this.ls = null;
      onProblem('This browser does not let the page store data, so conversations are lost on reload.');
    }
  }

  read(key, valid, fallback) {
    if (!this.ls) return fallback;
    let text = null;
    try {
      text = this.ls.getItem(key);
      if (text === null) return fallback;
      const value = JSON.parse(text);
      if (valid(value)) return value;
    } catch { /* handled below */ }
    try { this.ls.setItem(key + '.unreadable', text); } catch { /* no room for the copy */ }
    this.onProblem(`The saved data in ${key} could not be read, so it was set aside (${key}.unreadable); starting afresh.`);
    return fallback;
  }

  write(key, value) {
    if (!this.ls) return false;
    try {
      this.ls.setItem(key, typeof value === 'string' ? value : JSON.stringify(value));
      return true;
    } catch (e) {
      const full = e && (e.name === 'QuotaExceededError' || e.code === 22);
      this.onProblem(full
        ? 'The browser\'s storage for this page is full: the latest changes are not saved. Delete old conversations to make room.'
        : `Could not save to the browser's storage: ${e && e.message ? e.message : e}`);
      return false;
    }
  }

  loadConversations() {
    const list = this.read(KEYS.conversations, Array.isArray, []);
    // Keep only well-formed entries: one bad conversation must not take the others down.
    return list.filter((c) => c && typeof c.id === 'string' && Array.isArray(c.messages) &&
      c.messages.every((m) => m && (m.role === 'user' || m.role === 'assistant') && typeof m.content === 'string'))
      .map((c) => ({
        id: c.id,
        title: typeof c.title === 'string' ? c.title : '',
        renamed: !!c.renamed,
        updated: Number(c.updated) || 0,
        contextStart: Number.isInteger(c.contextStart) && c.contextStart >= 0 ? c.contextStart : 0,
        messages: c.messages,
      }));
  }

  saveConversations(list) {
    // Empty conversations (a New chat not used yet) are not worth keeping.
    return this.write(KEYS.conversations, list.filter((c) => c.messages.length > 0));
  }

  loadCurrent() { return this.ls ? this.read(KEYS.current, (v) => typeof v === 'string', null) : null; }
  saveCurrent(id) { return this.write(KEYS.current, JSON.stringify(id)); }

  loadSettings() { return this.read(KEYS.settings, (v) => v && typeof v === 'object' && !Array.isArray(v), {}); }
  saveSettings(settings) { return this.write(KEYS.settings, settings); }
}
