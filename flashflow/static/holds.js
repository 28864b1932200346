// Flash Flow buyer page, sales with holds: where the buyer stands (a hold counting down to
// its end, a place in line, confirmed, lapsed, cancelled, closed), kept live by the buyer's
// own stream, and, in `flashflow up`'s demo, a Pay button. Plain JavaScript, no build step.

// The standings the buyer's stream still has news about: a hold may be confirmed or lapse,
// a place may move or be offered a hold. The others change only when the buyer presses.
const LIVE = new Set(["held", "waitlisted"]);
// How long to wait before taking a broken stream up again (the server's own retry).
const RETRY_MS = 3000;

/** A sale that sells holds (its body says how long one lasts). */
export function hasHolds(sale) {
  return Boolean(sale) && sale.holdSeconds !== undefined;
}

/** What the sale card adds for a sale with holds: units held unpaid, and the line. */
export function holdStatsText(sale) {
  return `${sale.heldStock} held awaiting payment · ${sale.waitlistLength} in line`;
}

/** The standing a press's answer announces: a hold (201, 200) or a place in line (202),
 * with its units when the sale sells several a buyer (the answer says `quantity`). */
export function standingOfPress(data) {
  const units = data.quantity !== undefined ? { quantity: data.quantity } : {};
  if (data.status === "waitlisted") {
    return { purchased: false, status: data.status, position: data.position,
             waitlistLength: data.waitlistLength, ...units };
  }
  const standing = { purchased: true, status: data.status, purchaseId: data.purchaseId,
                     purchasedAt: data.purchasedAt, ...units };
  if (data.status === "held") standing.expiresAt = data.expiresAt;
  return standing;
}

/** The time left until `expiresAt` by the server's clock, as M:SS (H:MM:SS past an hour);
 * rounded up, so it reads 0:00 only once the hold has ended. */
export function holdClock(expiresAt, nowMs) {
  const left = Math.max(0, Math.ceil((Date.parse(expiresAt) - nowMs) / 1000));
  const pad = (n) => String(n).padStart(2, "0");
  const h = Math.floor(left / 3600);
  const m = Math.floor((left % 3600) / 60);
  return h > 0 ? `${h}:${pad(m)}:${pad(left % 60)}` : `${m}:${pad(left % 60)}`;
}

function describe(standing) {
  // Several units, when the answer said so: "3 units" in the words below.
  const several = standing.quantity > 1 ? `${standing.quantity} units` : null;
  switch (standing.status) {
    case "held":
      return [several ? `${several} held for you: pay within ` : "Held for you: pay within ",
              several ? "They are yours once paid; unpaid, they go back."
                      : "The unit is yours once paid; unpaid, it goes back."];
    case "waitlisted":
      return [`You're number ${standing.position} in line (of ${standing.waitlistLength})` +
              (several ? ` for ${several}.` : "."),
              "When a unit comes back, the first in line gets a hold of it."];
    case "confirmed":
      return [`Purchase confirmed! Your purchase id is ${standing.purchaseId}.`, ""];
    case "lapsed":
      return ["Your hold ran out before payment; the unit went back on sale.",
              "You may press Buy again."];
    case "cancelled":
      return ["Your hold was cancelled; the unit went back on sale.", "You may press Buy again."];
    case "closed":
      return ["The line has closed: no unit came back for you.", ""];
    default:
      return null;
  }
}

// Read a text/event-stream answer, calling `onEvent(name, data)` per event, until it ends.
// fetch rather than EventSource, so a signed-in buyer's stream carries their bearer token.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        if (colon === 0) continue;  // a comment: the heartbeat
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

/** The buyer's standing in a sale with holds, on the page and live. */
export class BuyerStanding {
  /**
   * @param {object} options
   * @param {object} options.el the elements: root, text, clock, help, pay
   * @param {() => number} options.serverNow the server's clock, in ms
   * @param {(headers: object) => object} options.authHeaders adds the buyer's token, if any
   * @param {string} options.sales the path of the sales (`/api/v1/flash-sales`)
   * @param {string} options.payPattern the demo payment route's pattern, or "" (no Pay)
   * @param {(title: string, message: string) => void} options.onProblem tells the buyer
   */
  constructor({ el, serverNow, authHeaders, sales, payPattern, onProblem }) {
    Object.assign(this, { el, serverNow, authHeaders, sales, payPattern, onProblem });
    this.saleId = null;
    this.userId = null;
    this.standing = null;
    this.stream = null;  // the AbortController of the stream followed, if any
    el.pay.addEventListener("click", () => this.pay());
  }

  /** Show `standing` for the user in the sale, and follow it while it may change. */
  show(saleId, userId, standing) {
    if (saleId !== this.saleId || userId !== this.userId) this.clear();
    this.saleId = saleId;
    this.userId = userId;
    this.render(standing);
    if (LIVE.has(standing.status)) this.follow();
    else this.stop();
  }

  /** Show nothing and follow nothing (another user, another sale). */
  clear() {
    this.stop();
    this.saleId = this.userId = this.standing = null;
    this.el.root.hidden = true;
  }

  render(standing) {
    const words = describe(standing);
    this.standing = words ? standing : null;
    this.el.root.hidden = !words;
    if (!words) return;
    const [text, help] = words;
    this.el.root.dataset.status = standing.status;
    this.el.text.textContent = text;
    this.el.clock.hidden = standing.status !== "held";
    this.el.help.textContent = help;
    this.el.help.hidden = !help;
    this.el.pay.hidden = !(standing.status === "held" && this.payPattern);
    this.tick();
  }

  /** Move the hold's countdown on (called several times a second). */
  tick() {
    if (this.standing && this.standing.status === "held") {
      this.el.clock.textContent = holdClock(this.standing.expiresAt, this.serverNow());
    }
  }

  stop() {
    if (this.stream) this.stream.abort();
    this.stream = null;
  }

  // Follow the buyer's own stream until their standing stops being live; a broken stream
  // is taken up again after a pause.
  async follow() {
    if (this.stream) return;
    const controller = new AbortController();
    this.stream = controller;
    const url = `${this.sales}/${this.saleId}/purchase/events?userId=` +
      encodeURIComponent(this.userId);
    while (!controller.signal.aborted) {
      try {
        const response = await fetch(url, {
          headers: this.authHeaders({ Accept: "text/event-stream" }),
          cache: "no-store", signal: controller.signal,
        });
        if (response.status >= 400 && response.status < 500) break;  // refused: not again
        if (response.ok) {
          await readEvents(response, (name, data) => {
            if (name !== "standing" || controller.signal.aborted) return;
            const standing = JSON.parse(data);
            this.render(standing);
            if (!LIVE.has(standing.status)) controller.abort();
          });
        }
      } catch (_) {
        // A broken connection, or the stream stopped on purpose: see the loop's condition.
      }
      if (!controller.signal.aborted) await new Promise((ok) => setTimeout(ok, RETRY_MS));
    }
    if (this.stream === controller) this.stream = null;
  }

  // The demo payment step: confirm the hold shown, unpaid.
  async pay() {
    const standing = this.standing;
    if (!standing || standing.status !== "held" || !this.payPattern) return;
    const path = this.payPattern.replace("<sale_id>", encodeURIComponent(this.saleId))
      .replace("<purchase_id>", encodeURIComponent(standing.purchaseId));
    const button = this.el.pay;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    button.textContent = "Paying…";
    try {
      let response;
      try {
        response = await fetch(path, { method: "POST", headers: { Accept: "application/json" } });
      } catch (_) {
        this.onProblem("Connection problem", "We could not reach the server. Please try again.");
        return;
      }
      let body = null;
      try { body = await response.json(); } catch (_) { body = null; }
      if (response.ok && body && body.data) {
        this.show(this.saleId, this.userId, standingOfPress(body.data));
        this.el.root.focus();  // the button is gone: keep the keyboard's place here
        return;
      }
      const error = (body && body.error) || {};
      this.onProblem(response.status === 409 ? "Payment not taken" : "Something went wrong",
                     error.message || `The server answered ${response.status}.`);
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
      button.textContent = "Pay now";
    }
  }
}
