// olla dashboard: polls olla's read-only status routes and redraws the page in place.
//
// Plain script, no framework and no build step. Every string that reaches the page becomes a
// text node (nothing is ever parsed as HTML): endpoint and model names come from the config
// and from the backends, so they are data, never markup.
"use strict";

(function () {
  const REFRESH_MS = 3000;
  const ROUTES = {
    status: "/internal/status",
    endpoints: "/internal/status/endpoints",
    models: "/internal/status/models",
    modelStats: "/internal/stats/models",
    failovers: "/internal/stats/failovers",
  };

  // ------------------------------------------------------------------ DOM helpers

  function byId(id) {
    return document.getElementById(id);
  }

  // An element with text (a string, number or node list) and attributes; text is never parsed.
  function el(tag, options, children) {
    const node = document.createElement(tag);
    const opts = options || {};
    if (opts.className) node.className = opts.className;
    if (opts.title) node.title = String(opts.title);
    if (opts.data) {
      for (const [key, value] of Object.entries(opts.data)) node.dataset[key] = String(value);
    }
    if (children === undefined || children === null) return node;
    for (const child of Array.isArray(children) ? children : [children]) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function cell(content, className, data) {
    return el("td", { className: className, data: data }, content);
  }

  // A status word as a coloured pill; the class only ever takes [a-z_-] characters.
  function pill(status) {
    const word = String(status || "unknown");
    const safe = word.toLowerCase().replace(/[^a-z_-]/g, "");
    return el("span", { className: "pill status-" + safe }, word);
  }

  function fill(tbody, rows, columns, emptyText) {
    if (rows.length === 0) {
      rows = [el("tr", {}, el("td", { className: "empty" }, emptyText))];
      rows[0].firstChild.colSpan = columns;
    }
    tbody.replaceChildren(...rows);
  }

  function text(id, value) {
    byId(id).textContent = value === undefined || value === null ? "-" : String(value);
  }

  // ------------------------------------------------------------------ formats

  function ms(value) {
    if (typeof value !== "number") return value === undefined || value === null ? "-" : String(value);
    return value >= 1000 ? (value / 1000).toFixed(1) + "s" : Math.round(value) + "ms";
  }

  function bytes(count) {
    if (typeof count !== "number" || count <= 0) return "-";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let n = count;
    let unit = 0;
    while (n >= 1024 && unit < units.length - 1) {
      n /= 1024;
      unit += 1;
    }
    return (unit === 0 ? n : n.toFixed(1)) + " " + units[unit];
  }

  function clockTime(iso) {
    const when = new Date(iso);
    return isNaN(when.getTime()) ? String(iso) : when.toLocaleTimeString();
  }

  function ago(iso, nowIso) {
    const then = new Date(iso).getTime();
    const now = nowIso ? new Date(nowIso).getTime() : Date.now();
    if (isNaN(then) || isNaN(now)) return "";
    const seconds = Math.max(0, Math.round((now - then) / 1000));
    if (seconds < 60) return seconds + "s ago";
    if (seconds < 3600) return Math.round(seconds / 60) + "m ago";
    return Math.round(seconds / 3600) + "h ago";
  }

  function first(object, keys) {
    for (const key of keys) {
      if (object[key] !== undefined && object[key] !== null) return object[key];
    }
    return undefined;
  }

  // ------------------------------------------------------------------ panels

  function renderStatus(status) {
    const system = status.system || {};
    const badge = byId("system-status");
    badge.replaceWith(Object.assign(pill(system.status), { id: "system-status" }));
    text("version", system.version ? "v" + system.version : "");
    text("sum-endpoints", system.endpoints_up);
    text("sum-requests", system.total_requests);
    text("sum-success", system.success_rate);
    text("sum-latency", system.avg_latency);
    text("sum-inflight", system.active_connections);
    text("sum-traffic", system.total_traffic);
    text("sum-uptime", system.uptime);
    renderQueue(status.queue);
  }

  // The admission queue (the "queue" section of /internal/status): requests held per model
  // and priority now, and what the queue has done so far. Hidden when olla has no queue.
  function renderQueue(queue) {
    const panel = byId("queue-panel");
    if (!queue) {
      panel.hidden = true;
      text("sum-queued", "-");
      return;
    }
    panel.hidden = false;
    text("sum-queued", queue.enabled ? queue.held : "off");
    text(
      "queue-count",
      queue.enabled ? queue.held + " held (at most " + queue.max_size + ")" : "off"
    );
    const models = queue.models || {};
    const rows = Object.keys(models).sort().map(function (name) {
      const row = models[name];
      const held = row.held || {};
      return el("tr", { data: { queueModel: name } }, [
        cell(name),
        cell(held.high || 0, "num", { field: "high" }),
        cell(held.normal || 0, "num", { field: "normal" }),
        cell(held.low || 0, "num", { field: "low" }),
        cell(ms(row.oldest_wait_s * 1000), "num", { field: "oldest" }),
        cell(ms(row.service_time_s * 1000) + (row.service_time_learnt ? "" : " (prior)"), "num"),
      ]);
    });
    fill(byId("queue"), rows, 6, "Nothing waiting: every request found a free slot.");
    const t = queue.totals || {};
    const refused = (t.queue_full || 0) + (t.wait_timeout || 0);
    text(
      "queue-totals",
      (t.at_once || 0) + " let through at once, " + (t.after_wait || 0) + " after a wait, " +
        refused + " refused (" + (t.queue_full || 0) + " queue full, " +
        (t.wait_timeout || 0) + " waited too long), " + (t.cancelled || 0) +
        " gave up while held"
    );
  }

  function renderEndpoints(payload) {
    const endpoints = payload.endpoints || [];
    text("endpoints-count", payload.healthy_count + " healthy of " + payload.total_count);
    const rows = endpoints.map(function (ep) {
      const latency =
        ep.avg_latency_ms === undefined
          ? "-"
          : ms(ep.avg_latency_ms) + " / " + ms(ep.min_latency_ms) + " / " + ms(ep.max_latency_ms);
      const issue = [ep.issues, ep.status_reason].filter(Boolean).join(": ");
      return el("tr", { data: { endpoint: ep.name, status: ep.status } }, [
        cell([el("div", {}, ep.name), el("div", { className: "sub" }, ep.url)], "", { field: "name" }),
        cell(ep.type, "", { field: "type" }),
        cell(pill(ep.status), "", { field: "health" }),
        cell(ep.priority, "num"),
        cell(ep.active_connections, "num", { field: "in-flight" }),
        cell(ep.request_count, "num", { field: "requests" }),
        cell(ep.success_rate, "num"),
        cell(latency, "num", { field: "latency" }),
        cell(ep.model_count, "num", { field: "models" }),
        cell(ep.health_check),
        cell(issue, "wrap"),
      ]);
    });
    fill(byId("endpoints"), rows, 11, "No endpoints configured.");
  }

  function renderModels(payload) {
    const details = new Map();
    for (const model of payload.recent_models || []) details.set(model.name, model);
    const rows = [];
    const families = payload.models_by_family || {};
    for (const family of Object.keys(families).sort()) {
      for (const name of families[family]) {
        const info = details.get(name) || {};
        const hosts = (info.endpoints || []).map(function (host) {
          return el("span", { className: "tag" }, host);
        });
        rows.push(
          el("tr", { data: { model: name } }, [
            cell(name),
            cell(family),
            cell(info.params || "-"),
            cell(info.quant || "-"),
            cell(typeof info.size === "string" ? info.size : bytes(info.size), "num"),
            cell(hosts.length ? hosts : "-", "wrap", { field: "endpoints" }),
          ])
        );
      }
    }
    text(
      "models-count",
      (payload.total_models || 0) + " models, " + (payload.total_families || 0) + " families"
    );
    fill(byId("models"), rows, 6, "No models discovered yet.");
  }

  // /internal/stats/models may not exist (older olla): the panel shows only when it answers.
  function renderModelStats(payload) {
    const panel = byId("model-stats-panel");
    if (payload === null) {
      panel.hidden = true;
      return;
    }
    panel.hidden = false;
    const models = payload.models || [];
    text("model-stats-count", models.length + " models");
    const rows = models.map(function (model) {
      return el("tr", { data: { modelStats: model.name } }, [
        cell(model.name),
        cell(first(model, ["total_requests", "requests"]), "num", { field: "requests" }),
        cell(first(model, ["success_rate"]), "num"),
        cell(ms(first(model, ["average_latency", "avg_latency_ms", "average_latency_ms"])), "num"),
        cell(ms(first(model, ["p95_latency", "p95_latency_ms"])), "num", { field: "p95" }),
        cell(first(model, ["last_requested"]) || "-"),
      ]);
    });
    fill(byId("model-stats"), rows, 6, "No model has been asked for yet.");
  }

  function renderFailovers(payload) {
    const events = payload.failovers || [];
    text("sum-failovers", payload.total);
    text("failovers-count", events.length ? "last " + events.length + " of " + payload.total : "");
    const rows = events.map(function (event) {
      const cause = event.kind === "busy" ? "answered " + event.cause : event.cause;
      return el("tr", { data: { failover: event.request_id } }, [
        cell([clockTime(event.time), el("div", { className: "sub" }, ago(event.time, payload.timestamp))]),
        cell(event.request_id, "", { field: "request" }),
        cell(event.model || "-", "", { field: "model" }),
        cell(event.from, "", { field: "from" }),
        cell(event.to, "", { field: "to" }),
        cell([pill(event.kind), " ", cause], "wrap", { field: "cause" }),
      ]);
    });
    fill(byId("failovers"), rows, 6, "No failovers: every request was served by its first choice.");
  }

  // ------------------------------------------------------------------ polling

  async function getJSON(path, optional) {
    const response = await fetch(path, { headers: { Accept: "application/json" } });
    if (optional && response.status === 404) return null;
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  const panels = [
    [ROUTES.status, false, renderStatus],
    [ROUTES.endpoints, false, renderEndpoints],
    [ROUTES.models, false, renderModels],
    [ROUTES.modelStats, true, renderModelStats],
    [ROUTES.failovers, false, renderFailovers],
  ];

  async function refresh() {
    const results = await Promise.allSettled(
      panels.map(function ([path, optional]) {
        return getJSON(path, optional);
      })
    );
    const problems = [];
    results.forEach(function (result, i) {
      const [path, , render] = panels[i];
      if (result.status === "rejected") {
        problems.push(String(result.reason && result.reason.message ? result.reason.message : path));
        return;
      }
      try {
        render(result.value);
      } catch (err) {
        problems.push(path + ": " + err);
      }
    });
    const banner = byId("error");
    banner.hidden = problems.length === 0;
    banner.textContent = problems.length ? "Could not refresh: " + problems.join("; ") : "";
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
    text("updated", "updated " + new Date().toLocaleTimeString());
  }

  async function loop() {
    try {
      await refresh();
    } finally {
      setTimeout(loop, REFRESH_MS);
    }
  }

  loop();
})();
