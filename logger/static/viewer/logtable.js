// logger-service live viewer: the log table (issue 16), a virtualized list.
//
// The page keeps up to `max` records (and the markers between them) as data and puts in the DOM
// only the rows in and near the view. At 2,000 records/s each record stays about half a second
// in a table of 1,000: building, styling and removing every one of them as a row was what kept
// the page from drawing 60 frames a second (docs/BENCHMARKS.md). Now the work per frame is the
// rows that scrolled into view, whatever the rate or the cap.
//
// Rows are absolutely positioned in a tbody as tall as all of them (each placed with `top`), so
// a row added or removed moves no other in layout. Record rows share one height, measured on the
// first one drawn; a marker or an opened record's details is measured when it is first drawn.
//
// It stays a table for assistive technology: aria-rowcount on the table, aria-rowindex on each
// row. The keyboard: the rows have one tab stop (roving tabindex) that is always in the DOM;
// arrows, Page Up/Down, Home and End move it and scroll to it; Enter or Space opens a record.
// The row that has the focus is never taken out of the DOM while its record is in the table.
// viewer.js makes the rows' content (makeRow, makeDetails, makeMarker).
(() => {
  "use strict";

  const OVERSCAN_PX = 1200;    // rows drawn above and below the view, so that scrolling shows no blank
  const ROW_ESTIMATE_PX = 26;  // until a record row has been measured
  const MARKER_ESTIMATE_PX = 30;
  const DETAILS_ESTIMATE_PX = 240;
  const PAGE_ROWS = 10;        // Page Up, Page Down
  const DATA_FRAME_MS = 250;   // new records are drawn at most this often (scrolling, keys: every frame)
  const BOTTOM_SLACK_PX = 8;   // this close to the end still counts as following
  const ROW = 0;
  const DETAILS = 1;

  class LogTable {
    // options: {maxRows, isShown(level), levelOf(record), makeRow(record, replay), makeDetails(record),
    //           makeMarker(kind, text), onChange()}; the elements by id in index.html.
    constructor(options) {
      this.maxRows = options.maxRows;
      this.isShown = options.isShown;
      this.levelOf = options.levelOf;
      this.makeRow = options.makeRow;
      this.makeDetails = options.makeDetails;
      this.makeMarker = options.makeMarker;
      this.onChange = options.onChange;
      const $ = (id) => document.getElementById(id);
      this.el = { table: $("log"), head: $("log").tHead, body: $("rows"), scroller: $("scroller"),
                  empty: $("empty"), follow: $("follow") };

      // The data: oldest first. An entry is {seq, kind: "rec", record, replay, level, expanded}
      // or {seq, kind: "marker", markerKind, text}. seq numbers them in order, so an entry's index
      // is entry.seq - entries[0].seq (entries leave from the front only).
      this.entries = [];
      this.nextSeq = 0;
      this.records = 0;
      this.heights = new Map();   // entry -> measured height of a marker; details: detailsHeights
      this.detailsHeights = new Map();
      this.rowHeight = 0;         // of every record row, once measured
      // The layout, rebuilt each frame: the rows in order (entry, and whether it is its details),
      // and the top of each in the tbody.
      this.itemEntries = [];
      this.itemParts = [];
      this.tops = [];
      this.total = 0;
      // What is in the DOM: entry -> {tr, top, index, tabIndex, expanded}.
      this.drawn = [new Map(), new Map()]; // [ROW], [DETAILS]
      this.entryOf = new WeakMap();        // tr -> entry
      this.detailsIds = new Map();
      this.nextDetailsId = 0;

      this.current = null;      // the entry whose row is the tab stop
      this.focusLost = false;   // the focused row's record left the table
      this.follow = true;       // stay at the newest row
      this.unseen = 0;          // records added while not following
      this.removedAbove = 0;    // px of rows removed from the top since the last frame
      this.added = 0;           // entries added since the last frame
      this.frame = 0;
      this.dataTimer = 0;
      this.lastRender = -Infinity;
      this.viewHeight = this.el.scroller.clientHeight;
      this.headHeight = this.el.head.offsetHeight;

      const body = this.el.body;
      body.addEventListener("keydown", (event) => this.onKey(event));
      body.addEventListener("click", (event) => this.onClick(event));
      body.addEventListener("focusin", (event) => {
        const tr = event.target.closest && event.target.closest("tr.rec");
        if (tr && this.entryOf.has(tr)) this.setCurrent(this.entryOf.get(tr));
      });
      this.el.scroller.addEventListener("scroll", () => this.onScroll(), { passive: true });
      this.el.scroller.addEventListener("wheel", (event) => this.onWheel(event), { passive: true });
      if (window.ResizeObserver) {
        let width = 0;
        new ResizeObserver(() => {
          this.viewHeight = this.el.scroller.clientHeight;
          this.headHeight = this.el.head.offsetHeight;
          if (width !== this.el.scroller.clientWidth) {
            // Text wraps differently: markers and details are measured again when drawn.
            width = this.el.scroller.clientWidth;
            this.heights.clear();
            this.detailsHeights.clear();
            this.rowHeight = 0;
            for (const map of this.drawn) for (const drawn of map.values()) drawn.measured = false;
          }
          this.schedule();
        }).observe(this.el.scroller);
      }
    }

    // -- the data -----------------------------------------------------------------------------

    add(items) {
      // items: [record, replay] pairs, oldest first.
      for (const [record, replay] of items.slice(-this.maxRows)) {
        this.entries.push({ seq: this.nextSeq++, kind: "rec", record, replay, level: this.levelOf(record),
                            expanded: false });
      }
      this.records += Math.min(items.length, this.maxRows);
      this.added += items.length;
      if (!this.follow) this.unseen += items.length;
      this.trim();
      this.scheduleData();
    }

    marker(kind, text) {
      this.entries.push({ seq: this.nextSeq++, kind: "marker", markerKind: kind, text });
      this.added += 1;
      this.trim();
      this.scheduleData();
    }

    clear() {
      this.entries = [];
      this.records = 0;
      this.heights.clear();
      this.detailsHeights.clear();
      this.current = null;
      this.unseen = 0;
      this.follow = true;
      this.schedule();
    }

    trim() {
      // Oldest first; markers count towards a looser bound so that they cannot pile up either.
      const entries = this.entries;
      const bound = 2 * this.maxRows + 50;
      let records = this.records;
      let cut = 0;
      while (cut < entries.length && (records > this.maxRows || entries.length - cut > bound)) {
        if (entries[cut].kind === "rec") records -= 1;
        cut += 1;
      }
      if (!cut) return;
      const focused = this.focusedEntry();
      const removed = entries.splice(0, cut);
      this.records = records;
      const first = entries.length ? entries[0].seq : this.nextSeq;
      for (const entry of removed) {
        // The reader who scrolled up keeps seeing the same rows.
        if (this.visible(entry)) this.removedAbove += this.height(entry, ROW) + (entry.expanded ? this.height(entry, DETAILS) : 0);
        this.heights.delete(entry);
        this.detailsHeights.delete(entry);
        this.detailsIds.delete(entry);
      }
      if (this.current && this.current.seq < first) this.current = null;
      if (focused && focused.seq < first) this.focusLost = true;
    }

    visible(entry) {
      return entry.kind === "marker" || this.isShown(entry.level);
    }

    height(entry, part) {
      if (part === DETAILS) return this.detailsHeights.get(entry) || DETAILS_ESTIMATE_PX;
      if (entry.kind === "rec") return this.rowHeight || ROW_ESTIMATE_PX;
      return this.heights.get(entry) || MARKER_ESTIMATE_PX;
    }

    firstRecord() {
      return this.entries.find((e) => e.kind === "rec" && this.isShown(e.level)) || null;
    }

    lastRecord() {
      for (let i = this.entries.length - 1; i >= 0; i -= 1) {
        const e = this.entries[i];
        if (e.kind === "rec" && this.isShown(e.level)) return e;
      }
      return null;
    }

    // -- drawing --------------------------------------------------------------------------------

    schedule() {
      if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
    }

    scheduleData() {
      // At 2,000 records/s each frame would bring a whole view of new rows, unreadable and
      // costly: new records wait for the next of a few frames a second.
      if (this.frame || this.dataTimer) return;
      const wait = this.lastRender + DATA_FRAME_MS - performance.now();
      if (wait <= 0) this.schedule();
      else this.dataTimer = setTimeout(() => { this.dataTimer = 0; this.schedule(); }, wait);
    }

    layout() {
      const entries = this.itemEntries;
      const parts = this.itemParts;
      const tops = this.tops;
      entries.length = parts.length = tops.length = 0;
      let y = 0;
      for (const entry of this.entries) {
        if (!this.visible(entry)) continue;
        entries.push(entry);
        parts.push(ROW);
        tops.push(y);
        y += this.height(entry, ROW);
        if (entry.expanded) {
          entries.push(entry);
          parts.push(DETAILS);
          tops.push(y);
          y += this.height(entry, DETAILS);
        }
      }
      this.total = y;
    }

    itemIndex(entry, part = ROW) {
      // Binary search by seq; details sit right after their row.
      const entries = this.itemEntries;
      let low = 0;
      let high = entries.length;
      while (low < high) {
        const mid = (low + high) >> 1;
        if (entries[mid].seq < entry.seq) low = mid + 1;
        else high = mid;
      }
      const index = low + (part === DETAILS ? 1 : 0);
      return entries[index] === entry && this.itemParts[index] === part ? index : -1;
    }

    maxScrollTop() {
      return Math.max(0, this.headHeight + this.total - this.viewHeight);
    }

    render(pass = 0) {
      cancelAnimationFrame(this.frame);
      this.frame = 0;
      clearTimeout(this.dataTimer);
      this.dataTimer = 0;
      this.lastRender = performance.now();
      const s = this.el.scroller;
      const body = this.el.body;
      const first = this.entries.length ? this.entries[0].seq : this.nextSeq;
      if (this.current && !(this.visible(this.current) && this.current.seq >= first)) this.current = null;
      if (!this.current) this.current = this.focusLost ? this.firstRecord() : this.lastRecord();
      this.layout();

      // Where the view will be: the end when following; else where the reader was, less what left above.
      let viewTop = this.follow ? this.maxScrollTop() : Math.min(this.maxScrollTop(), Math.max(0, s.scrollTop - this.removedAbove));
      const moveScroll = this.follow || this.removedAbove > 0;
      this.removedAbove = 0;

      // The rows to draw: those within OVERSCAN_PX of the view (tbody coordinates: the sticky head
      // covers the top of the scroller), the tab stop and the focused row wherever they are. While
      // following a stream that fills more than the view between two frames, rows above the view
      // would be replaced before anyone scrolls to them: half a view of them is enough then, and
      // the rest is drawn once the stream calms down.
      const streaming = this.follow && this.added * this.height({ kind: "rec" }, ROW) > this.viewHeight;
      this.added = 0;
      const from = viewTop - (streaming ? this.viewHeight / 2 : OVERSCAN_PX);
      const to = viewTop + this.viewHeight + OVERSCAN_PX;
      const tops = this.tops;
      let low = 0;
      let high = tops.length;
      while (low < high) {
        const mid = (low + high) >> 1;
        if (tops[mid] < from) low = mid + 1;
        else high = mid;
      }
      const order = [];
      for (let i = Math.max(0, low - 1); i < tops.length && tops[i] < to; i += 1) order.push(i);
      const pinned = [];
      if (this.current) pinned.push(this.itemIndex(this.current));
      const focused = this.focusedItem();
      if (focused) pinned.push(this.itemIndex(focused.entry, focused.part));
      for (const index of pinned) if (index >= 0 && !order.includes(index)) order.push(index);
      order.sort((a, b) => a - b);

      // Out of the DOM: rows no longer wanted. In: the new ones, in order (the rows kept are in
      // order already, since entries only come at the end and leave from the front).
      const wanted = [new Set(), new Set()];
      for (const i of order) wanted[this.itemParts[i]].add(this.itemEntries[i]);
      for (const part of [ROW, DETAILS]) {
        for (const [entry, drawn] of this.drawn[part]) {
          if (!wanted[part].has(entry)) {
            drawn.tr.remove();
            this.drawn[part].delete(entry);
          }
        }
      }
      const measure = [];
      let cursor = body.firstElementChild;
      for (const i of order) {
        const entry = this.itemEntries[i];
        const part = this.itemParts[i];
        let drawn = this.drawn[part].get(entry);
        if (!drawn) {
          drawn = { tr: this.create(entry, part), top: NaN, index: -1, tabIndex: NaN, expanded: null, measured: false };
          this.drawn[part].set(entry, drawn);
          this.entryOf.set(drawn.tr, entry);
        }
        if (drawn.tr === cursor) cursor = cursor.nextElementSibling;
        else body.insertBefore(drawn.tr, cursor);
        this.place(drawn, entry, part, i);
        if (!drawn.measured && (part === DETAILS || entry.kind === "marker" || !this.rowHeight)) measure.push([drawn, entry, part]);
      }
      const rowCount = String(this.itemEntries.length + 1); // and the head's row
      if (this.el.table.getAttribute("aria-rowcount") !== rowCount) this.el.table.setAttribute("aria-rowcount", rowCount);
      const height = `${this.total}px`;
      if (body.style.height !== height) body.style.height = height;
      this.el.empty.hidden = this.entries.length > 0;

      // Markers and details wrap with the width: measured once drawn (one layout), then laid out again.
      let changed = false;
      for (const [drawn, entry, part] of measure) {
        drawn.measured = true;
        const h = drawn.tr.getBoundingClientRect().height;
        if (!h) continue;
        if (part === DETAILS) {
          if (h !== this.detailsHeights.get(entry)) { this.detailsHeights.set(entry, h); changed = true; }
        } else if (entry.kind === "marker") {
          if (h !== this.heights.get(entry)) { this.heights.set(entry, h); changed = true; }
        } else if (h !== this.rowHeight) {
          this.rowHeight = h;
          changed = true;
        }
      }
      if (changed && pass < 2) {
        this.removedAbove = this.follow ? 0 : s.scrollTop - viewTop; // keep the view where it is
        this.render(pass + 1);
        return;
      }

      if (moveScroll) {
        if (this.follow) viewTop = this.maxScrollTop();
        if (s.scrollTop !== viewTop) s.scrollTop = viewTop;
      }
      if (this.focusLost) {
        // The focused row's record was the oldest: keep the keyboard where the reader was.
        this.focusLost = false;
        const drawn = this.current && this.drawn[ROW].get(this.current);
        if (drawn) drawn.tr.focus({ preventScroll: true });
      }
      this.updateFollowButton();
      this.onChange();
      if (streaming) this.scheduleData();
    }

    create(entry, part) {
      if (part === DETAILS) {
        const tr = this.makeDetails(entry.record);
        if (!this.detailsIds.has(entry)) this.detailsIds.set(entry, `details-${++this.nextDetailsId}`);
        tr.id = this.detailsIds.get(entry);
        return tr;
      }
      if (entry.kind === "marker") return this.makeMarker(entry.markerKind, entry.text);
      return this.makeRow(entry.record, entry.replay);
    }

    place(drawn, entry, part, index) {
      // Only what changed is written: most rows keep their place and state from frame to frame.
      const tr = drawn.tr;
      const top = this.tops[index];
      if (drawn.top !== top) {
        tr.style.top = `${top}px`;
        drawn.top = top;
      }
      if (drawn.index !== index) {
        tr.setAttribute("aria-rowindex", String(index + 2));
        drawn.index = index;
      }
      if (part === ROW && entry.kind === "rec") {
        const tabIndex = entry === this.current ? 0 : -1;
        if (drawn.tabIndex !== tabIndex) {
          tr.tabIndex = tabIndex;
          drawn.tabIndex = tabIndex;
        }
        if (drawn.expanded !== entry.expanded) {
          tr.setAttribute("aria-expanded", String(entry.expanded));
          if (entry.expanded) tr.setAttribute("aria-controls", this.detailsIds.get(entry) || "");
          else tr.removeAttribute("aria-controls");
          drawn.expanded = entry.expanded;
        }
      }
    }

    focusedEntry() {
      const item = this.focusedItem();
      return item && item.entry;
    }

    focusedItem() {
      const active = document.activeElement;
      if (!active || !this.el.body.contains(active)) return null;
      const tr = active.closest("#rows > tr");
      const entry = tr && this.entryOf.get(tr);
      if (!entry) return null;
      return { entry, part: tr.classList.contains("details") ? DETAILS : ROW };
    }

    // -- the keyboard and the mouse --------------------------------------------------------------

    setCurrent(entry) {
      if (this.current === entry) return;
      for (const e of [this.current, entry]) {
        const drawn = e && this.drawn[ROW].get(e);
        if (drawn) {
          drawn.tabIndex = e === entry ? 0 : -1;
          drawn.tr.tabIndex = drawn.tabIndex;
        }
      }
      this.current = entry;
    }

    toggle(entry) {
      entry.expanded = !entry.expanded;
      if (entry.expanded && !this.detailsIds.has(entry)) this.detailsIds.set(entry, `details-${++this.nextDetailsId}`);
      // Reading a record: stop following so that it does not scroll away.
      if (entry.expanded && this.follow && entry !== this.lastRecord()) this.follow = false;
      this.render();
    }

    focusEntry(entry) {
      // Scroll just enough to show the entry's row, draw it, focus it.
      if (!entry) return;
      this.setCurrent(entry);
      this.layout();
      const index = this.itemIndex(entry);
      if (index < 0) return;
      const s = this.el.scroller;
      const top = this.tops[index];
      const bottom = top + this.height(entry, ROW);
      const rowsHeight = this.viewHeight - this.headHeight;
      let scrollTop = s.scrollTop;
      if (top < scrollTop) scrollTop = top;
      else if (bottom > scrollTop + rowsHeight) scrollTop = bottom - rowsHeight;
      if (scrollTop !== s.scrollTop) {
        this.follow = scrollTop >= this.maxScrollTop() - BOTTOM_SLACK_PX;
        s.scrollTop = scrollTop;
      }
      this.render();
      const drawn = this.drawn[ROW].get(entry);
      if (drawn) drawn.tr.focus({ preventScroll: true });
    }

    move(entry, step, count = 1) {
      const entries = this.entries;
      let index = entry.seq - entries[0].seq;
      let target = entry;
      for (let moved = 0; moved < count;) {
        index += step;
        if (index < 0 || index >= entries.length) break;
        const next = entries[index];
        if (next.kind === "rec" && this.isShown(next.level)) {
          target = next;
          moved += 1;
        }
      }
      if (target !== entry) this.focusEntry(target);
    }

    onKey(event) {
      const tr = event.target.closest && event.target.closest("tr.rec");
      const entry = tr && this.entryOf.get(tr);
      if (!entry || event.altKey || event.ctrlKey || event.metaKey) return;
      switch (event.key) {
        case "Enter":
        case " ":
          this.toggle(entry);
          break;
        case "ArrowDown": this.move(entry, 1); break;
        case "ArrowUp": this.move(entry, -1); break;
        case "PageDown": this.move(entry, 1, PAGE_ROWS); break;
        case "PageUp": this.move(entry, -1, PAGE_ROWS); break;
        case "Home": this.focusEntry(this.firstRecord()); break;
        case "End": this.focusEntry(this.lastRecord()); break;
        default: return;
      }
      event.preventDefault();
    }

    onClick(event) {
      const tr = event.target.closest && event.target.closest("tr.rec");
      const entry = tr && this.entryOf.get(tr);
      if (!entry) return;
      const selection = window.getSelection();
      if (selection && selection.type === "Range" && String(selection).trim()) return; // selecting text
      this.setCurrent(entry);
      tr.focus({ preventScroll: true });
      this.toggle(entry);
    }

    // -- following the newest rows -----------------------------------------------------------

    // Following stops when the reader scrolls up and starts again at the bottom. The page's own
    // scrolling lands at the bottom when following, so a scroll that ends elsewhere was the
    // reader's. A wheel turned upwards says so at once, before the next frame could snap back.
    onScroll() {
      const atBottom = this.maxScrollTop() - this.el.scroller.scrollTop < BOTTOM_SLACK_PX;
      if (atBottom !== this.follow) {
        this.follow = atBottom;
        if (atBottom) this.unseen = 0;
        this.updateFollowButton();
      }
      this.schedule(); // other rows come into view
    }

    onWheel(event) {
      if (event.deltaY < 0 && this.follow && this.el.scroller.scrollTop > 0) {
        this.follow = false;
        this.updateFollowButton();
      }
    }

    jumpToLatest() {
      this.follow = true;
      this.unseen = 0;
      this.render();
    }

    updateFollowButton() {
      const button = this.el.follow;
      if (button.hidden !== this.follow) button.hidden = this.follow;
      const text = this.unseen ? `Jump to latest (${new Intl.NumberFormat("en").format(this.unseen)} new)` : "Jump to latest";
      if (button.textContent !== text) button.textContent = text;
    }
  }

  window.LogTable = LogTable;
})();
