// The platform as the signed-in user reaches it. The sign-in leaves two cookies: `authorization`,
// which the page cannot read and the browser sends by itself, and `XSRF-TOKEN`, which the page reads
// and sends back (a header on REST calls, a query parameter on WebSockets, which take no headers):
// a request another site makes carries the first cookie but cannot know the second.

export const BASE = "/apps/remote-access";

export function xsrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)XSRF-TOKEN=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// A REST call; its JSON answer, or an ApiError with the platform's own sentence. UseXBasic, as the
// platform's web clients send it, keeps a 401 from opening the browser's own password dialog.
export async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    credentials: "same-origin",
    headers: { Accept: "application/json", UseXBasic: "true", "X-XSRF-TOKEN": xsrfToken(), ...options.headers },
  });
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (error) {
    body = null; // not JSON (a proxy's error page): the status line below says what happened
  }
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.message) || `${response.status} ${response.statusText}`);
  }
  return body;
}

// Sign in as the platform's login page does: the tenant's OAUTH2_INTERNAL login option names where
// the password goes (the tenant in its query); a user typed as "tenant/user" names the tenant itself.
export async function signIn(username, password) {
  const options = await api("/tenant/loginOptions");
  const internal = options.loginOptions.find((option) => option.type === "OAUTH2_INTERNAL");
  const target = new URL(internal.initRequest, location.href);
  await api(target.pathname + target.search, {
    method: "POST",
    body: new URLSearchParams({ grant_type: "PASSWORD", username, password }),
  });
}

// The client endpoint of a configuration, as a WebSocket URL on this page's own host.
export function clientUrl(deviceId, configId, query = {}) {
  const url = new URL(`/service/remoteaccess/client/${encodeURIComponent(deviceId)}/configurations/` +
                      encodeURIComponent(configId), location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = new URLSearchParams({ ...query, "XSRF-TOKEN": xsrfToken() }).toString();
  return url.href;
}

// The sign-in page, which comes back to `path` once the user has signed in.
export function signInFirst(path) {
  location.assign(`${BASE}/?next=${encodeURIComponent(path)}`);
}
