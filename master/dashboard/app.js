// The Daybook dashboard: polls the master's JSON API every second and redraws the page.
// Every piece of data goes into the page as text (text nodes, textContent, title), never
// as HTML, so a host name or a failure reason can never become markup.
"use strict";

(() => {
  const POLL_MS = 1000;
  const RECENT_SYNCS = 10;

  const byId = (id) => document.getElementById(id);

  // el("td", {class: "x", "data-col": "status"}, child, "text", ...)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (name === "class") node.className = value;
      else if (name === "title") node.title = String(value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const pill = (text, kind, title) => el("span", { class: `pill ${kind}`, title }, text);
  const dash = () => el("span", { class: "muted" }, "—");
  const byName = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

  function ago(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  function secondsBetween(laterIso, earlierIso) {
    const later = Date.parse(laterIso);
    const earlier = Date.parse(earlierIso);
    return Number.isNaN(later) || Number.isNaN(earlier) ? null : (later - earlier) / 1000;
  }

  function clock(iso) {
    const time = new Date(iso);
    return Number.isNaN(time.getTime()) ? "" : time.toLocaleTimeString();
  }

  // -- hosts ---------------------------------------------------------------------------------

  function installedCell(installed) {
    const services = Object.keys(installed || {}).sort(byName);
    if (!services.length) return el("td", { "data-col": "installed" }, dash());
    return el(
      "td",
      { "data-col": "installed" },
      ...services.map((service) =>
        el(
          "div",
          { class: "svc", "data-service": service },
          el("span", { class: "svc-name" }, service),
          " ",
          el("span", { class: "versions" }, installed[service].join(", ") || "none"),
        ),
      ),
    );
  }

  function lastSyncCell(last, now) {
    if (!last) return el("td", { "data-col": "last-sync" }, el("span", { class: "muted" }, "never"));
    return el(
      "td",
      { "data-col": "last-sync", title: `sync ${last.sync_id}` },
      pill(last.ok ? "ok" : "failed", last.ok ? "good" : "bad"),
      " ",
      el("span", { class: "muted" }, ago(secondsBetween(now, last.finished_at))),
    );
  }

  function renderHosts(fleet) {
    const names = Object.keys(fleet.hosts).sort(byName);
    const rows = names.map((name) => {
      const host = fleet.hosts[name];
      const last = host.last_sync;
      return el(
        "tr",
        {
          "data-host": name,
          "data-state": host.up ? "up" : "down",
          class: last && !last.ok ? "failing" : null,
        },
        el("td", { "data-col": "host", class: "host" }, name),
        el("td", { "data-col": "status" }, pill(host.up ? "up" : "down", host.up ? "good" : "bad")),
        el("td", { "data-col": "seen", class: "muted" }, ago(host.last_seen_ago_s)),
        el("td", { "data-col": "pattern" }, last && last.pattern ? last.pattern : dash()),
        installedCell(host.installed),
        lastSyncCell(last, fleet.now),
      );
    });
    byId("hosts").tBodies[0].replaceChildren(...rows);
    byId("hosts-empty").hidden = rows.length > 0;

    const counts = fleet.counts;
    byId("count-hosts").textContent = counts.hosts;
    byId("count-up").textContent = counts.up;
    byId("count-down").textContent = counts.down;
    byId("count-failing").textContent = counts.failing;
    byId("epoch").textContent = `master epoch ${fleet.epoch} · `;
  }

  function renderFailures(fleet) {
    const items = [];
    for (const name of Object.keys(fleet.hosts).sort(byName)) {
      const last = fleet.hosts[name].last_sync;
      if (!last || last.ok) continue;
      const where = (what) => el("span", { class: "where" }, el("strong", {}, name), " · ", what);
      if (last.error) {
        items.push(el("li", { "data-host": name }, where("sync"), el("span", { class: "reason" }, last.error)));
      }
      for (const service of Object.keys(last.services || {}).sort(byName)) {
        const result = last.services[service];
        for (const version of Object.keys(result.failed || {})) {
          items.push(
            el(
              "li",
              { "data-host": name, "data-service": service },
              where(`${service} ${version}`),
              el("span", { class: "reason" }, result.failed[version]),
            ),
          );
        }
        if (result.error) {
          items.push(
            el(
              "li",
              { "data-host": name, "data-service": service },
              where(service),
              el("span", { class: "reason" }, result.error),
            ),
          );
        }
      }
    }
    byId("failures").replaceChildren(...items);
    byId("failures-empty").hidden = items.length > 0;
  }

  // -- services ------------------------------------------------------------------------------

  function hostList(hosts, kind) {
    if (!hosts.length) return el("span", { class: "muted" }, "none");
    const shown = hosts.slice(0, 12).map((host) => pill(host, kind));
    const more = hosts.length > 12 ? el("span", { class: "muted" }, ` +${hosts.length - 12} more`) : null;
    return el("span", { class: "hosts" }, ...shown, more);
  }

  function renderServices(document_) {
    const names = Object.keys(document_.services).sort(byName);
    const rows = names.map((name) => {
      const service = document_.services[name];
      const installed = Object.entries(service.installed).map(([version, count]) =>
        el("span", { class: "count" }, `${version}: ${count} host${count === 1 ? "" : "s"}`),
      );
      return el(
        "tr",
        { "data-service": name },
        el("td", { "data-col": "service", class: "host" }, name),
        el("td", { "data-col": "newest" }, service.newest === null ? dash() : service.newest),
        el("td", { "data-col": "versions" }, service.versions.join(", ") || dash()),
        el("td", { "data-col": "installed" }, ...(installed.length ? installed : [dash()])),
        el("td", { "data-col": "lagging" }, hostList(service.lagging, "warn")),
        el("td", { "data-col": "failing" }, hostList(service.failing, "bad")),
      );
    });
    byId("services").tBodies[0].replaceChildren(...rows);
    byId("services-empty").hidden = rows.length > 0;
    byId("count-services").textContent = rows.length;
  }

  // -- syncs ---------------------------------------------------------------------------------

  // A sync always ends: running while it waits, then ok, failed on N, or N did not answer
  // (the silent hosts on hover), never an endless "waiting".
  function syncResult(sync) {
    const hosts = sync.hosts;
    const silent = sync.silent || [];
    const pills = [];
    if (hosts.failed) pills.push(pill(`failed on ${hosts.failed}`, "bad"));
    if (silent.length) {
      pills.push(pill(`${silent.length} did not answer`, "bad", `no answer from ${silent.join(", ")}`));
    }
    if (pills.length) return el("span", { "data-state": sync.state }, ...pills);
    if (sync.state === "running") return pill("running", "warn");
    return pill("ok", "good");
  }

  function renderSyncs(document_) {
    const rows = document_.syncs.map((sync) =>
      el(
        "tr",
        { "data-sync": sync.sync_id },
        el("td", { "data-col": "sync", class: "mono", title: sync.sync_id }, sync.sync_id.slice(0, 8)),
        el("td", { "data-col": "issued" }, clock(sync.issued_at)),
        el("td", { "data-col": "origin" }, sync.origin),
        el("td", { "data-col": "target", class: "mono" }, sync.target),
        el("td", { "data-col": "answers" }, `${sync.hosts.answered}/${sync.hosts.expected}`),
        el("td", { "data-col": "result" }, syncResult(sync)),
      ),
    );
    byId("syncs").tBodies[0].replaceChildren(...rows);
    byId("syncs-empty").hidden = rows.length > 0;
    const newest = document_.syncs[0];
    const last = byId("last-sync");
    if (newest) {
      last.replaceChildren(syncResult(newest), " ", el("span", { class: "muted" }, clock(newest.issued_at)));
    } else {
      last.replaceChildren("none yet");
    }
  }

  // -- polling -------------------------------------------------------------------------------

  function setConnection(live, detail) {
    const box = byId("connection");
    box.dataset.state = live ? "live" : "lost";
    byId("connection-text").textContent = live
      ? `live · updated ${new Date().toLocaleTimeString()}`
      : `cannot reach the master (${detail}); retrying`;
  }

  async function getJson(path) {
    const response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  async function poll() {
    try {
      const [fleet, services, syncs] = await Promise.all([
        getJson("api/v1/fleet"),
        getJson("api/v1/services"),
        getJson(`api/v1/syncs?limit=${RECENT_SYNCS}`),
      ]);
      renderHosts(fleet);
      renderFailures(fleet);
      renderServices(services);
      renderSyncs(syncs);
      setConnection(true);
    } catch (error) {
      setConnection(false, error instanceof Error ? error.message : String(error));
    } finally {
      window.setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
