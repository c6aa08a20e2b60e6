// A VNC session: noVNC's RFB client speaks RFB over the client endpoint itself, as the platform's
// web UI does; the WebSocket is made here and handed to it, so that the close's reason (the
// agent's "cannot connect to ...", the cloud's timeout) can be shown, which noVNC only logs.
import { BASE } from "./api.js";

export async function startVnc(view, url, config) {
  const { default: RFB } = await import(`${BASE}/novnc/core/rfb.js`);
  const socket = new WebSocket(url, ["binary"]);
  const rfb = new RFB(view.screen, socket, { shared: true });
  // One screen pixel for one canvas pixel: nothing is scaled or resized on the server.
  rfb.scaleViewport = false;
  rfb.resizeSession = false;
  let refused = false;
  view.state("connecting…");
  rfb.addEventListener("connect", () => {
    view.state("connected");
    rfb.focus();
  });
  rfb.addEventListener("desktopname", (event) => view.state(`connected to ${event.detail.name}`));
  // cra-cloud never hands a configuration's password to a browser: the user types it.
  rfb.addEventListener("credentialsrequired", async (event) => {
    view.state("the VNC server asks for credentials");
    rfb.sendCredentials(await view.askCredentials(event.detail.types, config.credentials.username));
    view.state("connecting…");
  });
  rfb.addEventListener("securityfailure", (event) => {
    refused = true;
    view.fail(`The VNC server refused the session: ${event.detail.reason || `security result ${event.detail.status}`}.`);
  });
  socket.addEventListener("close", (event) => {
    if (!refused) view.ended(event, "VNC session");
  });
}
