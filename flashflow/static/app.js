// Flash Flow buyer page: live stock over EventSource, a countdown against the server's
// clock, and one purchase button; with several sales open or upcoming, a list to choose
// from (until a shopper chooses, the page follows the current sale). A sale whose buyers may
// take several units (perUserLimit above 1) shows a picker of how many. Plain JavaScript, no
// build step. A sale with holds shows where the buyer stands (holds.js); a sale with a
// waiting room, the buyer's place in line and their turn to buy (line.js).
import { BuyerStanding, hasHolds, holdStatsText, standingOfPress } from "./holds.js";
import { WaitingLine } from "./line.js";
import { readToken, storeToken, subjectOf } from "./token.js";

(() => {
  const SALES = "/api/v1/flash-sales";
  const API = `${SALES}/current`;
  const USER_KEY = "flashflow.userId";
  const $ = (id) => document.getElementById(id);
  const el = {
    live: $("live"), badge: $("badge"), product: $("product"), countdown: $("countdown"),
    stock: $("stock"), total: $("total"), bar: $("stock-bar"), fill: $("stock-fill"),
    form: $("buy-form"), user: $("user-id"), userError: $("user-id-error"), buy: $("buy"),
    result: $("result"), modal: $("modal"), modalTitle: $("modal-title"),
    modalMessage: $("modal-message"), sales: $("sales"), saleList: $("sale-list"),
    modalMessage: $("modal-message"), signedIn: $("signed-in"),
    signedInUser: $("signed-in-user"), signOut: $("sign-out"), userField: $("user-id-field"),
    holdStats: $("hold-stats"), quantityField: $("quantity-field"), quantity: $("quantity"),
    quantityHelp: $("quantity-help"),
  };
  // The fields a sale with holds adds to its body and its stock events.
  const HOLD_FIELDS = ["holdSeconds", "heldStock", "confirmedStock", "waitlistLength"];

  const MODALS = {
    SOLD_OUT: "Sold out",
    ALREADY_PURCHASED: "Already purchased",
    SALE_NOT_ACTIVE: "Sale not active",
    INSUFFICIENT_STOCK: "Not enough left",
  };

  let sale = null;          // the last snapshot, kept up to date by events
  let clockOffsetMs = 0;    // server time minus this browser's time
  let inFlight = false;
  let confirmedFor = null;  // the user whose purchase this page has just confirmed
  let returnFocusTo = null;
  let chosen = null;        // the sale id the shopper picked; null: follow the current sale
  let source = null;        // the open EventSource

  // The routes of the sale on show: by id once known, so a purchase buys what is shown.
  function saleUrl() { return sale ? `${SALES}/${sale.id}` : API; }
  let token = null;         // the bearer token, when the buyer is signed in
  let signedInAs = null;    // the token's sub, shown to the buyer (the server checks it)

  // -- signing in ------------------------------------------------------------------

  function signIn(value) {
    const sub = value ? subjectOf(value) : null;
    token = sub ? value : null;
    signedInAs = sub;
    el.signedIn.hidden = !sub;
    el.userField.hidden = Boolean(sub);
    el.signedInUser.textContent = sub || "";
    if (!sub) storeToken(null);
  }

  function authHeaders(headers) {
    return token ? { ...headers, Authorization: `Bearer ${token}` } : headers;
  }

  function currentUser() {
    return signedInAs || el.user.value.trim();
  }

  // -- rendering -------------------------------------------------------------------

  function serverNow() { return Date.now() + clockOffsetMs; }

  function syncClock(serverTime) {
    const t = Date.parse(serverTime);
    if (!Number.isNaN(t)) clockOffsetMs = t - Date.now();
  }

  function statusOf(s) {
    const now = serverNow();
    if (now < Date.parse(s.startTime)) return "upcoming";
    if (now >= Date.parse(s.endTime)) return "ended";
    return "active";
  }

  function render() {
    if (!sale) return;
    el.product.textContent = sale.productName;
    document.title = `${sale.productName} · Flash Flow`;
    el.stock.textContent = String(sale.remainingStock);
    el.total.textContent = String(sale.totalStock);
    el.bar.setAttribute("aria-valuemax", String(sale.totalStock));
    el.bar.setAttribute("aria-valuenow", String(sale.remainingStock));
    el.bar.setAttribute("aria-valuetext", `${sale.remainingStock} of ${sale.totalStock} left`);
    const share = sale.totalStock > 0 ? sale.remainingStock / sale.totalStock : 0;
    el.fill.style.width = `${Math.round(share * 100)}%`;
    el.holdStats.hidden = !hasHolds(sale);
    if (hasHolds(sale)) el.holdStats.textContent = holdStatsText(sale);
    renderQuantity();
    renderStatus();
    renderChoice();
    line.show(sale, currentUser());
  }

  // The most units one buyer may take: a sale's body says it only when above 1.
  function limitOf(s) {
    return s && Number.isInteger(s.perUserLimit) ? s.perUserLimit : 1;
  }

  // The picker of units, 1 to the sale's limit, shown only when the limit is above 1.
  function renderQuantity() {
    const limit = limitOf(sale);
    el.quantityField.hidden = limit < 2;
    if (el.quantity.options.length !== limit) {
      const kept = Math.min(Number(el.quantity.value) || 1, limit);
      el.quantity.replaceChildren(...Array.from({ length: limit }, (_, i) => {
        const units = String(i + 1);
        return new Option(units, units);
      }));
      el.quantity.value = String(kept);
    }
    el.quantityHelp.textContent = `Up to ${limit} per buyer, all in one purchase.`;
  }

  function renderStatus() {
    if (!sale) return;
    const status = statusOf(sale);
    let label = { upcoming: "Coming soon", active: "On sale now", ended: "Sale ended" }[status];
    let key = status;
    if (status === "active" && sale.remainingStock <= 0) { label = "Sold out"; key = "sold-out"; }
    // With holds, no free unit is not sold out while some are unpaid: a press joins the line.
    if (key === "sold-out" && hasHolds(sale) && sale.confirmedStock < sale.totalStock) {
      label = "All held: join the line";
      key = "all-held";
    }
    if (el.badge.dataset.status !== key) {
      el.badge.dataset.status = key;
      el.badge.textContent = label;
    }
    el.countdown.textContent = countdownText(status);
  }

  function countdownText(status) {
    if (status === "ended") return "This sale has ended.";
    const edge = Date.parse(status === "upcoming" ? sale.startTime : sale.endTime);
    const left = Math.max(0, Math.floor((edge - serverNow()) / 1000));
    const h = Math.floor(left / 3600);
    const m = Math.floor((left % 3600) / 60);
    const s = left % 60;
    const pad = (n) => String(n).padStart(2, "0");
    const clock = h > 0 ? `${h}:${pad(m)}:${pad(s)}` : `${pad(m)}:${pad(s)}`;
    return status === "upcoming" ? `Starts in ${clock}` : `Ends in ${clock}`;
  }

  // -- the list of sales -------------------------------------------------------------

  let listed = [];

  function renderSales(sales) {
    listed = sales.filter((s) => statusOf(s) !== "ended");
    el.sales.hidden = listed.length < 2;
    el.saleList.replaceChildren(...listed.map((s) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "sale-choice";
      button.dataset.saleId = s.id;
      const open = statusOf(s) === "active";
      button.textContent = `${s.productName} · ${open ? "on sale now" : "coming soon"}`;
      button.addEventListener("click", () => choose(s.id));
      item.append(button);
      return item;
    }));
    renderChoice();
  }

  function renderChoice() {
    for (const button of el.saleList.querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(!!sale && button.dataset.saleId === sale.id));
    }
  }

  async function loadSales() {
    try {
      const response = await fetch(SALES, { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const body = await response.json();
      renderSales(body.data);
    } catch (_) {
      // The list is a convenience; the current sale still shows.
    }
  }

  function choose(id) {
    if (sale && sale.id === id && chosen === id) return;
    chosen = id;
    const picked = listed.find((s) => s.id === id);
    if (picked) applySnapshot(picked);
    el.result.hidden = true;
    standing.clear();
    connect();
    checkPurchase(el.user.value.trim());
  }

  function showResult(text) {
    el.result.textContent = text;
    el.result.hidden = false;
  }

  function setLive(state, text) {
    el.live.dataset.state = state;
    el.live.textContent = text;
  }

  // -- the modal -------------------------------------------------------------------

  function openModal(title, message) {
    returnFocusTo = document.activeElement;
    el.modalTitle.textContent = title;
    el.modalMessage.textContent = message;
    if (!el.modal.open) el.modal.showModal();
    $("modal-close").focus();
  }

  el.modal.addEventListener("close", () => {
    const usable = returnFocusTo && returnFocusTo !== document.body &&
      document.contains(returnFocusTo);
    const target = usable ? returnFocusTo : el.buy;
    returnFocusTo = null;
    // The close event comes after the dialog has closed: the browser may have put focus
    // back already, and a quick keyboard user may have moved on. Only a focus left on the
    // page itself or in the closed dialog is moved.
    const active = document.activeElement;
    if (active && active !== document.body && !el.modal.contains(active)) return;
    target.focus();
  });

  // -- the server ------------------------------------------------------------------

  async function loadSale() {
    try {
      const response = await fetch(chosen ? `${SALES}/${chosen}` : API,
        { headers: { Accept: "application/json" } });
      if (response.status === 404) {
        el.product.textContent = "No flash sale is scheduled";
        el.badge.dataset.status = "ended";
        el.badge.textContent = "No sale";
        return;
      }
      if (!response.ok) return;
      const body = await response.json();
      applySnapshot(body.data);
    } catch (_) {
      setLive("offline", "Offline");
    }
  }

  function applySnapshot(data) {
    syncClock(data.serverTime);
    sale = data;
    render();
  }

  function connect() {
    if (source) source.close();
    const stream = new EventSource(chosen ? `${SALES}/${chosen}/events` : `${API}/events`);
    source = stream;
    stream.addEventListener("open", () => setLive("live", "Live"));
    stream.addEventListener("snapshot", (e) => applySnapshot(JSON.parse(e.data)));
    stream.addEventListener("stock", (e) => {
      const data = JSON.parse(e.data);
      if (!sale || data.saleId !== sale.id) return;
      syncClock(data.serverTime);
      sale.remainingStock = data.remainingStock;
      for (const field of HOLD_FIELDS) if (field in data) sale[field] = data[field];
      render();
    });
    stream.addEventListener("status", (e) => {
      const data = JSON.parse(e.data);
      if (!sale || data.saleId !== sale.id) return;
      syncClock(data.serverTime);
      sale.remainingStock = data.remainingStock;
      render();
    });
    stream.addEventListener("error", () => {
      if (stream !== source) return;  // a stream the shopper has since left
      if (stream.readyState === EventSource.CLOSED) {
        // The server refused the stream (no sale, or unavailable): try again later.
        setLive("offline", "Offline");
        setTimeout(() => { if (stream === source) connect(); }, 5000);
      } else {
        setLive("connecting", "Reconnecting…");
      }
    });
  }

  async function checkPurchase(userId) {
    if (userId.length < 3) return;
    try {
      const response = await fetch(`${saleUrl()}/purchase?userId=${encodeURIComponent(userId)}`,
                                   { headers: authHeaders({}) });
      if (!response.ok) return;
      const { data } = await response.json();
      if (data.status !== undefined) {  // a sale with holds: where the buyer stands
        if (sale && currentUser() === userId) standing.show(sale.id, userId, data);
        return;
      }
      if (data.purchased && currentUser() === userId && confirmedFor !== userId) {
        showResult(`You bought this. Your purchase id is ${data.purchaseId}.`);
        line.bought();
      }
    } catch (_) {
      // The status check is a courtesy; the buy button still works.
    }
  }

  function retryText(response) {
    const seconds = parseInt(response.headers.get("Retry-After") || "", 10);
    return Number.isFinite(seconds) ? ` Please try again in ${seconds} s.` : " Please try again shortly.";
  }

  async function buy(userId) {
    // The original body, {userId}, unless the sale sells several units a buyer.
    const asked = { userId };
    if (limitOf(sale) > 1) asked.quantity = Number(el.quantity.value) || 1;
    const admission = line.admission();
    if (admission) asked.admissionToken = admission;
    let response;
    try {
      response = await fetch(`${saleUrl()}/purchase`, {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json", Accept: "application/json" }),
        body: JSON.stringify(asked),
      });
    } catch (_) {
      openModal("Connection problem", "We could not reach the server. Please try again.");
      return;
    }
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    const holding = body && body.data && ["held", "waitlisted"].includes(body.data.status);
    if (holding && sale && [200, 201, 202].includes(response.status)) {
      standing.show(sale.id, userId, standingOfPress(body.data));
      return;
    }
    if (response.status === 201) {
      confirmedFor = userId;
      line.bought();
      const units = body.data.quantity > 1 ? ` for ${body.data.quantity} units` : "";
      showResult(`Purchase confirmed${units}! Your purchase id is ${body.data.purchaseId}.`);
      return;
    }
    const error = (body && body.error) || {};
    if (response.status === 401) {
      const wasSignedIn = token !== null;
      signIn(null);
      openModal("Please sign in", wasSignedIn
        ? "Your sign-in is not valid any more; please sign in again."
        : "This shop sells to signed-in customers: open the sign-in link you were given.");
    } else if (response.status === 403) {
      openModal("Not allowed", error.message || "You may only buy for yourself.");
    } else if (response.status === 400 && (error.message || "").startsWith("quantity")) {
      openModal("Check the number of units", error.message);
    } else if (response.status === 400) {
      showUserError(error.message || "Please check your user id.");
    } else if (response.status === 409 && error.code === "INSUFFICIENT_STOCK") {
      const left = error.details ? error.details.remainingStock : null;
      openModal(MODALS[error.code], (error.message || "Fewer units are left.") +
        (Number.isInteger(left) ? ` You may buy up to ${left}.` : ""));
    } else if (response.status === 409) {
      openModal(MODALS[error.code] || "Not possible", error.message || "");
      if (error.code === "ALREADY_PURCHASED") checkPurchase(userId);
    } else if (response.status === 429) {
      openModal("Too many requests", (error.message || "Slow down.") + retryText(response));
    } else if (response.status === 503) {
      openModal("Service busy", (error.message || "The service is busy.") + retryText(response));
    } else {
      openModal("Something went wrong", error.message || `The server answered ${response.status}.`);
    }
  }

  function showUserError(message) {
    el.userError.textContent = message;
    el.userError.hidden = !message;
    el.user.setAttribute("aria-invalid", message ? "true" : "false");
    if (message) el.user.focus();
  }

  // -- wiring ----------------------------------------------------------------------

  // In a sale with holds, where the buyer stands; the Pay button only where the server
  // serves the demo payment route (`flashflow up`), whose pattern it puts in the page.
  const payMeta = document.querySelector('meta[name="flashflow-demo-pay"]');
  const standing = new BuyerStanding({
    el: { root: $("standing"), text: $("standing-text"), clock: $("hold-left"),
          help: $("standing-help"), pay: $("pay") },
    serverNow, authHeaders, sales: SALES, payPattern: payMeta ? payMeta.content : "",
    onProblem: openModal,
  });
  const line = new WaitingLine({
    el: { root: $("line"), text: $("line-text"), clock: $("line-left"), help: $("line-help"),
          join: $("join"), buy: el.buy },
    serverNow, authHeaders, sales: SALES, onProblem: openModal,
  });

  el.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (inFlight) return;
    const userId = currentUser();
    if (userId.length < 3) {
      showUserError("Your user id must be at least 3 characters.");
      return;
    }
    showUserError("");
    if (line.wantsJoin()) {
      await line.join(userId);
      return;
    }
    inFlight = true;
    el.buy.disabled = true;
    el.buy.setAttribute("aria-busy", "true");
    el.buy.textContent = "Buying…";
    try {
      await buy(userId);
    } finally {
      inFlight = false;
      el.buy.disabled = false;
      el.buy.removeAttribute("aria-busy");
      el.buy.textContent = "Buy now";
      if (el.modal.open) $("modal-close").focus();
    }
  });

  let checkTimer = null;
  el.user.addEventListener("input", () => {
    const userId = el.user.value.trim();
    try { localStorage.setItem(USER_KEY, userId); } catch (_) { /* storage may be off */ }
    el.result.hidden = true;
    standing.clear();
    if (sale) line.show(sale, userId);
    clearTimeout(checkTimer);
    checkTimer = setTimeout(() => checkPurchase(userId), 400);
  });

  el.signOut.addEventListener("click", () => {
    signIn(null);
    el.result.hidden = true;
    standing.clear();
    if (sale) line.show(sale, currentUser());
    el.user.focus();
  });

  let remembered = "";
  try { remembered = localStorage.getItem(USER_KEY) || ""; } catch (_) { remembered = ""; }
  el.user.value = remembered;
  signIn(readToken());

  setInterval(() => { renderStatus(); standing.tick(); line.tick(); }, 250);
  setInterval(loadSales, 15000);
  loadSale().then(() => { checkPurchase(currentUser()); loadSales(); });
  connect();
})();
