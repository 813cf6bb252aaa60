// Behaviour shared by every page, kept out of inline event handlers so that the pages pass the
// Content-Security-Policy (config/settings.py: scripts from static files only).
// <select data-autosubmit> submits its form when its value changes (the announce page's campaign).
(function () {
  "use strict";
  document.addEventListener("change", function (event) {
    var field = event.target;
    if (field instanceof HTMLSelectElement && field.hasAttribute("data-autosubmit") && field.form) {
      field.form.requestSubmit ? field.form.requestSubmit() : field.form.submit();
    }
  });
})();
