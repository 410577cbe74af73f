/* Photo page: upload a photo to POST /recognition, draw boxes, names, similarity and attributes, show the JSON. */
"use strict";
(function () {
  const { $, $$, api, busy, clearError } = FR;
  const form = $("#photo-form");
  const input = $("#photo-file");
  const select = $("#gallery-select");
  const canvas = $("#photo-canvas");
  const status = $("#photo-status");
  const MAX_SIDE = 1600; // canvas pixels (the boxes are scaled to it)
  let seq = 0;

  function wantedAttributes() {
    return $$('input[name="attributes"]:checked', form).map((c) => c.value).join(",");
  }

  async function decodeForDisplay(file) {
    try {
      return await createImageBitmap(file);
    } catch (e) {
      return null; // the server's answer explains what is wrong with the file
    }
  }

  function render(file, bitmap, out) {
    const result = $("#photo-result");
    result.hidden = false;
    const n = out.faces.length;
    $("#faces-title").textContent = `${n} ${n === 1 ? "face" : "faces"} in ${file.name}`;
    const list = FR.faceList(out.faces);
    $("#faces").replaceChildren(list);
    FR.colorSwatches(list);
    const t = out.timings_ms || {};
    const stages = ["decode", "detect", "embed", "match", "attributes"].filter((k) => typeof t[k] === "number")
      .map((k) => `${k} ${Math.round(t[k])}`);
    $("#photo-timings").textContent = typeof t.total === "number"
      ? `${Math.round(t.total)} ms on the server (${stages.join(", ")}) · gallery ${out.gallery} · model ${out.model}` : "";
    $("#photo-json").textContent = JSON.stringify(out, null, 2);

    const W = out.image.width;
    const H = out.image.height;
    const scale = Math.min(1, MAX_SIDE / Math.max(W, H));
    canvas.width = Math.round(W * scale);
    canvas.height = Math.round(H * scale);
    const ctx = canvas.getContext("2d");
    if (bitmap) {
      ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    } else {
      ctx.fillStyle = "#333";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
    }
    FR.drawFaces(ctx, out.faces, scale);
    const names = out.faces.map((f) => `${f.name} ${FR.similarityText(f)}`.trim());
    canvas.setAttribute("aria-label", n ? `the photo with ${n} ${n === 1 ? "face" : "faces"}: ${names.join(", ")}` : "the photo: no face found");
    canvas.dataset.names = out.faces.map((f) => f.name).join(",");
  }

  async function recognize() {
    const file = input.files[0];
    if (!file) { FR.showError("Choose a photo first."); return; }
    const mine = ++seq;
    await busy($("#recognize"), async () => {
      status.textContent = "Recognizing…";
      try {
        FR.checkSize(file, FR.config.maxUploadBytes, "this photo");
        const fd = new FormData();
        fd.append("file", file, file.name);
        const query = { gallery: select.value, attributes: wantedAttributes() };
        const [out, bitmap] = await Promise.all([api("/recognition", { form: fd, query }), decodeForDisplay(file)]);
        if (mine !== seq) return;
        clearError();
        render(file, bitmap, out);
        status.textContent = "";
      } catch (err) {
        if (mine === seq) {
          status.textContent = "";
          $("#photo-result").hidden = true;
        }
        throw err;
      }
    });
  }

  input.addEventListener("change", () => { if (input.files.length) recognize(); });
  form.addEventListener("submit", (ev) => { ev.preventDefault(); recognize(); });
  FR.dropZone($("#photo-drop"), input);
  FR.ready().then(() => busy(null, () => FR.fillGalleries(select)));
})();
