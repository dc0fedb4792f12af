// Web Push subscription of the TI-Messenger web app, as a Matrix pusher for tim-push-gateway.
//
// The pusher follows Sygnal's webpush layout, which tim-push-gateway reads: the pushkey is the
// subscription's p256dh key, `data.endpoint` and `data.auth` the rest of
// PushSubscription.toJSON(); `format: event_id_only` asks the homeserver to send no content.

/** base64url (the gateway's published VAPID key) to the bytes pushManager.subscribe takes. */
export function vapidKeyBytes(base64url) {
  const b64 = base64url.replace(/-/g, '+').replace(/_/g, '/');
  const raw = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

/** Subscribes the service worker registration with the gateway's VAPID key. */
export async function subscribe(registration, vapidPublicKey) {
  return registration.pushManager.subscribe({
    userVisibleOnly: true,
    applicationServerKey: vapidKeyBytes(vapidPublicKey),
  });
}

/**
 * The body of POST /_matrix/client/v3/pushers/set for a subscription.
 * @param {{endpoint: string, keys: {p256dh: string, auth: string}}} json PushSubscription.toJSON()
 */
export function pusherFor(json, { gatewayUrl, appId, appName, deviceName, lang }) {
  if (!json || typeof json.endpoint !== 'string' || !json.keys) {
    throw new Error('not a PushSubscription');
  }
  const { p256dh, auth } = json.keys;
  if (typeof p256dh !== 'string' || typeof auth !== 'string') {
    throw new Error('subscription without keys');
  }
  return {
    kind: 'http',
    app_id: appId,
    pushkey: p256dh,
    app_display_name: appName,
    device_display_name: deviceName,
    lang: lang || 'de',
    data: {
      url: gatewayUrl.replace(/\/+$/, '') + '/_matrix/push/v1/notify',
      format: 'event_id_only',
      endpoint: json.endpoint,
      auth,
    },
    append: false,
  };
}
