// Live metrics: uPlot charts over the server's own samples (GET /console/api/metrics), a fixed 10-minute window.

import { byId, el, number } from "./dom.js";

const CHARTS = [
  { id: "chart-tokens", series: [["tokens_per_s", "tokens/s", "#2563eb"]] },
  { id: "chart-requests", series: [["requests_per_s", "requests/s", "#0891b2"], ["errors_per_s", "errors/s", "#dc2626"]] },
  { id: "chart-queue", series: [["queue", "queue", "#d97706"], ["in_flight", "in flight", "#7c3aed"]] },
  { id: "chart-ttft", series: [["ttft_p50", "p50", "#059669"], ["ttft_p95", "p95", "#b45309"]] },
  { id: "chart-memory", series: [["rss_mb", "RSS MiB", "#475569"]] },
];
const HEIGHT = 150;

function axis() {
  return { stroke: "#64748b", grid: { stroke: "#eef2f7", width: 1 }, ticks: { stroke: "#e2e8f0", width: 1 },
    font: "11px system-ui, sans-serif" };
}

export class Charts {
  constructor() {
    this.plots = [];
    this.window = [0, 1];
  }

  ensure() {
    if (this.plots.length || !window.uPlot) return;
    for (const spec of CHARTS) {
      const figure = byId(spec.id);
      const options = {
        width: Math.max(figure.clientWidth - 2, 200),
        height: HEIGHT,
        legend: { show: true, live: false },
        cursor: { drag: { x: false, y: false }, points: { size: 5 } },
        scales: {
          x: { time: true, range: () => this.window },
          y: { range: (u, min, max) => [0, max > 0 ? max * 1.2 : 1] },
        },
        axes: [axis(), { ...axis(), size: 44 }],
        series: [{}, ...spec.series.map(([, label, color]) => ({
          label, stroke: color, width: 1.6, fill: `${color}14`, points: { show: false }, spanGaps: false,
        }))],
      };
      const empty = [[], ...spec.series.map(() => [])];
      const plot = new window.uPlot(options, empty, figure);
      this.plots.push({ spec, plot, figure });
    }
    const resize = new ResizeObserver(() => {
      for (const { plot, figure } of this.plots) plot.setSize({ width: Math.max(figure.clientWidth - 2, 200), height: HEIGHT });
    });
    for (const { figure } of this.plots) resize.observe(figure);
  }

  update(payload) {
    this.ensure();
    this.window = [payload.now - payload.window_s, payload.now];
    const columns = payload.series;
    for (const { spec, plot } of this.plots) {
      plot.setData([columns.t, ...spec.series.map(([name]) => columns[name])]);
    }
    const totals = payload.totals || { requests: 0, completion_tokens: 0, errors: 0 };
    byId("metric-totals").replaceChildren(
      el("div", { class: "total" }, el("span", {}, "requests"), el("strong", {}, number(totals.requests))),
      el("div", { class: "total" }, el("span", {}, "completion tokens"), el("strong", {}, number(totals.completion_tokens))),
      el("div", { class: "total", dataset: { bad: String(totals.errors > 0) } },
        el("span", {}, "errors"), el("strong", {}, number(totals.errors))),
      el("div", { class: "muted small" }, "since the server started (all tiers)"));
  }
}
