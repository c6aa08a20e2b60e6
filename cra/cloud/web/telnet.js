// Telnet (RFC 854) as a terminal needs it, between the bytes on the wire and the bytes a terminal
// shows or types. Options: the server may echo (ECHO), drop go-aheads (SGA) and send 8-bit data
// (BINARY); the terminal may send 8-bit data, drop go-aheads and tell its size (NAWS). Everything
// else is refused. A request for the state an option is already in gets no answer, so that two ends
// cannot answer each other in a loop (RFC 854, "General considerations").

const IAC = 255, DONT = 254, DO = 253, WONT = 252, WILL = 251, SB = 250, SE = 240;
const BINARY = 0, ECHO = 1, SGA = 3, NAWS = 31;
const CR = 13, LF = 10, NUL = 0;

const THEIRS = new Set([BINARY, ECHO, SGA]); // what the server may do
const OURS = new Set([BINARY, SGA, NAWS]); // what this end does; not ECHO: the server echoes

export class Telnet {
  // send(Uint8Array) writes to the wire; size() is the terminal's [cols, rows].
  constructor(send, size) {
    this.send = send;
    this.size = size;
    this.theirs = new Set();
    this.ours = new Set();
    this.state = "data";
    this.verb = 0;
  }

  // The bytes the terminal shows, from bytes off the wire: commands answered and left out, a
  // doubled 0xFF kept once. A command split across two frames is finished with the next one.
  receive(bytes) {
    const shown = [];
    for (const byte of bytes) {
      switch (this.state) {
        case "data":
          if (byte === IAC) this.state = "iac";
          else shown.push(byte);
          break;
        case "iac":
          if (byte === IAC) {
            shown.push(IAC);
            this.state = "data";
          } else if (byte >= WILL && byte <= DONT) {
            this.verb = byte;
            this.state = "option";
          } else {
            this.state = byte === SB ? "sb" : "data"; // other commands (NOP, GA, ...) mean nothing here
          }
          break;
        case "option":
          this.negotiate(this.verb, byte);
          this.state = "data";
          break;
        case "sb": // subnegotiation of an option refused; its content is skipped up to IAC SE
          if (byte === IAC) this.state = "sb-iac";
          break;
        case "sb-iac":
          this.state = byte === SE ? "data" : "sb";
          break;
      }
    }
    return Uint8Array.from(shown);
  }

  negotiate(verb, option) {
    if (verb === WILL) this.agree(this.theirs, THEIRS.has(option), option, DO, DONT);
    else if (verb === DO) this.agree(this.ours, OURS.has(option), option, WILL, WONT);
    else if (verb === WONT && this.theirs.delete(option)) this.command(DONT, option);
    else if (verb === DONT && this.ours.delete(option)) this.command(WONT, option);
  }

  // A request to turn an option on: yes once (then nothing while it stays on), or no.
  agree(enabled, acceptable, option, yes, no) {
    if (!acceptable) return this.command(no, option);
    if (enabled.has(option)) return;
    enabled.add(option);
    this.command(yes, option);
    if (yes === WILL && option === NAWS) this.resized();
  }

  command(verb, option) {
    this.send(Uint8Array.of(IAC, verb, option));
  }

  // The terminal's size, when the server asked for it (NAWS: two bytes each, 0xFF doubled).
  resized() {
    if (!this.ours.has(NAWS)) return;
    const [cols, rows] = this.size();
    const size = [cols >> 8, cols & 255, rows >> 8, rows & 255].flatMap((b) => (b === IAC ? [IAC, IAC] : [b]));
    this.send(Uint8Array.of(IAC, SB, NAWS, ...size, IAC, SE));
  }

  // The bytes for the wire, from bytes the terminal typed: 0xFF doubled, and outside binary mode a
  // carriage return followed by NUL, as a bare CR must be (RFC 854); the terminal sends CR for Enter.
  encode(bytes) {
    const out = [];
    bytes.forEach((byte, index) => {
      out.push(byte);
      if (byte === IAC) out.push(IAC);
      else if (byte === CR && !this.ours.has(BINARY) && bytes[index + 1] !== LF) out.push(NUL);
    });
    return Uint8Array.from(out);
  }
}
