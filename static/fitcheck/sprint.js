// Gamification on the verify page: the lunch-break sprint bar (countdown, running count, progress
// bar; the summary card when time is up) and celebrations (badge, level, streak) as toasts. Both
// arrive as htmx events from the HX-Trigger-After-Settle header of each answer, never as a reload.
// Keys: s (5-minute sprint), l (10-minute sprint), c (close the summary; copy on the announce page).
(function () {
  "use strict";
  function htmxReady(el) {
    if (window.fitcheck) window.fitcheck.htmxReady(el); // app.js
  }

  var timer = null;
  var endsAt = 0; // performance.now() at which the running sprint ends

  function fmt(ms) {
    var s = Math.max(0, Math.ceil(ms / 1000));
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }

  function tick() {
    var bar = document.getElementById("sprint");
    if (!bar || !bar.classList.contains("running")) { stop(); return; }
    var left = endsAt - performance.now();
    var clock = document.getElementById("sprint-clock");
    var progress = document.getElementById("sprint-progress");
    var duration = Number(bar.dataset.durationMs) || 1;
    if (clock) clock.textContent = fmt(left);
    if (progress) progress.value = Math.min(100, Math.round(100 * (duration - Math.max(0, left)) / duration));
    if (left <= 0) {
      stop();
      bar.classList.remove("running");
      htmx.ajax("GET", bar.dataset.summaryUrl, { target: "#sprint", swap: "outerHTML" });
    }
  }

  function stop() {
    if (timer) clearInterval(timer);
    timer = null;
  }

  function sync(remainingMs) {
    endsAt = performance.now() + Number(remainingMs);
    if (!timer) timer = setInterval(tick, 250);
    tick();
  }

  function init() {
    var bar = document.getElementById("sprint");
    if (bar && bar.classList.contains("running")) sync(bar.dataset.remainingMs);
  }

  document.addEventListener("htmx:afterSettle", function (event) {
    if (event.target && event.target.id === "sprint") init();
  });
  document.addEventListener("htmx:load", function (event) {
    if (event.target && event.target.id === "sprint") init();
  });

  // After each answer or undo: the running count and the server's clock.
  document.addEventListener("gamify:sprint", onSprint);
  function onSprint(event) {
    if (event.__gamifySeen) return;
    event.__gamifySeen = true;
    var state = event.detail || {};
    var bar = document.getElementById("sprint");
    if (!state.running || !bar || !bar.classList.contains("running")) return;
    var count = document.getElementById("sprint-count");
    if (count) count.textContent = String(state.answer_count);
    var unit = document.getElementById("sprint-count-unit");
    if (unit) unit.textContent = state.answer_count === 1 ? "answer" : "answers";
    sync(state.remaining_ms);
  }

  document.addEventListener("gamify:celebrate", function (event) {
    if (event.__gamifySeen) return;
    event.__gamifySeen = true;
    var events = (event.detail && event.detail.events) || [];
    events.forEach(toast);
  });

  function toast(item) {
    var box = document.getElementById("celebrations");
    if (!box) {
      box = document.createElement("div");
      box.id = "celebrations";
      box.setAttribute("role", "status");
      box.setAttribute("aria-live", "polite");
      document.body.appendChild(box);
    }
    var el = document.createElement("div");
    el.className = "celebration " + (item.kind || "");
    var title = document.createElement("b");
    title.textContent = item.title || "";
    var text = document.createElement("span");
    text.textContent = item.text || "";
    el.appendChild(title);
    el.appendChild(text);
    box.appendChild(el);
    setTimeout(function () { el.remove(); }, 5000);
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    var target = event.target;
    if (target && target.closest && target.closest("input, textarea, select, [contenteditable]")) return;
    var key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    var button = document.querySelector('#sprint [data-key="' + CSS.escape(key) + '"], .announce [data-key="' + CSS.escape(key) + '"]');
    if (button && !button.disabled) {
      event.preventDefault();
      htmxReady(button);
      button.click();
    }
  });

  document.addEventListener("click", function (event) {
    if (!event.target.closest || !event.target.closest("#announce-copy")) return;
    var draft = document.getElementById("announce-draft");
    var done = document.getElementById("announce-copied");
    function copied() { if (done) done.textContent = "Copied."; }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(draft.value).then(copied);
    } else {
      draft.select();
      document.execCommand("copy");
      copied();
    }
  });

  document.addEventListener("DOMContentLoaded", init);
})();
