// Flash Flow buyer page, sales with a waiting room: a Join button instead of Buy, the buyer's
// place in line kept live by their ticket's stream, and on their turn the Buy button with a
// countdown to the end of their admission. The ticket is kept on this device, so a reload
// finds it again. Plain JavaScript, no build step.
import { holdClock } from "./holds.js";

// How long to wait before asking after a stream the server refused (the server's own retry).
const RETRY_MS = 3000;
const TICKET_KEY = "flashflow.ticket.";  // + sale id -> {userId, ticket}

/** A sale with a waiting room in front (its body says how the line admits). */
export function hasLine(sale) {
  return Boolean(sale) && sale.waitingRoom !== undefined;
}

/** A wait in words: "about 40 seconds", "about 3 minutes", "about 2 hours". */
export function waitText(seconds) {
  const unit = (n, word) => `about ${n} ${word}${n === 1 ? "" : "s"}`;
  if (seconds < 60) return unit(Math.max(1, Math.ceil(seconds)), "second");
  if (seconds < 2 * 3600) return unit(Math.round(seconds / 60), "minute");
  return unit(Math.round(seconds / 3600), "hour");
}

/** What the page says of a ticket, and the help under it. */
export function ticketText(ticket) {
  switch (ticket.status) {
    case "waiting":
      if (ticket.position === undefined) {
        return ["You're in line — your place is drawn when the sale opens",
                "Everyone who joins before the opening gets a place drawn at random."];
      }
      return [`You're in line: number ${ticket.position.toLocaleString("en-US")}` +
              (ticket.estimatedWaitSeconds === undefined ? ""
                : `, ${waitText(ticket.estimatedWaitSeconds)}`),
              "Keep this page open: it tells you when it is your turn."];
    case "admitted":
      return ["It's your turn: buy within ", ""];
    case "expired":
      return ["Your turn has passed", "The time to buy ran out."];
    case "closed":
      return [ticket.closedReason === "SALE_ENDED" ? "The sale has ended — the line has closed"
                                                   : "Sold out — the line has closed", ""];
    default:
      return null;
  }
}

/** The ticket after a `line` event: its wait from where the line stands now. */
export function movedOn(ticket, line) {
  const moved = { ...ticket, ...line };
  if (ticket.status !== "waiting" || ticket.position === undefined) return moved;
  const ahead = Math.max(0, ticket.position - line.admittedUpTo - 1);
  moved.ahead = ahead;
  if (line.admitRate > 0) moved.estimatedWaitSeconds = Math.ceil((ahead + 1) / line.admitRate);
  return moved;
}

/** The nonce the line's proof of work asks for, solved in a Web Worker. */
export function solveProof(saleId, userId, bits) {
  return new Promise((resolve, reject) => {
    const worker = new Worker("/static/proof-worker.js");
    worker.onmessage = ({ data }) => {
      worker.terminate();
      if (data.error) reject(new Error(data.error)); else resolve(data.nonce);
    };
    worker.onerror = () => { worker.terminate(); reject(new Error("The puzzle failed.")); };
    worker.postMessage({ saleId, userId, bits });
  });
}

function remembered(saleId, userId) {
  try {
    const kept = JSON.parse(localStorage.getItem(TICKET_KEY + saleId) || "null");
    return kept && kept.userId === userId ? kept.ticket : null;
  } catch (_) {
    return null;
  }
}

function remember(saleId, userId, ticket) {
  try {
    if (ticket) localStorage.setItem(TICKET_KEY + saleId, JSON.stringify({ userId, ticket }));
    else localStorage.removeItem(TICKET_KEY + saleId);
  } catch (_) { /* storage may be off */ }
}

/** The buyer's place in a sale's waiting room, on the page and live. */
export class WaitingLine {
  /**
   * @param {object} options
   * @param {object} options.el the elements: root, text, clock, help, join, and the page's buy
   * @param {() => number} options.serverNow the server's clock, in ms
   * @param {(headers: object) => object} options.authHeaders adds the buyer's token, if any
   * @param {string} options.sales the path of the sales (`/api/v1/flash-sales`)
   * @param {(title: string, message: string) => void} options.onProblem tells the buyer
   */
  constructor({ el, serverNow, authHeaders, sales, onProblem }) {
    Object.assign(this, { el, serverNow, authHeaders, sales, onProblem });
    this.saleId = this.userId = this.ticket = this.stream = null;
    this.joining = false;
  }

  /** Follow the user's place in the sale's line, if it has one; else stand aside. */
  show(sale, userId) {
    if (!hasLine(sale)) {
      if (this.saleId !== null) this.clear();
      return;
    }
    if (sale.id === this.saleId && userId === this.userId) return;
    this.clear();
    this.saleId = sale.id;
    this.userId = userId;
    const ticket = remembered(sale.id, userId);
    if (ticket) this.follow(ticket); else this.offer();
  }

  /** Show nothing and follow nothing; the Buy button is the page's again. */
  clear() {
    this.stop();
    this.saleId = this.userId = this.ticket = null;
    this.el.root.hidden = true;
    this.el.join.hidden = true;
    this.el.buy.hidden = false;
  }

  /** Whether a press should join the line rather than buy (a line, and not the buyer's turn). */
  wantsJoin() {
    return this.saleId !== null && this.admission() === null;
  }

  /** The admission token a purchase carries, while the buyer's turn lasts; else null. */
  admission() {
    const t = this.ticket;
    if (!t || t.status !== "admitted" || !t.admissionToken) return null;
    return Date.parse(t.admissionExpiresAt) > this.serverNow() ? t.admissionToken : null;
  }

  /** The purchase is made: the line has nothing more to say. */
  bought() {
    if (this.saleId === null) return;
    this.stop();
    this.el.root.hidden = true;
    this.el.join.hidden = true;
    this.el.buy.hidden = true;
  }

  offer() {
    this.ticket = null;
    this.el.root.hidden = true;
    this.el.join.hidden = false;
    this.el.buy.hidden = true;
  }

  render(ticket) {
    const words = ticketText(ticket);
    if (!words) return;
    this.ticket = ticket;
    const [text, help] = words;
    this.el.root.hidden = false;
    this.el.root.dataset.status = ticket.status;
    this.el.text.textContent = text;
    this.el.help.textContent = help;
    this.el.help.hidden = !help;
    this.el.clock.hidden = ticket.status !== "admitted";
    this.el.join.hidden = true;
    this.el.buy.hidden = this.admission() === null;
    this.tick();
  }

  /** Move the admission's countdown on (called several times a second); at 0, it passed. */
  tick() {
    const t = this.ticket;
    if (!t || t.status !== "admitted") return;
    if (t.admissionExpiresAt && Date.parse(t.admissionExpiresAt) <= this.serverNow()) {
      this.render({ ...t, status: "expired" });
      return;
    }
    this.el.clock.textContent = t.admissionExpiresAt
      ? holdClock(t.admissionExpiresAt, this.serverNow()) : "";
  }

  stop() {
    if (this.stream) this.stream.close();
    this.stream = null;
  }

  /** Take a ticket for the user (solving the line's proof of work first, if it asks one). */
  async join(userId) {
    if (this.joining || this.saleId === null) return;
    const saleId = this.saleId;
    const button = this.el.join;
    this.joining = true;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    button.textContent = "Joining…";
    try {
      const asked = { userId };
      const line = await this.fetchJson(`${this.sales}/${saleId}/queue`, {});
      if (line.ok && line.body.data.proofBits > 0) {
        button.textContent = "Solving the entry puzzle…";
        asked.proof = await solveProof(saleId, userId, line.body.data.proofBits);
      }
      const { response, body } = await this.fetchJson(`${this.sales}/${saleId}/queue`, {
        method: "POST",
        headers: this.authHeaders({ "Content-Type": "application/json" }),
        body: JSON.stringify(asked),
      });
      if (saleId !== this.saleId || userId !== this.userId) return;  // the buyer moved on
      if (response.ok && body && body.data) {
        remember(saleId, userId, body.data.ticket);
        this.render(body.data);
        if (!["admitted", "expired", "closed"].includes(body.data.status)) {
          this.follow(body.data.ticket);
        }
        return;
      }
      const error = (body && body.error) || {};
      if (error.code === "SOLD_OUT") {
        this.render({ status: "closed", closedReason: "SOLD_OUT" });
        return;
      }
      this.onProblem(error.code === "LINE_NOT_OPEN" ? "The line is not open yet"
                       : "Could not join the line",
                     error.message || `The server answered ${response.status}.`);
    } catch (problem) {
      this.onProblem("Could not join the line", problem.message ||
                     "We could not reach the server. Please try again.");
    } finally {
      this.joining = false;
      button.disabled = false;
      button.removeAttribute("aria-busy");
      button.textContent = "Join the line";
    }
  }

  async fetchJson(url, options) {
    const response = await fetch(url, { ...options,
      headers: { Accept: "application/json", ...(options.headers || {}) } });
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    return { response, body, ok: response.ok && body !== null };
  }

  // Follow the ticket's stream until its last event (admitted or closed), then close it, so
  // the browser does not take it up again.
  follow(ticketId) {
    this.stop();
    const path = `${this.sales}/${this.saleId}/queue/${encodeURIComponent(ticketId)}`;
    const stream = new EventSource(`${path}/events`);
    this.stream = stream;
    const on = (name, handle) => stream.addEventListener(name, (e) => {
      if (stream === this.stream) handle(JSON.parse(e.data));
    });
    on("ticket", (ticket) => this.render(ticket));
    on("line", (line) => { if (this.ticket) this.render(movedOn(this.ticket, line)); });
    for (const last of ["admitted", "closed"]) {
      on(last, (ticket) => { this.stop(); this.render(ticket); });
    }
    stream.addEventListener("error", () => {
      if (stream !== this.stream || stream.readyState !== EventSource.CLOSED) return;
      this.recheck(ticketId, path, stream);  // refused: a ticket the server does not know?
    });
  }

  // After a refused stream: a ticket the server does not know is forgotten and the buyer may
  // join again; otherwise the stream is tried again after a pause.
  async recheck(ticketId, path, stream) {
    let status = 0;
    try {
      status = (await fetch(path, { headers: { Accept: "application/json" } })).status;
    } catch (_) {
      status = 0;
    }
    if (stream !== this.stream) return;  // the buyer moved on meanwhile
    if (status === 404) {
      remember(this.saleId, this.userId, null);
      this.stop();
      this.offer();
      return;
    }
    setTimeout(() => { if (stream === this.stream) this.follow(ticketId); }, RETRY_MS);
  }
}
