// The status panel: backend, fallback chain, each tier's model, context, slots, memory.

import { byId, el, mebibytes, number } from "./dom.js";

function tile(label, value, detail, state) {
  return el("div", { class: "tile", dataset: state ? { state } : undefined },
    el("div", { class: "tile-label" }, label),
    el("div", { class: "tile-value" }, value),
    detail ? el("div", { class: "tile-detail" }, detail) : null);
}

function chainText(chain) {
  if (chain.length < 2) return ["none", "MODEL_FALLBACK is not set"];
  const names = chain.map((member) => (member.usable ? member.backend : `${member.backend} (not usable)`));
  const problems = chain.filter((member) => !member.usable).map((member) => `${member.backend}: ${member.problem}`);
  return [names.join(" → "), problems.join("; ") || "every backend is configured"];
}

function tierRow(tier, info) {
  const memory = info.shared_with ? `shared with ${info.shared_with}` : mebibytes(info.memory_mb);
  return el("tr", { dataset: { tier } },
    el("td", {}, el("strong", {}, tier)),
    el("td", { class: "model" }, info.model, info.origin ? el("div", { class: "muted small" }, info.origin) : null),
    el("td", {}, el("span", { class: "pill", dataset: { on: String(info.loaded) } }, info.loaded ? "loaded" : "not loaded")),
    el("td", { class: "num" }, info.memory_mb === undefined ? "–" : memory),
    el("td", { class: "num" }, `${info.running} / ${info.slots}`),
    el("td", { class: "num" }, number(info.waiting)));
}

export function renderStatus(status) {
  const [chain, chainDetail] = chainText(status.fallback);
  const memory = status.memory;
  const budget = memory.budget_mb ? `models' budget ${mebibytes(memory.budget_mb)}` : "no memory budget set";
  byId("status-tiles").replaceChildren(
    tile("Backend", status.backend, status.local ? "runs on this machine" : "remote API", "ok"),
    tile("Readiness", status.ready ? "ready" : "not ready", status.problem || "models and backend answer",
      status.ready ? "ok" : "warn"),
    tile("Fallback chain", chain, chainDetail),
    tile("Context size", status.context_size ? `${number(status.context_size)} tokens` : "the remote server's",
      "per sequence (MODEL_CONTEXT_SIZE)"),
    tile("Parallel slots", `${number(status.parallel)} per model`, `up to ${number(status.max_queue)} more wait`),
    tile("Memory", mebibytes(memory.process_rss_mb), `server process (RSS) · ${budget}`));
  const rows = Object.entries(status.tiers).map(([tier, info]) => tierRow(tier, info));
  if (status.embedding) rows.push(tierRow("embedding", { ...status.embedding, memory_mb: undefined }));
  byId("tier-table").tBodies[0].replaceChildren(...rows);
  byId("status-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  const badge = byId("ready-badge");
  badge.dataset.state = status.ready ? "ok" : "warn";
  badge.textContent = `${status.backend} · ${status.ready ? "ready" : "not ready"}`;
  byId("foot").textContent = `agentic ${status.version} · API keys ${status.keys_required ? "required" : "not required"}`;
}
