// The vantum console: calls in progress and finished, campaigns, from the server's event stream.
// Plain DOM, no build step. Every value is shown with textContent: nothing from the server is parsed as HTML.
"use strict";

(function () {
  const base = document.body.dataset.base;
  const live = new Map();      // call id -> view
  const finished = new Map();  // call id -> view, newest first when rendered
  let campaigns = [];
  let selected = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  const seconds = (value) => (value == null ? "–" : `${Number(value).toFixed(1)} s`);
  const ms = (value) => `${Math.round(value * 1000)} ms`;
  const dollars = (value) => `$${Number(value || 0).toFixed(4)}`;
  const LATENCY_NAMES = {
    "latency.stt_final": "STT final",
    "latency.llm_ttft": "LLM first token",
    "latency.tts_ttfb": "TTS first byte",
    "latency.voice_to_voice": "voice to voice",
  };

  function turnItem(turn) {
    const item = el("li", { class: `turn ${turn.role}` });
    item.append(el("span", { class: "who", text: turn.role === "user" ? "callee" : "bot" }));
    if (turn.role === "assistant" && turn.interrupted) {
      item.classList.add("interrupted");
      // What the callee heard, then what was cut.
      const heard = turn.heard || "";
      item.append(el("span", { class: "heard", text: heard }));
      const rest = turn.text.startsWith(heard) ? turn.text.slice(heard.length) : turn.text;
      if (rest.trim()) item.append(el("span", { class: "unheard", text: (heard ? " " : "") + rest.trim() }));
      item.append(el("span", { class: "cut", text: "✂ interrupted" }));
    } else {
      item.append(el("span", { class: "text", text: turn.text }));
    }
    const latencies = Object.entries(turn.latencies || {}).map(([name, value]) => `${LATENCY_NAMES[name] || name} ${ms(value)}`);
    if (latencies.length) item.append(el("span", { class: "lat", text: latencies.join(" · ") }));
    return item;
  }

  function liveCard(view) {
    const card = el("article", { class: "card call", "data-call-id": view.call_id, "data-state": view.state });
    card.append(el("h3", {}, el("span", { text: view.to || view.call_id }), el("span", { class: "meta", text: view.state })));
    const facts = [view.call_id];
    if (view.campaign_id) facts.push(`campaign ${view.campaign_id}`);
    if (view.interruptions) facts.push(`${view.interruptions} barge-in(s)`);
    card.append(el("div", { class: "meta", text: facts.join(" · ") }));
    const turns = el("ol", { class: "turns" });
    for (const turn of view.turns) turns.append(turnItem(turn));
    if (view.interim) {
      // The callee's words not final yet: shown apart, replaced by the final text when it comes.
      const words = el("li", { class: "turn user interim", title: "not final yet" });
      words.append(el("span", { class: "who", text: "callee" }), el("span", { class: "text", text: view.interim }));
      turns.append(words);
    }
    card.append(turns);
    return card;
  }

  function renderLive() {
    const box = document.getElementById("live-calls");
    box.replaceChildren();
    if (!live.size) box.append(el("p", { class: "empty", text: "No call in progress." }));
    for (const view of live.values()) {
      const card = liveCard(view);
      box.append(card);
      const turns = card.querySelector(".turns");
      turns.scrollTop = turns.scrollHeight;
    }
    document.getElementById("live-count").textContent = String(live.size);
  }

  function renderFinished() {
    const body = document.querySelector("#finished-calls tbody");
    body.replaceChildren();
    const views = [...finished.values()].sort((a, b) => (b.ended_at || 0) - (a.ended_at || 0));
    for (const view of views) {
      const row = el(
        "tr",
        { class: "call", "data-call-id": view.call_id },
        el("td", { text: view.call_id.slice(0, 12) + (view.call_id.length > 12 ? "…" : "") }),
        el("td", { text: view.to }),
        el("td", { class: "outcome", "data-outcome": view.outcome || "", text: view.outcome || "?" }),
        el("td", { text: seconds(view.duration_seconds) }),
        el("td", { text: String(view.turns.length) }),
        el("td", { text: String(view.interruptions) }),
        el("td", { text: dollars(view.cost.total) }),
      );
      if (view.call_id === selected) row.classList.add("selected");
      row.addEventListener("click", () => select(view.call_id));
      body.append(row);
    }
    document.getElementById("finished-count").textContent = String(finished.size);
  }

  function select(callId) {
    selected = callId;
    renderFinished();
    renderDetail();
  }

  function renderDetail() {
    const view = finished.get(selected);
    const box = document.getElementById("detail");
    if (!view) { box.hidden = true; return; }
    box.hidden = false;
    box.dataset.callId = view.call_id;
    document.getElementById("detail-title").textContent = `Call ${view.call_id}`;
    const facts = document.getElementById("detail-facts");
    facts.replaceChildren();
    const add = (name, value) => facts.append(el("dt", { text: name }), el("dd", { text: value }));
    add("to", view.to);
    add("outcome", view.outcome || "?");
    if (view.status) add("Twilio status", view.status);
    add("length", seconds(view.duration_seconds));
    add("barge-ins", String(view.interruptions));
    if (view.campaign_id) add("campaign", view.campaign_id);
    for (const [name, summary] of Object.entries(view.latencies || {})) {
      add(LATENCY_NAMES[name] || name, `p50 ${ms(summary.p50)} · p95 ${ms(summary.p95)} · ${summary.count}×`);
    }
    const audio = document.getElementById("recording");
    if (view.recording) {
      const src = `${base}/api/calls/${encodeURIComponent(view.call_id)}/recording`;
      if (audio.dataset.src !== src) { audio.dataset.src = src; audio.src = src; }
      audio.hidden = false;
    } else {
      audio.hidden = true;
      audio.removeAttribute("src");
      delete audio.dataset.src;
    }
    const turns = document.getElementById("detail-turns");
    turns.replaceChildren(...view.turns.map(turnItem));
    const cost = document.querySelector("#detail-cost tbody");
    cost.replaceChildren();
    for (const [service, value] of Object.entries(view.cost.by_service)) {
      cost.append(el("tr", {}, el("td", { text: service }), el("td", { text: dollars(value) })));
    }
    cost.append(el("tr", { class: "total" }, el("th", { text: "total" }), el("th", { text: dollars(view.cost.total) })));
  }

  function spendChart(campaign) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "spend");
    svg.setAttribute("viewBox", "0 0 300 90");
    svg.setAttribute("preserveAspectRatio", "none");
    const points = campaign.spend;
    if (points.length) {
      const t0 = points[0][0];
      const t1 = Math.max(points[points.length - 1][0], t0 + 1);
      const top = Math.max(campaign.budget || 0, points[points.length - 1][1], 1e-6) * 1.1;
      const x = (t) => 4 + ((t - t0) / (t1 - t0)) * 292;
      const y = (v) => 80 - (v / top) * 72;
      let d = `M${x(t0).toFixed(1)},${y(0).toFixed(1)}`;
      for (const [t, v] of points) d += ` L${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      const area = document.createElementNS(ns, "path");
      area.setAttribute("class", "area");
      area.setAttribute("d", `${d} L${x(t1).toFixed(1)},${y(0).toFixed(1)} Z`);
      const line = document.createElementNS(ns, "path");
      line.setAttribute("class", "line");
      line.setAttribute("d", d);
      svg.append(area, line);
      if (campaign.budget) {
        const budget = document.createElementNS(ns, "line");
        budget.setAttribute("class", "budget");
        budget.setAttribute("x1", "4"); budget.setAttribute("x2", "296");
        budget.setAttribute("y1", y(campaign.budget).toFixed(1)); budget.setAttribute("y2", y(campaign.budget).toFixed(1));
        svg.append(budget);
      }
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", "6"); label.setAttribute("y", "88");
      label.textContent = `${dollars(campaign.spent)} over ${Math.round(t1 - t0)} s`;
      svg.append(label);
    }
    return svg;
  }

  function renderCampaigns() {
    const box = document.getElementById("campaigns");
    box.replaceChildren();
    if (!campaigns.length) box.append(el("p", { class: "empty", text: "No campaign." }));
    for (const campaign of campaigns) {
      const card = el("article", { class: "card campaign", "data-campaign-id": campaign.campaign_id });
      card.append(el("h3", {}, el("span", { text: campaign.name }), el("span", { class: "meta", text: campaign.state })));
      const percent = Math.round(campaign.progress * 100);
      const bar = el("div", { class: "progress", role: "progressbar" }, el("div", {}));
      bar.setAttribute("aria-valuenow", String(percent));
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.firstChild.style.width = `${percent}%`;
      let progress = `${campaign.done} of ${campaign.prospects} prospects done (${percent}%)`;
      if (campaign.in_progress) progress += ` · ${campaign.in_progress} in progress`;
      card.append(el("div", { class: "meta progress-text", text: progress }), bar);
      const outcomes = el("div", { class: "outcomes" });
      for (const [outcome, count] of Object.entries(campaign.outcomes)) {
        outcomes.append(el("span", { class: "outcome-count", "data-outcome": outcome }, el("b", { text: String(count) }), ` ${outcome}`));
      }
      card.append(outcomes);
      const spent = campaign.budget ? `${dollars(campaign.spent)} of ${dollars(campaign.budget)}` : dollars(campaign.spent);
      card.append(el("div", { class: "meta spent", text: `spent ${spent}` }), spendChart(campaign));
      box.append(card);
    }
  }

  function renderLoad(load) {
    // The serving process: its event loop's lag, and whether it holds new calls back for being overloaded.
    const box = document.getElementById("load");
    if (!load) { box.hidden = true; return; }
    box.hidden = false;
    box.dataset.state = load.overloaded ? "overloaded" : "ok";
    const lag = `loop ${Number(load.loop_lag_ms).toFixed(1)} ms late (p90)`;
    box.textContent = load.overloaded
      ? `overloaded: ${lag}, new calls held back`
      : `${load.calls} calls · ${lag}`;
  }

  function put(view) {
    if (view.state === "finished") {
      live.delete(view.call_id);
      finished.set(view.call_id, view);
    } else {
      live.set(view.call_id, view);
    }
  }

  function renderAll() {
    renderLive();
    renderFinished();
    renderDetail();
  }

  function connect() {
    const status = document.getElementById("connection");
    const source = new EventSource(`${base}/api/events`);
    source.addEventListener("open", () => { status.dataset.state = "live"; status.textContent = "live"; });
    source.addEventListener("error", () => {
      status.dataset.state = "lost";
      // A refused stream (a new token, an expired session) is not retried by the browser.
      status.textContent = source.readyState === EventSource.CLOSED ? "disconnected: reopen with the token" : "reconnecting…";
    });
    source.addEventListener("snapshot", (event) => {
      const snapshot = JSON.parse(event.data);
      live.clear();
      finished.clear();
      for (const view of snapshot.live) put(view);
      for (const view of snapshot.finished) put(view);
      renderAll();
    });
    source.addEventListener("call", (event) => {
      put(JSON.parse(event.data));
      renderAll();
    });
    source.addEventListener("load", (event) => renderLoad(JSON.parse(event.data)));
    source.addEventListener("campaigns", (event) => {
      campaigns = JSON.parse(event.data);
      renderCampaigns();
    });
  }

  connect();
})();
