// A terminal (xterm.js) over the client endpoint. Telnet: the WebSocket carries the telnet stream
// to the device's server, and telnet.js speaks telnet. SSH: cra-cloud is the SSH client, and the
// WebSocket carries the terminal's bytes (binary frames) and its size (a text frame of JSON), and
// a failure as a text frame {"error": "..."} before the close.
import { BASE } from "./api.js";
import { Telnet } from "./telnet.js";

function load(tag, attributes) {
  return new Promise((resolve, reject) => {
    const node = Object.assign(document.createElement(tag), attributes);
    node.onload = resolve;
    node.onerror = () => reject(new Error(`${attributes.src || attributes.href} did not load`));
    document.head.append(node);
  });
}

// xterm.js is one script that sets the globals Terminal and TerminalFit (its fit addon).
async function newTerminal(screen) {
  await Promise.all([load("link", { rel: "stylesheet", href: `${BASE}/xterm/xterm.css` }),
                     load("script", { src: `${BASE}/xterm/xterm.js` })]);
  window.Terminal.applyAddon(window.TerminalFit);
  // The DOM renderer keeps the text in the page, where screen readers, copying and the tests find it.
  const term = new window.Terminal({ cursorBlink: true, scrollback: 5000, rendererType: "dom" });
  term.open(screen);
  term.fit();
  window.addEventListener("resize", () => term.fit());
  term.focus();
  return term;
}

// How each protocol reads the WebSocket and writes to it.
const PROTOCOLS = {
  TELNET(socket, term) {
    const telnet = new Telnet((bytes) => socket.send(bytes), () => [term.cols, term.rows]);
    const text = new TextDecoder();
    return {
      received(data) {
        if (typeof data === "string") return; // the relay carries binary frames only
        term.write(text.decode(telnet.receive(new Uint8Array(data)), { stream: true }));
      },
      typed(bytes) {
        socket.send(telnet.encode(bytes));
      },
      resized() {
        telnet.resized();
      },
    };
  },
  SSH(socket, term) {
    const text = new TextDecoder();
    const sendSize = () => socket.send(JSON.stringify({ resize: { cols: term.cols, rows: term.rows } }));
    socket.addEventListener("open", sendSize);
    return {
      received(data) {
        if (typeof data !== "string") return term.write(text.decode(data, { stream: true }));
        const message = JSON.parse(data);
        if (message.error) this.error = message.error; // the close that follows shows it
      },
      typed(bytes) {
        socket.send(bytes);
      },
      resized: sendSize,
    };
  },
};

export async function startTerminal(view, urlFor, protocol) {
  const term = await newTerminal(view.screen);
  // The first size rides on the URL too, so that a shell starts with it.
  const socket = new WebSocket(urlFor({ cols: term.cols, rows: term.rows }), ["binary"]);
  socket.binaryType = "arraybuffer";
  const wire = PROTOCOLS[protocol](socket, term);
  const keys = new TextEncoder();
  view.state("connecting…");
  socket.addEventListener("open", () => view.state("connected"));
  socket.addEventListener("message", (event) => wire.received(event.data));
  socket.addEventListener("close", (event) => {
    term.setOption("disableStdin", true);
    if (wire.error) view.fail(`The ${protocol} session failed: ${wire.error}`);
    else view.ended(event, `${protocol} session`);
  });
  term.on("data", (data) => {
    if (socket.readyState === WebSocket.OPEN) wire.typed(keys.encode(data));
  });
  term.on("resize", () => {
    if (socket.readyState === WebSocket.OPEN) wire.resized();
  });
}
