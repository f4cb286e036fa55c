// The demo chat page's script (index.html beside it; served by gateway/src/demo.rs).
//
// Pick a nickname and a room (channel `demo:<room>`); messages show their sender
// and time, the members list follows presence and join/leave events, entering a
// room shows its recent history, the header shows the connection state, and after
// a drop the subscription recovers what was missed. With several endpoints
// (`?ws=a,b` or the node's `demo.endpoints`) an endpoint that stays unreachable
// for FAILOVER_MS is left for the next, the subscription starting again from the
// last publication seen (`since`), so recovery works across nodes.
//
// Only the public client protocol, through the centrifuge-js browser build. What
// users send is put in the page with textContent, never as markup.
'use strict';

(() => {
  const NICK_RE = /^[A-Za-z0-9_-]{1,24}$/;
  const ROOM_RE = /^[A-Za-z0-9_-]{1,32}$/;
  /** An endpoint still unreachable this long after the connection dropped is left. */
  const FAILOVER_MS = 3000;
  /** Messages of the room's history shown on entering. */
  const HISTORY_LIMIT = 50;
  /** Items kept in the message list, so that a long conversation stays light. */
  const MAX_ITEMS = 500;
  const MAX_TEXT = 2000;
  /** Bound on a token request. */
  const TOKEN_TIMEOUT_MS = 5000;

  const el = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  /** From /demo/config.json: whether this node mints tokens, the rooms' namespace, endpoints. */
  let settings = { mint: false, namespace: 'demo', endpoints: [] };
  /** The room being shown, or null while the join form is. */
  let room = null;

  // ---- Page helpers ------------------------------------------------------

  function setStatus(state, text, endpoint) {
    const s = el('status');
    s.dataset.state = state;
    s.textContent = text;
    s.title = text;
    if (endpoint) {
      s.dataset.endpoint = endpoint;
    } else {
      delete s.dataset.endpoint;
    }
  }

  function span(className, text) {
    const s = document.createElement('span');
    s.className = className;
    s.textContent = text;
    return s;
  }

  /** Run `change` on the message list, keeping it scrolled to the end if it was. */
  function changeMessages(change) {
    const list = el('messages');
    const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    change(list);
    while (list.children.length > MAX_ITEMS) {
      list.firstElementChild.remove();
    }
    if (atEnd) {
      list.scrollTop = list.scrollHeight;
    }
  }

  function notice(text, warn = false) {
    const li = document.createElement('li');
    li.className = warn ? 'notice warn' : 'notice';
    li.textContent = text;
    changeMessages((list) => list.append(li));
  }

  /** A readable reason from an SDK error ({code, message}) or an Error. */
  function describe(err) {
    if (!err) return 'unknown error';
    if (err.message) return err.code ? `${err.message} (${err.code})` : err.message;
    return String(err.code || err);
  }

  function messageText(data) {
    const text = data && typeof data.text === 'string' ? data.text : JSON.stringify(data);
    return String(text).slice(0, MAX_TEXT);
  }

  /** When the sender says it sent the message, if that is plausible; else now. */
  function sentAt(data) {
    const ts = data && data.ts;
    return Number.isFinite(ts) && ts > 0 ? new Date(ts) : new Date();
  }

  /** The `sub` claim of a JWT, for display (the node verifies the token). */
  function jwtSub(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(atob(part)).sub || '';
    } catch (_) {
      return '';
    }
  }

  // ---- Endpoints and tokens ----------------------------------------------

  /** `?ws=a,b`, else the node's `demo.endpoints`, else this page's own node. */
  function endpointList() {
    const given = (params.get('ws') || '')
      .split(',')
      .map((s) => s.trim())
      .filter((s) => /^wss?:\/\/[^\s]+$/.test(s));
    if (given.length) return given;
    if (settings.endpoints.length) return settings.endpoints.slice();
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return [`${scheme}//${location.host}/connection/websocket`];
  }

  class TokenRefused extends Error {}

  /**
   * Where to ask for a token to connect to `endpoint`: that endpoint's own node,
   * since in development mode every node signs with a secret of its own.
   */
  function tokenUrl(endpoint) {
    try {
      const u = new URL(endpoint);
      u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
      u.pathname = '/demo/token';
      u.search = '';
      return u.href;
    } catch (_) {
      return new URL('/demo/token', location.href).href;
    }
  }

  /** A connection token for `nick`, valid on the node of `endpoint`. */
  async function fetchToken(nick, endpoint) {
    const url = tokenUrl(endpoint);
    let resp;
    try {
      resp = await fetch(url, {
        method: 'POST',
        body: new URLSearchParams({ user: nick }),
        cache: 'no-store',
        signal: AbortSignal.timeout(TOKEN_TIMEOUT_MS),
      });
    } catch (err) {
      throw new Error(`${url}: ${describe(err)}`);
    }
    const body = await resp.json().catch(() => ({}));
    if (resp.ok && typeof body.token === 'string') return body.token;
    if (resp.status === 400 || resp.status === 413) {
      throw new TokenRefused(body.error || `the node refused (${resp.status})`);
    }
    throw new Error(body.error || `${url}: HTTP ${resp.status}`);
  }

  // ---- A room ------------------------------------------------------------

  class Room {
    constructor(nick, name, token) {
      this.nick = nick;
      this.name = name;
      this.channel = `${settings.namespace}:${name}`;
      this.token = token;
      this.endpoints = endpointList();
      this.index = 0;
      /** {offset, epoch} of the last publication shown: where to resume from. */
      this.position = null;
      /** Members by client id (a user may have several connections). */
      this.members = new Map();
      this.client = null;
      this.sub = null;
      this.failover = null;
      this.connectedOnce = false;
      this.closed = false;
    }

    get endpoint() {
      return this.endpoints[this.index];
    }

    /** Connect to the current endpoint and subscribe from the last position seen. */
    open() {
      const endpoint = this.endpoint;
      const client = new Centrifuge(endpoint, {
        token: this.token,
        getToken: settings.mint ? () => this.renewToken() : null,
        minReconnectDelay: 300,
        maxReconnectDelay: 5000,
        name: 'demo-page',
      });
      client.on('connecting', (ctx) => {
        const again = this.connectedOnce;
        const why = again && ctx.reason ? ` (${ctx.reason})` : '';
        setStatus(again ? 'reconnecting' : 'connecting',
          `${again ? 'Reconnecting' : 'Connecting'} to ${endpoint}…${why}`, endpoint);
        this.armFailover();
      });
      client.on('connected', () => {
        this.connectedOnce = true;
        this.disarmFailover();
        setStatus('connected', `Connected to ${endpoint} as ${this.nick}`, endpoint);
      });
      client.on('disconnected', (ctx) => {
        this.disarmFailover();
        setStatus('disconnected', `Disconnected: ${ctx.reason} (${ctx.code})`);
        notice(`Disconnected: ${ctx.reason}. Leave the room and join again to retry.`, true);
      });
      const sub = client.newSubscription(this.channel, {
        recoverable: true,
        positioned: true,
        joinLeave: true,
        since: this.position ? { offset: this.position.offset, epoch: this.position.epoch } : null,
      });
      sub.on('subscribed', (ctx) => this.onSubscribed(ctx));
      sub.on('publication', (ctx) => this.onPublication(ctx));
      sub.on('join', (ctx) => this.onJoin(ctx.info));
      sub.on('leave', (ctx) => this.onLeave(ctx.info));
      sub.on('unsubscribed', (ctx) => {
        if (ctx.code >= 2000 && ctx.code !== 2500) notice(`Unsubscribed: ${ctx.reason}`, true);
      });
      this.client = client;
      this.sub = sub;
      sub.subscribe();
      client.connect();
    }

    close() {
      this.closed = true;
      this.teardown();
    }

    teardown() {
      this.disarmFailover();
      const { client, sub } = this;
      this.client = null;
      this.sub = null;
      if (sub) sub.removeAllListeners();
      if (client) {
        client.removeAllListeners();
        client.disconnect();
      }
    }

    armFailover() {
      if (this.endpoints.length < 2 || this.failover !== null || this.closed) return;
      this.failover = setTimeout(() => {
        this.failover = null;
        this.moveOn();
      }, FAILOVER_MS);
    }

    disarmFailover() {
      clearTimeout(this.failover);
      this.failover = null;
    }

    /** The endpoint stayed unreachable: the next one, from the same position. */
    moveOn() {
      if (this.closed || !this.client || this.client.state === 'connected') return;
      const from = this.endpoint;
      this.teardown();
      this.index = (this.index + 1) % this.endpoints.length;
      notice(`${from} is unreachable: moving to ${this.endpoint}`, true);
      // A minted token is valid on the node that signed it only: with none, the
      // SDK asks getToken, which asks the next endpoint's node.
      if (settings.mint) this.token = '';
      this.open();
    }

    async renewToken() {
      try {
        this.token = await fetchToken(this.nick, this.endpoint);
        return this.token;
      } catch (err) {
        // A refusal ends the connection; anything else is retried by the SDK.
        if (err instanceof TokenRefused) throw new Centrifuge.UnauthorizedError(err.message);
        throw err;
      }
    }

    onSubscribed(ctx) {
      const pos = ctx.streamPosition;
      if (ctx.wasRecovering && ctx.recovered) {
        if (pos && this.position) this.position.epoch = pos.epoch;
        notice(ctx.hasRecoveredPublications
          ? 'Back: recovering the messages you missed'
          : 'Back: nothing was missed');
      } else {
        if (ctx.wasRecovering) notice('Back, but some messages could not be recovered', true);
        if (pos) this.position = { offset: pos.offset, epoch: pos.epoch };
        this.loadHistory();
      }
      this.loadPresence();
    }

    onPublication(ctx) {
      const epoch = this.position ? this.position.epoch : '';
      if (typeof ctx.offset === 'number' && this.position) {
        // In order from the SDK: an offset not past the position is a repeat.
        if (ctx.offset <= this.position.offset) return;
        this.position.offset = ctx.offset;
      }
      this.place(this.render(ctx, epoch));
    }

    /** A message's list item; the sender is the user the node verified. */
    render(pub, epoch) {
      const li = document.createElement('li');
      const user = pub.info && pub.info.user ? pub.info.user : 'server';
      li.className = user === this.nick ? 'msg mine' : 'msg';
      if (typeof pub.offset === 'number') {
        li.dataset.offset = String(pub.offset);
        li.dataset.epoch = epoch;
      }
      const at = sentAt(pub.data);
      const time = document.createElement('time');
      time.dateTime = at.toISOString();
      time.textContent = at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      li.append(span('who', user), span('text', messageText(pub.data)), time);
      return li;
    }

    /** Put a message in offset order among those of its epoch; repeats are dropped. */
    place(li) {
      changeMessages((list) => {
        if (li.dataset.offset === undefined) {
          list.append(li);
          return;
        }
        const offset = Number(li.dataset.offset);
        for (const other of list.querySelectorAll('li.msg[data-offset]')) {
          if (other.dataset.epoch !== li.dataset.epoch) continue;
          const o = Number(other.dataset.offset);
          if (o === offset) return;
          if (o > offset) {
            list.insertBefore(li, other);
            return;
          }
        }
        list.append(li);
      });
    }

    async loadHistory() {
      const sub = this.sub;
      let res;
      try {
        res = await sub.history({ limit: HISTORY_LIMIT, reverse: true });
      } catch (err) {
        if (sub === this.sub) notice(`Could not load the room's history: ${describe(err)}`, true);
        return;
      }
      if (sub !== this.sub) return;
      for (const pub of res.publications.slice().reverse()) {
        this.place(this.render(pub, res.epoch));
      }
    }

    async loadPresence() {
      const sub = this.sub;
      let res;
      try {
        res = await sub.presence();
      } catch (err) {
        if (sub === this.sub) notice(`Could not load who is online: ${describe(err)}`, true);
        return;
      }
      if (sub !== this.sub) return;
      this.members = new Map(Object.entries(res.clients).map(([id, info]) => [id, info.user]));
      this.showMembers();
    }

    hasUser(user) {
      for (const u of this.members.values()) {
        if (u === user) return true;
      }
      return false;
    }

    onJoin(info) {
      const known = this.hasUser(info.user);
      this.members.set(info.client, info.user);
      if (!known && info.user !== this.nick) notice(`${info.user} joined`);
      this.showMembers();
    }

    onLeave(info) {
      this.members.delete(info.client);
      if (!this.hasUser(info.user) && info.user !== this.nick) notice(`${info.user} left`);
      this.showMembers();
    }

    showMembers() {
      const users = [...new Set(this.members.values())].sort((a, b) => a.localeCompare(b));
      const items = users.map((user) => {
        const li = document.createElement('li');
        li.dataset.user = user;
        li.textContent = user;
        if (user === this.nick) li.append(span('me', ' (you)'));
        return li;
      });
      el('members').replaceChildren(...items);
      el('member-count').textContent = String(users.length);
    }

    async publish(text) {
      if (!this.sub) throw new Error('not connected');
      await this.sub.publish({ text, ts: Date.now() });
    }
  }

  // ---- The page ------------------------------------------------------------

  function showJoinError(text) {
    el('join-error').textContent = text;
  }

  function setUrl(user, roomName) {
    const url = new URL(location.href);
    for (const [k, v] of [['user', user], ['room', roomName]]) {
      if (v) {
        url.searchParams.set(k, v);
      } else {
        url.searchParams.delete(k);
      }
    }
    history.replaceState(null, '', url);
  }

  async function join(nick, roomName) {
    showJoinError('');
    if (!NICK_RE.test(nick)) {
      showJoinError('A nickname is 1 to 24 letters, digits, "-" or "_".');
      el('nick').focus();
      return;
    }
    if (!ROOM_RE.test(roomName)) {
      showJoinError('A room name is 1 to 32 letters, digits, "-" or "_".');
      el('room').focus();
      return;
    }
    let token = params.get('token');
    if (settings.mint) {
      el('join-button').disabled = true;
      try {
        token = await fetchToken(nick, endpointList()[0]);
      } catch (err) {
        showJoinError(`No token: ${describe(err)}`);
        return;
      } finally {
        el('join-button').disabled = false;
      }
    } else if (!token) {
      showJoinError('This node does not hand out tokens.');
      return;
    }
    room = new Room(nick, roomName, token);
    el('join').hidden = true;
    el('chat').hidden = false;
    el('room-title').textContent = `# ${roomName}`;
    el('me').textContent = `as ${nick}`;
    el('messages').replaceChildren();
    el('members').replaceChildren();
    el('member-count').textContent = '0';
    setUrl(nick, roomName);
    notice(`You joined ${roomName} as ${nick}`);
    room.open();
    el('text').focus();
  }

  function leave() {
    if (room) room.close();
    room = null;
    setUrl('', '');
    el('chat').hidden = true;
    el('join').hidden = false;
    el('send-error').textContent = '';
    setStatus('idle', 'Not connected');
  }

  async function send(event) {
    event.preventDefault();
    const input = el('text');
    const text = input.value.trim();
    if (!text || !room) return;
    if (text.length > MAX_TEXT) {
      el('send-error').textContent = `A message is at most ${MAX_TEXT} characters.`;
      return;
    }
    input.value = '';
    try {
      await room.publish(text);
      el('send-error').textContent = '';
    } catch (err) {
      el('send-error').textContent = `Not sent: ${describe(err)}`;
      if (!input.value) input.value = text;
    }
  }

  async function start() {
    if (typeof Centrifuge !== 'function') {
      showJoinError('The client library did not load (/demo/centrifuge.js).');
      return;
    }
    try {
      const resp = await fetch('/demo/config.json', { cache: 'no-store' });
      if (resp.ok) settings = { ...settings, ...(await resp.json()) };
    } catch (_) {
      // Keep the defaults: no minting, the page's own node.
    }
    el('join-form').addEventListener('submit', (e) => {
      e.preventDefault();
      join(el('nick').value.trim(), el('room').value.trim());
    });
    el('send-form').addEventListener('submit', send);
    el('leave').addEventListener('click', leave);

    const token = params.get('token');
    if (!settings.mint) {
      if (token) {
        el('nick').value = jwtSub(token);
        el('nick').readOnly = true;
        el('nick-hint').textContent = 'From the token given in the address (?token=).';
      } else {
        el('join-button').disabled = true;
        showJoinError('This node has a token key configured, so it does not hand out demo tokens. '
          + 'Open this page with ?token=<connection JWT> (for example from `gateway token --user alice`).');
      }
    }
    const user = params.get('user');
    const roomName = params.get('room');
    if (roomName) el('room').value = roomName;
    if (user && !el('nick').readOnly) el('nick').value = user;
    if (roomName && el('nick').value && (settings.mint || token)) {
      join(el('nick').value.trim(), roomName);
    } else {
      el('nick').focus();
    }
  }

  start();
})();
