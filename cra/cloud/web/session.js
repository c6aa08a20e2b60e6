// A session page, /apps/remote-access/devices/{deviceId}/configurations/{configId}: one configuration,
// opened over the client endpoint with the viewer its protocol needs.
import { ApiError, BASE, api, clientUrl, signInFirst, xsrfToken } from "./api.js";

const [, deviceId, configId] = location.pathname.match(/\/devices\/([^/]+)\/configurations\/([^/]+)$/)
  .map(decodeURIComponent);

// What every viewer shows the user: a state line, a problem that ends the session, a credentials form.
const view = {
  screen: document.getElementById("screen"),
  state(text) {
    document.getElementById("state").textContent = text;
  },
  fail(text) {
    const problem = document.getElementById("problem");
    problem.textContent = text;
    problem.hidden = false;
    this.state("ended");
  },
  // How a WebSocket's close reads to a person: the reason the cloud or the agent gave, when it gave one.
  ended(event, what) {
    if (event.code === 1000 && !event.reason) {
      this.state("ended");
      document.title = `${what} ended`;
    } else {
      this.fail(`The ${what} ended: ${event.reason || `the connection closed with code ${event.code}`}.`);
    }
  },
  askCredentials(needed, username) {
    const form = document.getElementById("credentials");
    document.getElementById("username-field").hidden = !needed.includes("username");
    form.username.value = username || "";
    form.hidden = false;
    form.password.focus();
    return new Promise((resolve) => {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        form.hidden = true;
        resolve({ username: form.username.value, password: form.password.value });
        form.password.value = "";
      }, { once: true });
    });
  },
};

async function start() {
  if (!xsrfToken()) return signInFirst(location.pathname);
  let config;
  try {
    config = await api(`/service/remoteaccess/devices/${encodeURIComponent(deviceId)}/configurations/` +
                       encodeURIComponent(configId));
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return signInFirst(location.pathname);
    throw error;
  }
  const device = await api(`/inventory/managedObjects/${encodeURIComponent(deviceId)}`);
  const title = `${device.name || deviceId}: ${config.name} (${config.protocol}, ${config.hostname}:${config.port})`;
  document.getElementById("title").textContent = title;
  document.title = title;
  const libraries = await api(`${BASE}/libraries`);
  if (config.protocol === "VNC") {
    if (!libraries.novnc.available) return view.fail(`VNC sessions need noVNC: ${libraries.novnc.problem}.`);
    const { startVnc } = await import("./vnc.js");
    return startVnc(view, clientUrl(deviceId, configId), config);
  }
  if (config.protocol === "TELNET" || config.protocol === "SSH") {
    if (!libraries.xterm.available) return view.fail(`Terminals need xterm.js: ${libraries.xterm.problem}.`);
    const { startTerminal } = await import("./terminal.js");
    return startTerminal(view, (query) => clientUrl(deviceId, configId, query), config.protocol);
  }
  view.fail(`A ${config.protocol} configuration is not opened in the browser: reach it with cra-connect, ` +
            "which gives it a local port.");
}

start().catch((error) => view.fail(`The session cannot start: ${error.message}`));
