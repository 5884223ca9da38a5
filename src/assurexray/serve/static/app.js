// AssureXRay viewer: upload one image, show the prediction, its bars and the Grad-CAM overlay,
// and the anomaly detector's score, decision and map when the server has one.
// Research use only. No external assets: everything here is served by the app.
"use strict";
const $ = (id) => document.getElementById(id);
const keyField = $("apikey");
keyField.value = sessionStorage.getItem("assurexray-key") || "";
keyField.addEventListener("change", () => sessionStorage.setItem("assurexray-key", keyField.value));

function percent(p) { return (100 * p).toFixed(1) + "%"; }

function showBars(result) {
  const probs = result.calibrated_probs || result.probs;
  const bars = $("bars");
  bars.replaceChildren();
  for (const [name, p] of Object.entries(probs)) {
    const row = document.createElement("div");
    row.className = "bar" + (name === result.pred ? " pred" : "");
    row.dataset.class = name;
    row.dataset.prob = String(p);
    const label = document.createElement("span");
    label.textContent = name;
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = percent(p);
    track.append(fill);
    const value = document.createElement("span");
    value.textContent = percent(p);
    row.append(label, track, value);
    bars.append(row);
  }
  bars.dataset.kind = result.calibrated_probs ? "calibrated" : "raw";
}

// A rate as "0.85 (95% interval 0.70-0.94, n 40)", or "n/a" where the test set cannot define it.
function rate(r, level) {
  if (!r || r.value === null) return "n/a";
  return `${r.value.toFixed(2)} (${Math.round(100 * level)}% interval ${r.ci_low.toFixed(2)}-${r.ci_high.toFixed(2)}, n ${r.n})`;
}

// The held-out test rates at this threshold (analyze stage), or why none are quoted.
function testRates(d) {
  const t = d.test_rates;
  return t
    ? `Test set (held out, same threshold): sensitivity ${rate(t.sensitivity, t.ci_level)}, specificity ${rate(t.specificity, t.ci_level)}.`
    : "No test-set rates loaded (serve --test-rates): only the optimistic validation rates are known.";
}

// One sentence, because the two answers follow different rules and can disagree: the predicted
// class is the most probable one (argmax), while a binary decision compares one score with a
// threshold chosen on validation (score >= threshold is positive).
function verdict(result) {
  const probs = result.calibrated_probs || result.probs;
  const predicted = `Predicted class: ${result.pred} (the most probable class, p ${probs[result.pred].toFixed(2)})`;
  const d = result.decisions && result.decisions.malignant_vs_rest;
  if (!d || d.positive === null) return `${predicted}; no operating point loaded, so no malignant-vs-rest decision.`;
  const side = d.positive ? "at or above" : "below";
  return `${predicted}; malignant vs rest: ${d.positive ? "POSITIVE" : "negative"} (its ${d.scale} score ` +
    `${d.score.toFixed(3)} is ${side} the threshold ${d.threshold.toFixed(3)} of the ${d.operating_point} ` +
    `operating point, chosen on validation).`;
}

function showDecision(result) {
  const d = result.decisions && result.decisions.malignant_vs_rest;
  $("decision").textContent = verdict(result);
  $("rates").textContent = d && d.positive !== null
    ? `Validation (the images the threshold was chosen on, optimistic): sensitivity ${d.val_sensitivity.toFixed(2)}, ` +
      `specificity ${d.val_specificity.toFixed(2)}. ${testRates(d)}`
    : "";
  const ood = result.ood;
  $("ood").hidden = !(ood && ood.flagged);
  $("ood").textContent = ood && ood.flagged
    ? `Warning: this image is unlike the training radiographs (out-of-distribution score ` +
      `${ood.score.toFixed(2)} > ${ood.threshold.toFixed(2)}). The prediction is unreliable.`
    : "";
}

// The anomaly detector is a second, separate opinion: it learnt normal radiographs only, so its
// threshold is said in words (a high score means "unlike the normals", not a diagnosis).
const THRESHOLD_NOTE = "The threshold is the validation Youden point of a detector trained on " +
  "normal radiographs only: at or above it, the image is unlike the normals it learnt.";
const MAP_NOTE = "The anomaly map below is scaled to this image's own maximum.";

function anomalyVerdict(a) {
  const score = `Anomaly detector ${a.arch}: score ${a.score.toFixed(3)} (${a.primary})`;
  const d = a.decision;
  if (!d) return `${score}; this model has no decision threshold, only its score.`;
  return `${score}: ${d.anomalous ? "ANOMALOUS" : "not anomalous"} (${d.anomalous ? "at or above" : "below"} ` +
    `the threshold ${d.threshold.toFixed(3)}).`;
}

function showAnomaly(result) {
  const a = result.anomaly;
  $("anomalybox").hidden = !a;
  if (!a) return;
  $("anomaly").textContent = anomalyVerdict(a);
  $("anomalynote").textContent =
    [a.decision ? THRESHOLD_NOTE : "", result.anomaly_map_png ? MAP_NOTE : ""].join(" ").trim();
  $("anomalymap").hidden = !result.anomaly_map_png;
  if (result.anomaly_map_png) $("anomalymap").src = "data:image/png;base64," + result.anomaly_map_png;
}

async function classify(file) {
  $("status").textContent = "Classifying…";
  $("result").hidden = true;
  const body = new FormData();
  body.append("file", file);
  const headers = keyField.value ? { "X-API-Key": keyField.value } : {};
  let response;
  try {
    response = await fetch("/predict?gradcam=true&anomaly_map=true", { method: "POST", body, headers });
  } catch (err) {
    $("status").textContent = "The server cannot be reached.";
    return;
  }
  const result = await response.json();
  if (!response.ok) {
    $("status").textContent = `Error ${response.status}: ${result.detail}`;
    return;
  }
  $("image").src = "data:image/png;base64," + result.image_png;
  $("overlay").src = "data:image/png;base64," + result.gradcam_png;
  $("camnote").textContent = `Grad-CAM of the predicted class (${result.gradcam_class}).`;
  showBars(result);
  showDecision(result);
  showAnomaly(result);
  $("model").textContent =
    result.calibrated_probs ? "Bars show temperature-calibrated probabilities." : "Bars show probabilities.";
  $("result").hidden = false;
  $("status").textContent = "Done.";
}

$("opacity").addEventListener("input", (e) => { $("overlay").style.opacity = e.target.value / 100; });
$("overlay").style.opacity = 0.6;
$("file").addEventListener("change", (e) => { if (e.target.files[0]) classify(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]);
});
