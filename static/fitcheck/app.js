// Behaviour shared by every page, kept out of inline event handlers so that the pages pass the
// Content-Security-Policy (config/settings.py: scripts from static files only).
// <select data-autosubmit> submits its form when its value changes (the announce page's campaign).
// fitcheck.htmxReady(element): the keyboard scripts (verify.js, tag.js, sprint.js) call it before
// they click or submit a form.
(function () {
  "use strict";
  window.fitcheck = window.fitcheck || {};
  // htmx attaches itself to swapped-in content only when the swap settles (20 ms later). A key
  // pressed in between would click or submit a form htmx does not yet know, and the browser would
  // post it as a whole-page load. Process the element's form first (a no-op when htmx already has).
  window.fitcheck.htmxReady = function (el) {
    var form = el && el.closest ? el.closest("form") || el : el;
    if (form && window.htmx) window.htmx.process(form);
  };
  document.addEventListener("change", function (event) {
    var field = event.target;
    if (field instanceof HTMLSelectElement && field.hasAttribute("data-autosubmit") && field.form) {
      field.form.requestSubmit ? field.form.requestSubmit() : field.form.submit();
    }
  });
})();
