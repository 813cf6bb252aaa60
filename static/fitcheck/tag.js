// Keyboard-first tagging page (annotate/_tag_task.html): one attribute is active at a time; an
// option's key picks it (single choice, rating: then the next attribute is active) or toggles it
// (multi choice); Tab or → moves on, Shift+Tab or ← goes back, Backspace clears the active
// attribute, Enter submits once every required attribute has a value, k skips the product, z undoes
// the last answer, g opens the guide, and holding 0 (or pressing and holding the "Hold to zoom"
// button) shows the product's image at full size over the page. The time a product
// was on screen goes with the answer as duration_ms. On the guide page: Enter starts tagging, p prints.
(function () {
  "use strict";
  function htmxReady(el) {
    if (window.fitcheck) window.fitcheck.htmxReady(el); // app.js
  }

  function area() {
    return document.getElementById("tag-task");
  }

  function fieldsets() {
    var section = area();
    return section ? Array.prototype.slice.call(section.querySelectorAll("fieldset.attr:not([hidden])")) : [];
  }

  // A tagger may correct the category: attributes limited to some categories (data-applies) show
  // for the chosen one, or for the catalog's (data-category) while none or "can't tell" is chosen.
  // The catalog's may be an inner node of the taxonomy ("Shoes"), not an option: data-applies lists
  // it too. A hidden fieldset is disabled, so its inputs are not sent.
  function syncCategory() {
    var section = area();
    if (!section) return;
    var picked = section.querySelector('fieldset.attr[data-slug="category"] input:checked');
    var value = picked && picked.value !== "cant_tell" ? picked.value : section.dataset.category || "";
    var active = fieldsets()[activeIndex()];
    section.querySelectorAll("fieldset.attr[data-applies]").forEach(function (set) {
      var show = set.dataset.applies.split(" ").indexOf(value) >= 0;
      set.hidden = !show;
      set.disabled = !show;
    });
    var index = fieldsets().indexOf(active);
    if (index >= 0) setActive(index, false);
  }

  function activeIndex() {
    var section = area();
    return section ? Number(section.dataset.active || 0) : 0;
  }

  function setActive(index, scroll) {
    var sets = fieldsets();
    if (!sets.length) return;
    index = Math.max(0, Math.min(sets.length - 1, index));
    area().dataset.active = String(index);
    sets.forEach(function (set, i) {
      set.classList.toggle("active", i === index);
    });
    if (scroll && sets[index].scrollIntoView) sets[index].scrollIntoView({ block: "nearest" });
  }

  function hasValue(set) {
    return set.dataset.kind === "multi" || !!set.dataset.optional || !!set.querySelector("input:checked");
  }

  function hint(text) {
    var section = area();
    var line = section && section.querySelector(".tag-hint");
    if (line) line.textContent = text;
  }

  function clearActive() {
    var set = fieldsets()[activeIndex()];
    if (!set) return;
    set.querySelectorAll("input:checked").forEach(function (input) {
      input.checked = false;
    });
    if (set.dataset.slug === "category") syncCategory();
  }

  function submit() {
    var sets = fieldsets();
    var missing = sets.filter(function (set) {
      return !hasValue(set);
    });
    if (missing.length) {
      setActive(sets.indexOf(missing[0]), true);
      hint(
        "Answer every attribute first: " +
          missing
            .map(function (set) {
              return set.dataset.name;
            })
            .join(", ") +
          "."
      );
      return;
    }
    var form = area().querySelector("form.tag-form");
    if (!form) return;
    htmxReady(form);
    form.requestSubmit();
  }

  function pick(key) {
    var set = fieldsets()[activeIndex()];
    var label = set && set.querySelector('[data-opt-key="' + CSS.escape(key) + '"]');
    if (!label) return false;
    return choose(label);
  }

  // Arrow up/down move a cursor through the active attribute's options and Space picks it: every
  // option is reachable by keyboard, also past the 32 that have a key of their own.
  function moveCursor(step) {
    var set = fieldsets()[activeIndex()];
    if (!set) return;
    var labels = Array.prototype.slice.call(set.querySelectorAll("label.opt"));
    if (!labels.length) return;
    var at = labels.findIndex(function (l) {
      return l.classList.contains("cursor");
    });
    if (at < 0)
      at = labels.findIndex(function (l) {
        return l.querySelector("input").checked;
      });
    var next = at < 0 ? (step > 0 ? 0 : labels.length - 1) : (at + step + labels.length) % labels.length;
    labels.forEach(function (l) {
      l.classList.remove("cursor");
    });
    labels[next].classList.add("cursor");
    if (labels[next].scrollIntoView) labels[next].scrollIntoView({ block: "nearest" });
  }

  function pickCursor() {
    var set = fieldsets()[activeIndex()];
    var label = set && set.querySelector("label.opt.cursor");
    return label ? choose(label) : false;
  }

  function choose(label) {
    label.classList.remove("cursor");
    var input = label.querySelector("input");
    if (input.type === "checkbox") {
      input.checked = !input.checked;
    } else {
      input.checked = true;
      if (input.name === "attr-category") syncCategory();
      setActive(activeIndex() + 1, true);
    }
    hint("");
    return true;
  }

  // The zoom as on the verify page (verify.js: class "zoomed" while the key or the button is held),
  // on another key: here Space picks the option under the ↑/↓ cursor, and on a focused radio
  // button or checkbox it would change the answer. 0 is no option's key (annotate.tag_views.OPTION_KEYS).
  var ZOOM_KEY = "0";

  function zoom(on) {
    var section = area();
    if (section) section.classList.toggle("zoomed", on && section.dataset.state === "task");
  }

  document.addEventListener("keyup", function (event) {
    if (event.key === ZOOM_KEY) zoom(false);
  });
  window.addEventListener("blur", function () {
    zoom(false);
  });
  document.addEventListener("pointerdown", function (event) {
    if (event.target.closest && event.target.closest("#tag-task [data-zoom-hold]")) {
      event.preventDefault();
      zoom(true);
    }
  });
  ["pointerup", "pointercancel"].forEach(function (name) {
    document.addEventListener(name, function () {
      zoom(false);
    });
  });

  function stamp() {
    var section = area();
    if (section) {
      // A section already stamped is the same product: another swap must not restart its clock.
      if (!section.dataset.shownAt) section.dataset.shownAt = String(performance.now());
      setActive(activeIndex(), false);
    }
  }

  document.addEventListener("DOMContentLoaded", stamp);
  document.addEventListener("htmx:afterSwap", stamp);
  document.addEventListener("htmx:afterSettle", stamp);

  document.addEventListener("htmx:configRequest", function (event) {
    var section = area();
    if (!section || !section.dataset.shownAt || !section.contains(event.detail.elt)) return;
    var ms = String(Math.max(0, Math.round(performance.now() - Number(section.dataset.shownAt))));
    var parameters = event.detail.parameters;
    if (parameters.set) parameters.set("duration_ms", ms);
    else parameters.duration_ms = ms;
  });

  // Mouse: a click makes its attribute the active one; picking a single choice moves on.
  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!target.closest) return;
    if (target.closest('[data-tag-action="print"]')) {
      window.print();
      return;
    }
    if (target.closest('[data-tag-action="clear"]')) {
      clearActive();
      return;
    }
    var set = target.closest("#tag-task fieldset.attr");
    if (set) setActive(fieldsets().indexOf(set), false);
  });

  document.addEventListener("change", function (event) {
    var input = event.target;
    if (input.type !== "radio" || !input.closest) return;
    var set = input.closest("#tag-task fieldset.attr");
    if (set && set.dataset.slug === "category") syncCategory();
    if (set) setActive(fieldsets().indexOf(set) + 1, true);
  });

  function guideKeys(event) {
    if (!document.querySelector(".guide")) return;
    if (event.target.closest && event.target.closest("a, button, input, textarea, select")) return;
    if (event.key === "Enter") {
      var start = document.querySelector('.guide [data-tag-key="Enter"]');
      if (start) {
        event.preventDefault();
        htmxReady(start);
        start.click();
      }
    } else if (event.key === "p") {
      event.preventDefault();
      window.print();
    }
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var section = area();
    if (!section) {
      if (!event.repeat) guideKeys(event);
      return;
    }
    var target = event.target;
    if (target.closest && target.closest("textarea, select, [contenteditable], input:not([type=radio]):not([type=checkbox])"))
      return;
    // Focus elsewhere (the top bar's links) keeps the browser's own Tab and Enter.
    if (target !== document.body && target !== document.documentElement && !section.contains(target)) return;
    var key = event.key;
    if (key === ZOOM_KEY) {
      // Held keys repeat: a product swapped in while 0 is down zooms too.
      event.preventDefault();
      zoom(true);
      return;
    }
    if (key.length === 1 && key.toLowerCase() === "g") {
      var guide = section.querySelector('[data-tag-key="g"]');
      if (guide && !event.repeat) {
        event.preventDefault();
        htmxReady(guide);
        guide.click();
      }
      return;
    }
    // k skips the product, z undoes the last answer (also from the "all done" card).
    if (key.length === 1 && "kz".indexOf(key.toLowerCase()) >= 0) {
      var action = section.querySelector('[data-tag-key="' + key.toLowerCase() + '"]');
      if (action && !event.repeat && !action.disabled) {
        event.preventDefault();
        htmxReady(action);
        action.click();
      }
      return;
    }
    if (section.dataset.state !== "task") return;
    if (key === "Tab" || key === "ArrowRight" || key === "ArrowLeft") {
      event.preventDefault();
      setActive(activeIndex() + (key === "ArrowLeft" || event.shiftKey ? -1 : 1), true);
    } else if (key === "ArrowUp" || key === "ArrowDown") {
      // Also stops a focused radio button from changing its group's value on its own.
      event.preventDefault();
      moveCursor(key === "ArrowDown" ? 1 : -1);
    } else if (key === " ") {
      if (pickCursor()) event.preventDefault();
    } else if (key === "Enter") {
      if (target.closest && target.closest("a")) return;
      event.preventDefault();
      if (!event.repeat) submit();
    } else if (key === "Backspace") {
      event.preventDefault();
      clearActive();
    } else if (key.length === 1 && !event.repeat && pick(key.toLowerCase())) {
      event.preventDefault();
    }
  });
})();
