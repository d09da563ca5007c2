// The task page follows its task: state, progress and phase, and the log from its cursor,
// polled once a second until the task ends; then the page reloads to show the outcome.
(function () {
  "use strict";
  function follow(section) {
    var cursor = Number(section.dataset.cursor || "0");
    var log = document.getElementById("task-log");
    function poll() {
      fetch(section.dataset.live + "?since=" + cursor, {credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (s) {
          document.getElementById("task-state").textContent = s.state;
          document.getElementById("task-phase").textContent = s.phase || "";
          document.getElementById("task-progress").value = s.percent;
          document.getElementById("task-percent").textContent = s.percent + "%";
          s.lines.forEach(function (line) { log.appendChild(document.createTextNode(line + "\n")); });
          cursor = s.cursor;
          if (s.terminal) { window.location.reload(); } else { setTimeout(poll, 1000); }
        })
        .catch(function () { setTimeout(poll, 3000); });
    }
    setTimeout(poll, 500);
  }
  document.addEventListener("DOMContentLoaded", function () {
    var section = document.getElementById("task");
    if (section && section.dataset.terminal === "false") { follow(section); }
  });
})();
