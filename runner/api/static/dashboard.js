// runner dashboard: log in from a #key= link, and refresh the parts of a page marked data-refresh.
// No library and no build step; served by the daemon itself (the machine may have no internet).
(function () {
  "use strict";

  function login(key) {
    return fetch("/login", {method: "POST", headers: {"X-API-Key": key}, credentials: "same-origin"});
  }

  // A link http://HOST:PORT/PATH#key=KEY: the fragment never reaches the server (nor its logs);
  // trade it for the session cookie, drop it from the address bar and history, and reload.
  var match = /^#key=(.+)$/.exec(window.location.hash);
  if (match) {
    var key = decodeURIComponent(match[1]);
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
    login(key).then(function (response) {
      if (response.ok) {
        window.location.reload();
      } else {
        var main = document.querySelector("main");
        if (main) {
          var p = document.createElement("p");
          p.className = "error";
          p.setAttribute("role", "alert");
          p.textContent = "That key was not accepted (" + response.status + ").";
          main.insertBefore(p, main.firstChild);
        }
      }
    });
    return;
  }

  // Fragments: the server renders them (escaped); a failed refresh keeps the last good content.
  function refresh(element) {
    var url = element.getAttribute("data-refresh");
    fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          element.innerHTML = html;
          element.setAttribute("data-refreshed", new Date().toISOString());
        }
      })
      .catch(function () { /* the daemon restarts: try again next time */ });
  }

  document.querySelectorAll("[data-refresh]").forEach(function (element) {
    var every = parseInt(element.getAttribute("data-every") || "3000", 10);
    window.setInterval(function () { refresh(element); }, Math.max(1000, every));
  });
})();
