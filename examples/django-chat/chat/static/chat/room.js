// The room page: the centrifuge-js SDK instead of a raw WebSocket and a consumer.
// Django mints the connection token; a message is sent as the `send` RPC, which
// Django stores and publishes in one transaction (views.rpc_proxy), and arrives as
// a publication like every other; moderators' edits and deletions are server-side
// publications too.
(function () {
  const read = (id) => JSON.parse(document.getElementById(id).textContent);
  const log = document.getElementById('chat-log');
  const input = document.getElementById('chat-message-input');
  const status = document.getElementById('chat-status');
  const shown = new Map();

  function show(event) {
    if (event.type === 'message' && !shown.has(event.id)) {
      const li = document.createElement('li');
      li.textContent = `${event.user}: ${event.text}`;
      log.appendChild(li);
      shown.set(event.id, { li, user: event.user });
    } else if (event.type === 'edit' && shown.has(event.id)) {
      const m = shown.get(event.id);
      m.li.textContent = `${m.user}: ${event.text} (edited)`;
    } else if (event.type === 'delete' && shown.has(event.id)) {
      shown.get(event.id).li.remove();
      shown.delete(event.id);
    }
  }
  read('recent').forEach(show);

  async function getToken() {
    const res = await fetch(window.CHAT_TOKEN_URL, { credentials: 'same-origin' });
    if (res.status === 403) throw new Centrifuge.UnauthorizedError('logged out');
    if (!res.ok) throw new Error(`token: HTTP ${res.status}`);
    return (await res.json()).token;
  }

  const room = read('room-name');
  const client = new Centrifuge(read('ws-url'), { getToken });
  client.on('disconnected', (ctx) => { status.textContent = `disconnected: ${ctx.reason}`; });
  client.on('connected', () => { status.textContent = ''; });
  const sub = client.newSubscription(read('channel'), { recoverable: true });
  sub.on('publication', (ctx) => show(ctx.data));
  sub.subscribe();
  client.connect();

  async function send() {
    const text = input.value.trim();
    if (!text) return;
    try {
      await client.rpc('send', { room, text });
      input.value = '';
    } catch (e) {
      status.textContent = `not sent: ${e.message}`;
    }
  }
  document.getElementById('chat-message-submit').onclick = send;
  input.onkeyup = (e) => { if (e.key === 'Enter') send(); };
})();
