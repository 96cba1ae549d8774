// labreg UI: progressive enhancements only; every page works without this.
(function () {
  "use strict";
  // Copy buttons stay hidden without JavaScript (the text is selectable).
  document.querySelectorAll("button.copy").forEach(function (b) {
    b.hidden = false;
    b.addEventListener("click", function () {
      var text = b.getAttribute("data-copy");
      var done = function () { b.textContent = "copied"; setTimeout(function () { b.textContent = "copy"; }, 1200); };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done);
      } else {
        var t = document.createElement("textarea");
        t.value = text; document.body.appendChild(t); t.select();
        try { document.execCommand("copy"); done(); } finally { document.body.removeChild(t); }
      }
    });
  });
  // Forms that delete ask first.
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (e) {
      if (f.id === "tagsform" && !f.querySelector("input[name=tag]:checked")) { e.preventDefault(); return; }
      if (!window.confirm(f.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });
  // Filters and sort apply as you change them.
  document.querySelectorAll("form.filter select, form.filter input[type=checkbox]").forEach(function (el) {
    el.addEventListener("change", function () { el.form.submit(); });
  });
})();
