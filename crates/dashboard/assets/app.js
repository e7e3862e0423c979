// The dashboard's own script: dialogs, copy buttons, the snapshot-name rule as you type,
// typed-name confirms, the Metrics tab's charts (uPlot) and the live terminal (xterm.js).
// Loaded from /ui/assets/ (the Content-Security-Policy allows no inline script).
"use strict";
(function () {
  var SNAPSHOT_NAME = /^[a-z0-9-]{1,40}$/;
  var RULE = "Use 1–40 lowercase letters, digits and hyphens.";

  function checkSnapshotName(input) {
    var hint = document.getElementById(input.getAttribute("aria-describedby"));
    var create = input.form && input.form.querySelector("button[type=submit]");
    var v = input.value;
    var ok = SNAPSHOT_NAME.test(v);
    if (v === "" || ok) {
      hint.textContent = RULE;
      hint.classList.remove("error");
      input.removeAttribute("aria-invalid");
    } else {
      hint.textContent = "“" + v + "” is not a valid name. " + RULE;
      hint.classList.add("error");
      input.setAttribute("aria-invalid", "true");
    }
    if (create) create.disabled = !ok;
  }

  document.addEventListener("click", function (e) {
    var t = e.target;
    if (!(t instanceof Element)) return;
    var copy = t.closest("[data-copy]");
    if (copy) {
      var text = copy.getAttribute("data-copy");
      var done = function () {
        copy.textContent = "Copied";
        setTimeout(function () { copy.textContent = "Copy"; }, 1500);
      };
      if (navigator.clipboard) navigator.clipboard.writeText(text).then(done, function () {});
      return;
    }
    var open = t.closest("[data-open]");
    if (open) {
      var dialog = document.getElementById(open.getAttribute("data-open"));
      if (dialog) {
        var err = dialog.querySelector(".err-slot");
        if (err) err.textContent = "";
        dialog.showModal();
        var first = dialog.querySelector("input:not([type=checkbox])");
        if (first) {
          first.focus();
          if (first.getAttribute("data-rule") === "snapshot-name") checkSnapshotName(first);
        }
      }
      return;
    }
    var close = t.closest("[data-close]");
    if (close) {
      var d = close.closest("dialog");
      if (d) d.close();
    }
  });

  document.addEventListener("input", function (e) {
    var t = e.target;
    if (!(t instanceof HTMLInputElement)) return;
    if (t.getAttribute("data-rule") === "snapshot-name") checkSnapshotName(t);
    var must = t.getAttribute("data-must-equal");
    if (must !== null) {
      var b = document.getElementById(t.getAttribute("data-enables"));
      if (b) b.disabled = t.value !== must;
    }
  });

  // A new request clears the message its target showed.
  document.addEventListener("htmx:beforeRequest", function (e) {
    var target = e.detail && e.detail.target;
    if (target && target.classList && target.classList.contains("err-slot")) target.textContent = "";
  });

  function metrics() {
    var root = document.getElementById("metrics");
    if (!root || typeof uPlot === "undefined") return;
    var range = "5m";
    var charts = {};
    var colors = ["#2563eb", "#dc2626", "#16a34a"];
    var note = document.getElementById("metrics-note");

    function draw(id, data, names) {
      var el = document.getElementById(id);
      if (charts[id]) {
        charts[id].setData(data);
        return;
      }
      var series = [{}];
      names.forEach(function (n, i) {
        var s = { label: n, stroke: colors[i], width: 2 };
        if (n === "limit") {
          s.dash = [6, 4];
          s.width = 1;
        }
        series.push(s);
      });
      charts[id] = new uPlot({
        width: Math.max(260, el.clientWidth),
        height: 180,
        series: series,
        scales: { y: { range: function (u, min, max) { return [0, Math.max(max || 0, 0.05) * 1.1]; } } },
      }, data, el);
    }

    function load() {
      fetch(root.getAttribute("data-src") + "?range=" + range, { credentials: "same-origin" })
        .then(function (r) { return r.ok && !r.redirected ? r.json() : null; })
        .then(function (d) {
          if (!d) return;
          if (d.error) {
            note.textContent = d.error;
            return;
          }
          note.textContent = d.t.length ? "" : "No samples yet: the sampler records one every few seconds.";
          var cpuLimit = d.t.map(function () { return d.cpu_limit; });
          var memLimit = d.mem_limit.map(function (v) { return v === null ? d.mem_limit_static : v; });
          draw("chart-cpu", [d.t, d.cpu, cpuLimit], ["cpu", "limit"]);
          draw("chart-mem", [d.t, d.mem, memLimit], ["memory", "limit"]);
          draw("chart-disk", [d.t, d.disk], ["disk"]);
          draw("chart-net", [d.t, d.rx, d.tx], ["received", "sent"]);
          root.setAttribute("data-points", String(d.t.length));
        })
        .catch(function () {});
    }

    document.querySelectorAll("[data-range]").forEach(function (b) {
      b.addEventListener("click", function () {
        range = b.getAttribute("data-range");
        document.querySelectorAll("[data-range]").forEach(function (o) {
          o.setAttribute("aria-pressed", String(o === b));
        });
        load();
      });
    });
    window.addEventListener("resize", function () {
      Object.keys(charts).forEach(function (id) {
        var el = document.getElementById(id);
        charts[id].setSize({ width: Math.max(260, el.clientWidth), height: 180 });
      });
    });
    load();
    setInterval(load, 3000);
  }

  function terminal() {
    var btn = document.getElementById("term-open");
    if (!btn) return;
    btn.addEventListener("click", function () {
      if (typeof Terminal === "undefined") return;
      var status = document.getElementById("term-status");
      var term = new Terminal({ cursorBlink: true, fontSize: 14, rows: 24 });
      term.open(document.getElementById("xterm"));
      var proto = location.protocol === "https:" ? "wss:" : "ws:";
      var ws = new WebSocket(proto + "//" + location.host + btn.getAttribute("data-pty") +
        "?cols=" + term.cols + "&rows=" + term.rows);
      ws.binaryType = "arraybuffer";
      var enc = new TextEncoder();
      ws.onopen = function () { status.textContent = "connected"; term.focus(); };
      ws.onmessage = function (m) {
        term.write(typeof m.data === "string" ? m.data : new Uint8Array(m.data));
      };
      ws.onclose = function () { status.textContent = "closed"; };
      term.onData(function (d) { if (ws.readyState === 1) ws.send(enc.encode(d)); });
      term.onResize(function (s) {
        if (ws.readyState === 1) ws.send(JSON.stringify({ type: "resize", cols: s.cols, rows: s.rows }));
      });
      btn.disabled = true;
    });
  }

  function ready() {
    metrics();
    terminal();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready);
  else ready();
})();
