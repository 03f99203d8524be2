// logger-service live viewer: the volume chart and the rates above the table (issue 16).
// Plain SVG, no library. The model counts every record the page receives, by the record's own
// time, into fixed buckets; drawing is throttled and touches only the chart's own fixed-height
// box, so the table below never reflows. Levels the reader hid are counted but not drawn, so
// showing them again brings their history back. viewer.js owns the filter; this file only
// reports clicks on a level (onToggle).
(() => {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const STACK = ["trace", "debug", "info", "warn", "error", "fatal", "unknown"]; // bottom to top
  const RATE_WINDOW_S = 10;   // records/s are averaged over this many seconds
  const TOP_SERVICES = 3;
  const DRAW_EVERY_MS = 500;  // at most this often, whatever the record rate
  const PAD = { left: 40, right: 8, top: 16, bottom: 18 }; // room for the axis labels, in px

  const numberFormat = new Intl.NumberFormat("en");
  const fmt = (n) => numberFormat.format(n);
  const pad2 = (n) => String(n).padStart(2, "0");
  const clock = (ms) => {
    const d = new Date(ms);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  };
  const levelOf = (record) => (STACK.includes(record.level) ? record.level : "unknown");

  function svgEl(name, attributes, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Records/s over the last RATE_WINDOW_S seconds, overall and per service: one slot per second.
  class Rates {
    constructor() {
      this.slots = new Map(); // second -> {total, services: Map}
      this.since = Date.now();
    }

    add(service, now) {
      const second = Math.floor(now / 1000);
      let slot = this.slots.get(second);
      if (!slot) {
        slot = { total: 0, services: new Map() };
        this.slots.set(second, slot);
        for (const key of this.slots.keys()) if (key <= second - RATE_WINDOW_S) this.slots.delete(key);
      }
      slot.total += 1;
      slot.services.set(service, (slot.services.get(service) || 0) + 1);
    }

    read(now) {
      const second = Math.floor(now / 1000);
      // A page younger than the window divides by its age, so the first seconds are not diluted.
      const span = Math.max(1, Math.min(RATE_WINDOW_S, (now - this.since) / 1000));
      let total = 0;
      const services = new Map();
      for (const [key, slot] of this.slots) {
        if (key <= second - RATE_WINDOW_S) continue;
        total += slot.total;
        for (const [name, n] of slot.services) services.set(name, (services.get(name) || 0) + n);
      }
      const top = [...services].sort((a, b) => b[1] - a[1]).slice(0, TOP_SERVICES)
        .map(([name, n]) => [name, n / span]);
      return { total: total / span, top };
    }
  }

  class VolumeChart {
    // options: {windowMs, bucketMs, isShown(level), onToggle(level)}; elements by id in index.html.
    constructor(options) {
      this.windowMs = options.windowMs;
      this.bucketMs = options.bucketMs;
      this.isShown = options.isShown;
      this.onToggle = options.onToggle;
      this.buckets = new Map(); // bucket index -> counts per STACK level
      this.marks = [];          // {kind, from, to, text}
      this.rates = new Rates();
      this.width = 0;
      this.drawTimer = 0;
      const $ = (id) => document.getElementById(id);
      this.el = {
        svg: $("volume-chart"), bars: $("volume-bars"), axis: $("volume-axis"), markLayer: $("volume-marks"),
        legend: $("legend"), rates: $("rates"), summary: $("volume-summary"), details: $("volume-details"),
        table: $("volume-table"),
      };
      this.buildLegend();
      this.el.bars.addEventListener("click", (event) => {
        const level = event.target.dataset && event.target.dataset.level;
        if (level) this.onToggle(level);
      });
      this.el.details.addEventListener("toggle", () => this.fillTable(Date.now()));
      if (window.ResizeObserver) {
        new ResizeObserver(() => { this.width = 0; this.draw(); }).observe(this.el.svg);
      }
      setInterval(() => this.scheduleDraw(), 1000); // the time axis moves even when nothing arrives
    }

    // -- the model ------------------------------------------------------------------------

    add(record, live) {
      // Nanoseconds ("…57.123456789Z"): Date keeps milliseconds.
      const iso = String(record.time);
      const time = Date.parse(iso.length > 23 ? iso.slice(0, 23) + "Z" : iso);
      const now = Date.now();
      // A clock a little ahead of ours still lands in the newest bucket.
      const when = Number.isNaN(time) ? now : Math.min(time, now);
      const index = Math.floor(when / this.bucketMs);
      if (index >= this.firstIndex(now)) {
        let counts = this.buckets.get(index);
        if (!counts) {
          counts = new Array(STACK.length).fill(0);
          this.buckets.set(index, counts);
        }
        counts[STACK.indexOf(levelOf(record))] += 1;
      }
      // Replayed history is not part of the rate at which records arrive now.
      if (live) this.rates.add(String(record.service), now);
    }

    // A hole in the data (gap, dropped): from the last record before it to when it was announced.
    mark(kind, from, to, text) {
      this.marks.push({ kind, from: Math.min(from || to, to), to, text });
      this.scheduleDraw();
    }

    firstIndex(now) {
      return Math.floor(now / this.bucketMs) - Math.round(this.windowMs / this.bucketMs) + 1;
    }

    prune(now) {
      const first = this.firstIndex(now);
      for (const key of this.buckets.keys()) if (key < first) this.buckets.delete(key);
      const start = first * this.bucketMs;
      this.marks = this.marks.filter((m) => m.to >= start);
    }

    totals() {
      const totals = new Array(STACK.length).fill(0);
      for (const counts of this.buckets.values()) counts.forEach((n, i) => { totals[i] += n; });
      return totals;
    }

    // -- drawing -------------------------------------------------------------------------

    scheduleDraw() {
      if (this.drawTimer) return;
      this.drawTimer = setTimeout(() => {
        this.drawTimer = 0;
        requestAnimationFrame(() => this.draw());
      }, DRAW_EVERY_MS);
    }

    draw() {
      const now = Date.now();
      this.prune(now);
      if (!this.width) this.width = this.el.svg.clientWidth || 600;
      const height = this.el.svg.clientHeight || 120;
      const geometry = this.geometry(now, height);
      this.el.bars.replaceChildren(...this.barNodes(geometry));
      this.el.axis.replaceChildren(...this.axisNodes(geometry));
      this.el.markLayer.replaceChildren(...this.markNodes(geometry));
      this.updateLegend();
      this.updateRates(now);
      this.updateSummary(now, geometry);
      if (this.el.details.open) this.fillTable(now);
    }

    geometry(now, height) {
      const first = this.firstIndex(now);
      const count = Math.round(this.windowMs / this.bucketMs);
      let peak = 0;
      for (const [index, counts] of this.buckets) {
        if (index < first) continue;
        peak = Math.max(peak, counts.reduce((sum, n, i) => sum + (this.isShown(STACK[i]) ? n : 0), 0));
      }
      const plotWidth = Math.max(10, this.width - PAD.left - PAD.right);
      const plotHeight = Math.max(10, height - PAD.top - PAD.bottom);
      const start = first * this.bucketMs;
      return {
        first, count, peak, start, end: start + count * this.bucketMs, plotWidth, plotHeight, height,
        slot: plotWidth / count,
        x: (ms) => PAD.left + ((ms - start) / (count * this.bucketMs)) * plotWidth,
        y: (n) => PAD.top + plotHeight - (peak ? (n / peak) * plotHeight : 0),
      };
    }

    barNodes(g) {
      const nodes = [];
      const barWidth = Math.max(1, g.slot - 1);
      for (const [index, counts] of this.buckets) {
        const x = PAD.left + (index - g.first) * g.slot;
        const from = clock(index * this.bucketMs);
        let stacked = 0;
        STACK.forEach((level, i) => {
          const n = counts[i];
          if (!n || !this.isShown(level)) return;
          const top = g.y(stacked + n);
          const rect = svgEl("rect", {
            class: `bar lvl-${level}`, x: x.toFixed(1), y: top.toFixed(1), width: barWidth.toFixed(1),
            height: Math.max(0.5, g.y(stacked) - top).toFixed(1), fill: `url(#pat-${level})`,
            "data-level": level, "data-count": n, "data-bucket": index,
          });
          rect.append(svgEl("title", {}, `${from}: ${fmt(n)} ${level} (click to hide ${level})`));
          nodes.push(rect);
          stacked += n;
        });
      }
      return nodes;
    }

    axisNodes(g) {
      const baseline = PAD.top + g.plotHeight;
      const nodes = [
        svgEl("line", { class: "axis-line", x1: PAD.left, x2: PAD.left + g.plotWidth, y1: baseline, y2: baseline }),
        svgEl("text", { class: "axis-label", x: PAD.left - 4, y: PAD.top + 4, "text-anchor": "end" }, fmt(g.peak)),
        svgEl("text", { class: "axis-label", x: PAD.left - 4, y: baseline, "text-anchor": "end" }, "0"),
      ];
      // A tick each minute, labelled with the local time.
      for (let t = Math.ceil(g.start / 60000) * 60000; t <= g.end; t += 60000) {
        const x = g.x(t);
        nodes.push(svgEl("line", { class: "axis-tick", x1: x, x2: x, y1: baseline, y2: baseline + 4 }));
        nodes.push(svgEl("text", { class: "axis-label", x, y: g.height - 3, "text-anchor": "middle" },
          clock(t).slice(0, 5)));
      }
      return nodes;
    }

    markNodes(g) {
      const nodes = [];
      for (const m of this.marks) {
        const from = Math.max(PAD.left, g.x(m.from));
        const to = Math.max(from + 2, g.x(m.to));
        const group = svgEl("g", { class: `mark mark-${m.kind}`, "data-kind": m.kind });
        group.append(
          svgEl("rect", {
            class: "mark-band", x: from.toFixed(1), y: PAD.top, width: (to - from).toFixed(1), height: g.plotHeight,
          }),
          // Named in text, not only by colour.
          svgEl("text", { class: "mark-label", x: to.toFixed(1), y: PAD.top - 4, "text-anchor": "end" }, m.kind),
          svgEl("title", {}, `${clock(m.from)}–${clock(m.to)}: ${m.text}`),
        );
        nodes.push(group);
      }
      return nodes;
    }

    // -- legend, rates, text alternative ---------------------------------------------------------

    buildLegend() {
      for (const level of STACK) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = `legend-item lvl-${level}`;
        button.dataset.level = level;
        const swatch = svgEl("svg", { class: "swatch", width: 14, height: 14, "aria-hidden": "true" });
        swatch.append(svgEl("rect", { width: 14, height: 14, fill: `url(#pat-${level})` }));
        const name = document.createElement("span");
        name.textContent = level;
        const count = document.createElement("span");
        count.className = "legend-count";
        button.append(swatch, name, " ", count);
        button.addEventListener("click", () => this.onToggle(level));
        this.el.legend.append(button);
      }
    }

    updateLegend() {
      const totals = this.totals();
      for (const button of this.el.legend.children) {
        const level = button.dataset.level;
        const shown = this.isShown(level);
        button.setAttribute("aria-pressed", String(shown));
        button.title = `${shown ? "Hide" : "Show"} ${level} records`;
        const count = fmt(totals[STACK.indexOf(level)]);
        const label = button.querySelector(".legend-count");
        if (label.textContent !== count) label.textContent = count;
      }
    }

    updateRates(now) {
      const { total, top } = this.rates.read(now);
      const perService = top.map(([name, rate]) => `${name} ${rate.toFixed(rate < 10 ? 1 : 0)}`).join(" · ");
      const text = `${total.toFixed(total < 10 ? 1 : 0)} records/s` + (perService ? ` — ${perService}` : "");
      if (this.el.rates.textContent !== text) this.el.rates.textContent = this.el.rates.title = text;
      this.el.rates.dataset.rate = total.toFixed(2);
    }

    updateSummary(now, g) {
      const totals = this.totals();
      const all = totals.reduce((a, b) => a + b, 0);
      const parts = STACK.map((level, i) => [level, totals[i]]).filter(([, n]) => n)
        .map(([level, n]) => `${level} ${fmt(n)}${this.isShown(level) ? "" : " (hidden)"}`);
      let text = `${fmt(all)} records from ${clock(g.start)} to ${clock(now)}`
        + (parts.length ? `: ${parts.join(", ")}.` : ".");
      if (this.marks.length) {
        text += " " + this.marks.map((m) => `${m.kind} at ${clock(m.to)}`).join(", ") + ".";
      }
      if (this.el.summary.textContent !== text) this.el.summary.textContent = text;
    }

    fillTable(now) {
      // The chart as a table: one row per bucket that holds records, newest first.
      if (!this.el.details.open) return;
      this.prune(now);
      const body = document.createElement("tbody");
      const indices = [...this.buckets.keys()].sort((a, b) => b - a);
      for (const index of indices) {
        const tr = document.createElement("tr");
        const th = document.createElement("th");
        th.scope = "row";
        th.textContent = clock(index * this.bucketMs);
        tr.append(th);
        for (const n of this.buckets.get(index)) {
          const td = document.createElement("td");
          td.textContent = fmt(n);
          tr.append(td);
        }
        body.append(tr);
      }
      const old = this.el.table.tBodies[0];
      if (old) old.replaceWith(body);
      else this.el.table.append(body);
    }
  }

  window.VolumeChart = VolumeChart;
  window.VolumeChart.STACK = STACK;
})();
