// The start page: sign in, then the tenant's devices, each with its remote access configurations and
// a link to a session page for those the browser can open (VNC, Telnet, SSH).
import { ApiError, BASE, api, signIn, xsrfToken } from "./api.js";

const BROWSER_PROTOCOLS = new Set(["VNC", "TELNET", "SSH"]);
const PAGE_SIZE = 2000; // the platform's largest page

const form = document.getElementById("sign-in");
const devices = document.getElementById("devices");

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text; // never innerHTML: names come from the tenant
  Object.entries(attributes).forEach(([name, value]) => node.setAttribute(name, value));
  return node;
}

// Where to go after signing in: a page of this application named by ?next=, nowhere else.
function nextPage() {
  const next = new URLSearchParams(location.search).get("next");
  return next && next.startsWith(`${BASE}/`) && !next.startsWith("//") ? next : null;
}

async function allDevices() {
  const found = [];
  for (let page = 1; ; page++) {
    const answer = await api(`/inventory/managedObjects?pageSize=${PAGE_SIZE}&currentPage=${page}`);
    found.push(...answer.managedObjects.filter((object) => "c8y_IsDevice" in object));
    if (answer.managedObjects.length < PAGE_SIZE) return found;
  }
}

function configurationRow(device, config) {
  const row = element("tr", undefined, { "data-config": config.name });
  row.append(element("td", config.name), element("td", config.protocol),
             element("td", `${config.hostname}:${config.port}`));
  const action = element("td");
  if (BROWSER_PROTOCOLS.has(config.protocol)) {
    action.append(element("a", "Open", {
      href: `${BASE}/devices/${encodeURIComponent(device.id)}/configurations/${encodeURIComponent(config.id)}`,
    }));
  } else {
    action.textContent = "reach it with cra-connect (a local port)";
  }
  row.append(action);
  return row;
}

async function deviceSection(device) {
  const section = element("section", undefined, { class: "device", "data-device": device.name || device.id });
  section.append(element("h3", `${device.name || "(no name)"} — id ${device.id}`));
  try {
    const configs = await api(`/service/remoteaccess/devices/${encodeURIComponent(device.id)}/configurations`);
    if (!configs.length) {
      section.append(element("p", "No remote access configurations."));
    } else {
      const table = element("table");
      const head = element("tr");
      ["Configuration", "Protocol", "Target", ""].forEach((title) => head.append(element("th", title)));
      table.append(head, ...configs.map((config) => configurationRow(device, config)));
      section.append(table);
    }
  } catch (error) {
    section.append(element("p", `Configurations cannot be shown: ${error.message}`, { class: "error" }));
  }
  return section;
}

async function showDevices(user) {
  form.hidden = true;
  devices.hidden = false;
  document.getElementById("who").textContent = `signed in as ${user.userName}`;
  const status = document.getElementById("devices-status");
  const list = document.getElementById("device-list");
  const found = await allDevices();
  list.replaceChildren(...await Promise.all(found.map(deviceSection)));
  status.textContent = found.length ? `${found.length} device${found.length === 1 ? "" : "s"}` : "No devices.";
}

async function start() {
  if (xsrfToken()) {
    try {
      await showDevices(await api("/user/currentUser"));
      return;
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) throw error;
    }
  }
  form.hidden = false;
  form.username.focus();
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const problem = document.getElementById("sign-in-error");
  problem.textContent = "";
  try {
    await signIn(form.username.value, form.password.value);
    form.password.value = "";
    const next = nextPage();
    if (next) {
      location.assign(next);
    } else {
      await showDevices(await api("/user/currentUser"));
    }
  } catch (error) {
    problem.textContent = `Sign-in failed: ${error.message}`;
  }
});

start().catch((error) => {
  document.getElementById("devices-status").textContent = `The devices cannot be shown: ${error.message}`;
});
