// claid-hotfolder dashboard: progressive enhancement only. Every page works without this file;
// with it, the overview's figures, progress bars and chart refresh every two seconds from
// /partial/overview (HTML rendered and escaped by the server) without reloading the page.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.fetch) {
    return;
  }
  var src = live.getAttribute("data-src");
  var every = 2000;
  function refresh() {
    fetch(src, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (res) {
        if (res.redirected || !res.ok) {
          throw new Error("status " + res.status);
        }
        return res.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        live.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () {
        // The daemon restarts or the session ended: the next reload shows why.
      })
      .then(function () {
        window.setTimeout(refresh, every);
      });
  }
  window.setTimeout(refresh, every);
})();
