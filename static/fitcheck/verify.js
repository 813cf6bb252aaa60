// Keyboard-first verify page: every button with data-key answers to that key, and the time a task
// was on screen goes with the answer as duration_ms.
(function () {
  "use strict";

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

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    var target = event.target;
    if (target && target.closest && target.closest("input, textarea, select, [contenteditable]")) return;
    var key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    var button = document.querySelector('#task [data-key="' + CSS.escape(key) + '"]');
    if (button && !button.disabled) {
      event.preventDefault();
      button.click();
    }
  });
})();
