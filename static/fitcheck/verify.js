// Keyboard-first verify page: every button with data-key answers to that key (1 2 3 0 x u answer,
// k skips, z undoes), and the time a task was on screen goes with the answer as duration_ms.
// Holding Space (or pressing and holding the "Hold to zoom" button) shows the photo and the
// candidates side by side at full size (class "zoomed" on #task); letting go returns.
(function () {
  "use strict";
  function htmxReady(el) {
    if (window.fitcheck) window.fitcheck.htmxReady(el); // app.js
  }

  // Only a task node that has no stamp yet is new: other swaps on the page (the sprint bar loading,
  // the points toast) must not restart the clock of the task on screen.
  function stamp() {
    var task = document.getElementById("task");
    if (task && !task.dataset.shownAt) task.dataset.shownAt = String(performance.now());
  }

  document.addEventListener("DOMContentLoaded", stamp);
  document.addEventListener("htmx:afterSwap", stamp);
  document.addEventListener("htmx:afterSettle", stamp);

  document.addEventListener("htmx:configRequest", function (event) {
    var task = document.getElementById("task");
    if (!task || !task.dataset.shownAt) return;
    if ("duration_ms" in event.detail.parameters || event.detail.parameters.get) {
      var ms = Math.max(0, Math.round(performance.now() - Number(task.dataset.shownAt)));
      if (event.detail.parameters.set) event.detail.parameters.set("duration_ms", String(ms));
      else event.detail.parameters.duration_ms = String(ms);
    }
  });

  function zoom(on) {
    var task = document.getElementById("task");
    if (task && task.dataset.state === "task") task.classList.toggle("zoomed", on);
    else if (task) task.classList.remove("zoomed");
  }

  function typing(target) {
    return target && target.closest && target.closest("input, textarea, select, [contenteditable]");
  }

  // Space on a focused button would click it on keyup: the page keeps Space for the zoom.
  document.addEventListener("keyup", function (event) {
    if (event.key !== " " || typing(event.target) || !document.getElementById("task")) return;
    event.preventDefault();
    zoom(false);
  });
  window.addEventListener("blur", function () { zoom(false); });
  document.addEventListener("pointerdown", function (event) {
    if (event.target.closest && event.target.closest("[data-zoom-hold]")) {
      event.preventDefault();
      zoom(true);
    }
  });
  ["pointerup", "pointercancel"].forEach(function (name) {
    document.addEventListener(name, function () { zoom(false); });
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var target = event.target;
    if (typing(target)) return;
    if (event.key === " " && document.getElementById("task")) {
      // No page scroll, no click on a focused button. Held keys repeat: a task swapped in while
      // Space is down (an answer by mouse) zooms too.
      event.preventDefault();
      zoom(true);
      return;
    }
    if (event.repeat) return;
    var key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    var button = document.querySelector('#task [data-key="' + CSS.escape(key) + '"]');
    if (button && !button.disabled) {
      event.preventDefault();
      htmxReady(button);
      button.click();
    }
  });
})();
