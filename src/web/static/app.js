// sluice web UI: the only script. It tails a running try's log and reloads
// pages that show active runs; everything works without it, only staler.
(function () {
  "use strict";
  document.querySelectorAll("pre[data-tail]").forEach(function (pre) {
    var url = pre.getAttribute("data-tail");
    function tick() {
      fetch(url, { credentials: "same-origin" }).then(function (r) {
        if (!r.ok) { return; }
        var more = r.headers.get("x-sluice-running") === "1";
        return r.text().then(function (text) {
          if (text !== pre.textContent) {
            var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
            pre.textContent = text;
            if (atEnd) { pre.scrollTop = pre.scrollHeight; }
          }
          if (more) { setTimeout(tick, 1500); } else { setTimeout(function () { location.reload(); }, 800); }
        });
      });
    }
    pre.scrollTop = pre.scrollHeight;
    setTimeout(tick, 1500);
  });
  var every = document.body.getAttribute("data-refresh");
  if (every) { setTimeout(function () { location.reload(); }, Number(every)); }
})();
