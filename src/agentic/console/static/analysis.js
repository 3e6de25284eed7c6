// Analysis: upload a file of ideas, watch the run, read and download its report (fetched with the key, shown
// in a sandboxed frame: the key never goes into a URL).

import { api, getJSON } from "./api.js";
import { byId, bytes, el, number } from "./dom.js";

const UPLOADS = /\.(csv|jsonl|ndjson)$/i;

function resultText(run) {
  const counts = Object.entries(run.counts || {});
  if (!counts.length) return "–";
  return counts.sort(([a], [b]) => (a === "ok" ? -1 : b === "ok" ? 1 : a.localeCompare(b)))
    .map(([status, count]) => `${count} ${status.replace("_", " ")}`).join(" · ");
}

function started(run) {
  return run.created.replace("T", " ").replace(/\+00:00$/, "");
}

export class Analysis {
  constructor() {
    this.timer = null;
    this.active = false;
    this.maxBytes = Infinity;
    this.watching = null;
    this.shown = null;
    byId("run-form").addEventListener("submit", (event) => { event.preventDefault(); this.upload(); });
    byId("report-close").addEventListener("click", () => this.closeReport());
    for (const button of document.querySelectorAll("[data-download]")) {
      button.addEventListener("click", () => this.download(this.shown, button.dataset.download));
    }
  }

  start(status) {
    this.maxBytes = status.limits.max_body_bytes;
    byId("run-limit").textContent = ` Up to ${bytes(this.maxBytes)} (API_MAX_BODY_BYTES).`;
    this.active = true;
    this.refresh();
  }

  stop() {
    this.active = false;
    clearTimeout(this.timer);
  }

  error(message) {
    const line = byId("run-error");
    line.hidden = !message;
    line.textContent = message || "";
  }

  async upload() {
    const file = byId("run-file").files[0];
    this.error("");
    if (!file) return this.error("Choose a file first.");
    if (!UPLOADS.test(file.name)) return this.error(`${file.name}: upload a .csv or .jsonl file.`);
    if (file.size > this.maxBytes) {
      return this.error(`${file.name} is ${bytes(file.size)}: the server takes up to ${bytes(this.maxBytes)} ` +
        "(API_MAX_BODY_BYTES).");
    }
    byId("run-start").disabled = true;
    try {
      const response = await api(`/console/api/runs?filename=${encodeURIComponent(file.name)}`, {
        method: "POST", headers: { "content-type": "application/octet-stream" }, body: await file.arrayBuffer(),
      });
      const run = await response.json();
      this.watching = run.id;
      byId("run-form").reset();
    } catch (error) {
      this.error(error.message);
    } finally {
      byId("run-start").disabled = false;
      this.refresh();
    }
  }

  async refresh() {
    clearTimeout(this.timer);
    if (!this.active) return;
    let runs = [];
    try {
      runs = (await getJSON("/console/api/runs")).data;
    } catch (error) {
      if (error.status !== 401) this.error(`Could not list the runs: ${error.message}`);
    }
    const running = runs.find((run) => run.state === "running");
    this.render(runs, running);
    const finished = runs.find((run) => run.id === this.watching && run.state !== "running");
    if (finished) {
      this.watching = null;
      if (finished.state === "done") this.view(finished);
    }
    if (running) this.watching = running.id;
    if (this.active) this.timer = setTimeout(() => this.refresh(), running ? 1500 : 10000);
  }

  render(runs, running) {
    byId("run-empty").hidden = runs.length > 0;
    byId("run-table").tBodies[0].replaceChildren(...runs.map((run) => this.row(run)));
    const box = byId("run-progress");
    box.hidden = !running;
    byId("run-start").disabled = Boolean(running);
    if (!running) return;
    const done = Object.values(running.counts || {}).reduce((sum, count) => sum + count, 0);
    byId("run-progress-title").textContent = `Analyzing ${running.file}`;
    const result = done ? ` · ${resultText(running)}` : " · waiting for the first idea";
    byId("run-progress-text").textContent = `${done} / ${running.ideas} ideas${result}`;
    byId("run-progress-bar").style.width = `${running.ideas ? (100 * done) / running.ideas : 0}%`;
  }

  row(run) {
    const view = el("button", { type: "button", class: "small-button", disabled: run.state !== "done" }, "View report");
    view.addEventListener("click", () => this.view(run));
    const state = el("span", { class: "pill", dataset: { run: run.state } }, run.state);
    const note = run.error || (run.problems.length ? `${run.problems.length} rows skipped` : "");
    return el("tr", { dataset: { run: run.id, state: run.state } },
      el("td", { class: "nowrap" }, started(run)),
      el("td", {}, run.file, note ? el("div", { class: "muted small", title: run.problems.join("\n") }, note) : null),
      el("td", { class: "num" }, number(run.ideas)),
      el("td", {}, resultText(run)),
      el("td", {}, state),
      el("td", { class: "num" }, run.wall_s === null ? "–" : `${number(run.wall_s, 1)} s`),
      el("td", { class: "num" }, view));
  }

  async view(run) {
    try {
      const html = await (await api(`/console/api/runs/${encodeURIComponent(run.id)}/files/report.html`)).text();
      this.shown = run;
      byId("report-title").textContent = `Report: ${run.file} (${started(run)} UTC)`;
      byId("report-frame").srcdoc = html;
      byId("report").hidden = false;
      byId("report").scrollIntoView({ behavior: "smooth", block: "start" });
    } catch (error) {
      this.error(`Could not open the report: ${error.message}`);
    }
  }

  closeReport() {
    byId("report").hidden = true;
    byId("report-frame").removeAttribute("srcdoc");
    this.shown = null;
  }

  async download(run, name) {
    if (!run) return;
    try {
      const blob = await (await api(`/console/api/runs/${encodeURIComponent(run.id)}/files/${name}`)).blob();
      const url = URL.createObjectURL(blob);
      const link = el("a", { href: url, download: `${run.id}-${name}` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (error) {
      this.error(`Could not download ${name}: ${error.message}`);
    }
  }
}
