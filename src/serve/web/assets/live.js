// Live updates without a build step: a run page follows its journal over Server-Sent
// Events and appends each step as a row; the page reloads once the run has ended.
// Errors (uncaught, rejected promises, console.error) are kept in window.waymarkErrors,
// which the browser tests read.
"use strict";
window.waymarkErrors = [];
window.addEventListener("error", (e) => window.waymarkErrors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.waymarkErrors.push(String(e.reason)));
const consoleError = console.error.bind(console);
console.error = (...args) => {
  window.waymarkErrors.push(args.map(String).join(" "));
  consoleError(...args);
};
document.addEventListener("DOMContentLoaded", () => {
  const timeline = document.querySelector("table[data-follow]");
  if (!timeline) return;
  const body = timeline.querySelector("tbody");
  const seen = new Set([...body.querySelectorAll("tr")].map((tr) => tr.dataset.seq));
  const status = document.getElementById("live");
  const source = new EventSource(timeline.dataset.follow);
  if (status) status.textContent = "following live";
  source.addEventListener("step", (message) => {
    const step = JSON.parse(message.data);
    if (seen.has(String(step.seq))) return;
    seen.add(String(step.seq));
    const row = document.createElement("tr");
    row.dataset.seq = step.seq;
    for (const text of [step.seq, step.time, step.step, step.cursor, step.counts, step.outcome]) {
      const cell = document.createElement("td");
      cell.textContent = text ?? "";
      row.appendChild(cell);
    }
    row.cells[0].className = "num";
    for (const i of [1, 3, 4]) row.cells[i].className = "mono";
    body.appendChild(row);
  });
  source.addEventListener("end", () => {
    source.close();
    window.location.reload();
  });
  // The server's `error` event carries why; a lost connection carries nothing.
  source.addEventListener("error", (e) => {
    if (status) status.textContent = e.data ? `stopped following: ${e.data}` : "connection lost";
    source.close();
    // A lost connection (serve restarting): look again in a moment.
    if (!e.data) setTimeout(() => window.location.reload(), 2000);
  });
});
