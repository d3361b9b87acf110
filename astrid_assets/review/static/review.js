// The vetting viewer: one candidate at a time, labelled from the keyboard.
// r / b / u label real, bogus, unsure (and move on); z undoes my last label;
// right arrow or j: next; left arrow or k: previous. Actions run one after
// the other in the order the keys were pressed.
"use strict";

(function () {
  const data = document.getElementById("queue-data");
  if (!data) return;
  const queue = JSON.parse(data.textContent);
  const viewer = document.getElementById("viewer");
  const canLabel = viewer.dataset.canLabel === "true";
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const comment = $("comment");
  const start = new URLSearchParams(location.search).get("start");
  let index = Math.max(0, queue.findIndex((row) => row.candidate_id === start));
  let pending = Promise.resolve();

  const FACTS = [
    ["ensemble", "ensemble score", 3], ["realbogus", "real-bogus CNN", 3], ["unet", "U-Net", 3],
    ["isolation_forest", "isolation forest", 3], ["one_class_svm", "one-class SVM", 3],
    ["mag", "magnitude", 2], ["mag_err", "± mag", 2], ["snr", "S/N", 1], ["sign", "sign", 0],
    ["ra", "RA (deg)", 6], ["dec", "Dec (deg)", 6], ["x", "x (px)", 1], ["y", "y (px)", 1],
    ["mjd", "MJD", 4], ["fwhm", "FWHM (px)", 2], ["night", "night"], ["field", "field"],
  ];

  function format(value, digits) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number" && digits !== undefined) return value.toFixed(digits);
    return String(value);
  }

  function setStatus(text) { $("status").textContent = text; }

  function setCounts(counts) {
    for (const key of ["mine", "real", "bogus", "unsure", "candidates", "labels"]) {
      $("count-" + key).textContent = counts[key];
    }
  }

  function setMine(label) {
    const badge = $("my-label");
    badge.className = "badge" + (label ? " " + label : "");
    badge.textContent = label ? "my label: " + label : "not labelled by me";
  }

  function stampUrl(id, kind) {
    return "/cutouts/" + encodeURIComponent(id) + "/" + kind + ".png";
  }

  function preload(i) {
    if (i < 0 || i >= queue.length) return;
    for (const kind of ["science", "reference", "difference"]) {
      new Image().src = stampUrl(queue[i].candidate_id, kind);
    }
  }

  async function request(method, url, body) {
    const options = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
    if (method !== "GET") {
      options.headers["X-CSRF-Token"] = csrf;
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body || {});
    }
    const response = await fetch(url, options);
    const payload = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(payload.detail || response.status + " " + response.statusText);
    return payload;
  }

  async function show(i) {
    index = Math.min(Math.max(i, 0), queue.length - 1);
    const id = queue[index].candidate_id;
    $("position").textContent = index + 1;
    $("candidate-id").textContent = id;
    for (const kind of ["science", "reference", "difference"]) $("img-" + kind).src = stampUrl(id, kind);
    $("lightcurve").src = "/lightcurve/" + encodeURIComponent(id) + ".svg";
    preload(index + 1);
    const detail = await request("GET", "/api/candidates/" + encodeURIComponent(id));
    if (queue[index].candidate_id !== id) return;
    const body = $("facts").tBodies[0];
    body.replaceChildren();
    for (const [key, name, digits] of FACTS) {
      const row = body.insertRow();
      const th = document.createElement("th");
      th.textContent = name;
      row.appendChild(th);
      row.insertCell().textContent = format(detail.candidate[key], digits);
    }
    setMine(detail.mine ? detail.mine.label : null);
    const others = detail.labels.filter((l) => l.vetter !== detail.mine?.vetter);
    const latest = new Map();
    for (const l of others) latest.set(l.vetter, l);
    $("others").textContent = latest.size
      ? "Other vetters: " + [...latest.values()].map((l) => l.vetter + ": " + l.label).join(", ")
      : "";
  }

  async function label(kind) {
    if (!canLabel) return;
    const id = queue[index].candidate_id;
    const result = await request("POST", "/api/labels", {
      candidate_id: id, label: kind, comment: comment ? comment.value : "",
    });
    queue[index].my_label = kind;
    if (comment) comment.value = "";
    setCounts(result.counts);
    setStatus("Labelled " + id + " " + kind + ".");
    if (index < queue.length - 1) await show(index + 1);
    else { setMine(kind); setStatus("Labelled " + id + " " + kind + ": end of the queue."); }
  }

  async function undo() {
    if (!canLabel) return;
    const result = await request("POST", "/api/labels/undo", {});
    setCounts(result.counts);
    if (!result.undone) { setStatus("Nothing to undo."); return; }
    const back = queue.findIndex((row) => row.candidate_id === result.undone.candidate_id);
    if (back >= 0) await show(back);
    setStatus("Undid " + result.undone.label + " of " + result.undone.candidate_id + ".");
  }

  function enqueue(action) {
    pending = pending.then(action).catch((err) => setStatus("Error: " + err.message));
    return pending;
  }

  const KEYS = {
    r: () => label("real"), b: () => label("bogus"), u: () => label("unsure"), z: undo,
    ArrowRight: () => show(index + 1), j: () => show(index + 1),
    ArrowLeft: () => show(index - 1), k: () => show(index - 1),
  };

  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target instanceof HTMLTextAreaElement || target instanceof HTMLInputElement ||
        target instanceof HTMLSelectElement) {
      if (event.key === "Escape") target.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const action = KEYS[event.key];
    if (!action) return;
    event.preventDefault();
    enqueue(action);
  });
  for (const button of document.querySelectorAll("button[data-label]")) {
    button.addEventListener("click", () => enqueue(() => label(button.dataset.label)));
  }
  $("undo")?.addEventListener("click", () => enqueue(undo));
  $("next").addEventListener("click", () => enqueue(() => show(index + 1)));
  $("prev").addEventListener("click", () => enqueue(() => show(index - 1)));
  enqueue(() => show(index));
})();
