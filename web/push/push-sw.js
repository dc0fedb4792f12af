// Service worker part of the TI-Messenger web app that shows Web Push notifications.
//
// A push from tim-push-gateway carries no message content (TI-M C-03): room id, event id, the
// event type and the unread count (Sygnal's webpush payload keys). The notification therefore
// says only that something new arrived; the app fetches and decrypts the event when opened.
// One notification per room (tag = room id) is replaced by the next, as the push's Topic does.

const TITLE = 'TI-Messenger';

function describe(payload) {
  if (payload.type === 'm.room.member') return 'Neue Einladung';
  if (payload.unread > 1) return `${payload.unread} ungelesene Nachrichten`;
  return 'Neue Nachricht';
}

async function show(payload) {
  if (typeof payload.unread === 'number' && self.navigator.setAppBadge) {
    await self.navigator.setAppBadge(payload.unread).catch(() => {});
  }
  if (!payload.event_id) return; // badge-only update
  await self.registration.showNotification(TITLE, {
    body: describe(payload),
    tag: payload.room_id || payload.event_id,
    renotify: true,
    data: { room_id: payload.room_id, event_id: payload.event_id },
  });
}

self.addEventListener('push', (event) => {
  let payload = {};
  try {
    payload = event.data ? event.data.json() : {};
  } catch (_) {
    // Not ours or damaged: still tell the user something arrived (browsers require a
    // visible notification for every push).
    payload = { event_id: 'unknown' };
  }
  event.waitUntil(show(payload));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const room = event.notification.data && event.notification.data.room_id;
  const url = room ? `/#/room/${encodeURIComponent(room)}` : '/';
  event.waitUntil(
    self.clients.matchAll({ type: 'window', includeUncontrolled: true }).then((windows) => {
      for (const w of windows) {
        if ('focus' in w) return w.navigate(url).then((c) => (c || w).focus());
      }
      return self.clients.openWindow(url);
    }),
  );
});
