// The playground: one prompt on a tier, streamed from /v1/chat/completions, with a Stop button.

import { api } from "./api.js";
import { byId, number, seconds } from "./dom.js";

// Server-sent events of a fetch response: yields each event's data.
async function* events(body, signal) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const blocks = buffer.split(/\r?\n\r?\n/);
      buffer = blocks.pop();
      for (const block of blocks) {
        const data = block.split(/\r?\n/).filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).trimStart()).join("\n");
        if (data) yield data;
      }
    }
  } finally {
    if (signal.aborted) reader.cancel().catch(() => {});
  }
}

function requestBody() {
  const body = {
    model: byId("play-tier").value,
    messages: [{ role: "user", content: byId("play-prompt").value }],
    temperature: Number(byId("play-temperature").value),
    max_tokens: Number(byId("play-max-tokens").value),
    stream: true,
    stream_options: { include_usage: true },
  };
  const schemaText = byId("play-schema").value.trim();
  if (schemaText) {
    let schema;
    try {
      schema = JSON.parse(schemaText);
    } catch (error) {
      throw new Error(`The JSON schema is not valid JSON: ${error.message}`);
    }
    body.response_format = { type: "json_schema", json_schema: { name: "playground", schema } };
  }
  return body;
}

export class Playground {
  constructor() {
    this.controller = null;
    byId("play-form").addEventListener("submit", (event) => { event.preventDefault(); this.send(); });
    byId("play-stop").addEventListener("click", () => this.stop());
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  show(run) {
    const generating = run.last && run.first ? run.last - run.first : 0;
    byId("play-tokens").textContent = number(run.usage ? run.usage.completion_tokens : run.tokens);
    byId("play-ttft").textContent = run.first ? seconds((run.first - run.started) / 1000) : "–";
    byId("play-rate").textContent = run.tokens > 1 && generating > 0
      ? number((run.tokens - 1) / (generating / 1000), 1) : "–";
    byId("play-finish").textContent = run.finish || "–";
  }

  setBusy(busy, state) {
    byId("play-send").disabled = busy;
    byId("play-stop").disabled = !busy;
    byId("play-state").textContent = state;
    byId("play-form").dataset.busy = String(busy);
  }

  async send() {
    const answer = byId("play-answer");
    const run = { started: performance.now(), first: null, last: null, tokens: 0, usage: null, finish: null };
    answer.textContent = "";
    answer.dataset.state = "streaming";
    this.show(run);
    let body;
    try {
      body = requestBody();
    } catch (error) {
      answer.dataset.state = "error";
      answer.textContent = error.message;
      return;
    }
    this.controller = new AbortController();
    const { signal } = this.controller;
    this.setBusy(true, `streaming from the ${body.model} tier…`);
    try {
      const response = await api("/v1/chat/completions", {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal,
      });
      for await (const data of events(response.body, signal)) {
        if (data === "[DONE]") break;
        this.take(JSON.parse(data), run, answer);
        this.show(run);
      }
      answer.dataset.state = "done";
      this.setBusy(false, "done");
    } catch (error) {
      const stopped = error.name === "AbortError" || signal.aborted;
      if (stopped) run.finish = "stopped";
      else answer.append(`${answer.textContent ? "\n\n" : ""}Error: ${error.message}`);
      answer.dataset.state = stopped ? "stopped" : "error";
      this.setBusy(false, stopped ? "stopped" : "failed");
    } finally {
      this.controller = null;
      this.show(run);
    }
  }

  take(chunk, run, answer) {
    if (chunk.error) throw new Error(chunk.error.message);
    if (chunk.usage) run.usage = chunk.usage;
    const choice = chunk.choices && chunk.choices[0];
    if (!choice) return;
    const text = choice.delta && choice.delta.content;
    if (text) {
      const now = performance.now();
      run.first = run.first || now;
      run.last = now;
      run.tokens += 1;
      answer.append(text);
      answer.scrollTop = answer.scrollHeight;
    }
    if (choice.finish_reason) run.finish = choice.finish_reason;
  }
}
