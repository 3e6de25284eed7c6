// The console page: unlock with a key when the server asks for one, then poll status and metrics.

import { ApiError, getJSON, onLocked, storedKey, storeKey } from "./api.js";
import { Analysis } from "./analysis.js";
import { Charts } from "./charts.js";
import { byId } from "./dom.js";
import { Playground } from "./playground.js";
import { renderStatus } from "./status.js";

const STATUS_EVERY_MS = 5000;
const METRICS_EVERY_MS = 2000;

class Page {
  constructor() {
    this.charts = new Charts();
    this.analysis = new Analysis();
    this.playground = new Playground();
    this.timers = [];
    this.unlocked = false;
    onLocked(() => this.lock(storedKey() ? "The server refused that key: it is not one of its API_KEYS." : ""));
    byId("key-form").addEventListener("submit", (event) => { event.preventDefault(); this.tryKey(); });
    byId("forget-key").addEventListener("click", () => { storeKey(""); this.lock(""); });
  }

  async boot() {
    try {
      this.open(await getJSON("/console/api/status"));
    } catch (error) {
      if (error.status !== 401) this.offline(error);
    }
  }

  lock(message) {
    this.unlocked = false;
    storeKey("");
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
    this.playground.stop();
    this.analysis.stop();
    byId("console").hidden = true;
    document.body.dataset.locked = "true";
    byId("forget-key").hidden = true;
    byId("key-gate").hidden = false;
    const badge = byId("ready-badge");
    badge.dataset.state = "locked";
    badge.textContent = "key required";
    const line = byId("key-error");
    line.hidden = !message;
    line.textContent = message;
    byId("key-input").focus();
  }

  async tryKey() {
    const input = byId("key-input");
    const key = input.value.trim();
    if (!key) return;
    storeKey(key);
    byId("key-submit").disabled = true;
    try {
      this.open(await getJSON("/console/api/status"));
      input.value = "";
    } catch (error) {
      if (error.status !== 401) {
        byId("key-error").hidden = false;
        byId("key-error").textContent = `The server did not answer: ${error.message}`;
      }
    } finally {
      byId("key-submit").disabled = false;
    }
  }

  open(status) {
    byId("key-gate").hidden = true;
    byId("console").hidden = false;
    delete document.body.dataset.locked;
    byId("forget-key").hidden = !storedKey();
    renderStatus(status);
    if (this.unlocked) return;
    this.unlocked = true;
    this.analysis.start(status);
    this.pollMetrics();
    this.timers.push(setInterval(() => this.pollStatus(), STATUS_EVERY_MS));
    this.timers.push(setInterval(() => this.pollMetrics(), METRICS_EVERY_MS));
  }

  async pollStatus() {
    if (document.hidden) return;
    try {
      renderStatus(await getJSON("/console/api/status"));
    } catch (error) {
      if (error.status !== 401) this.offline(error);
    }
  }

  async pollMetrics() {
    if (document.hidden) return;
    try {
      this.charts.update(await getJSON("/console/api/metrics"));
    } catch (error) {
      if (error.status !== 401) this.offline(error);
    }
  }

  offline(error) {
    const badge = byId("ready-badge");
    badge.dataset.state = "down";
    badge.textContent = error instanceof ApiError ? `error ${error.status}` : "server unreachable";
    badge.title = error.message;
  }
}

new Page().boot();
