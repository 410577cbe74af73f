/* Webcam page: browser camera frames to POST /recognition, one request at a time, answer drawn over the video. */
"use strict";
(function () {
  const { $, $$, api, busy, clearError } = FR;
  const video = $("#webcam-video");
  const overlay = $("#webcam-overlay");
  const select = $("#gallery-select");
  const cameraSelect = $("#camera-select");
  const startBtn = $("#webcam-start");
  const stopBtn = $("#webcam-stop");
  const stats = $("#webcam-stats");
  const SEND_WIDTH = 640; // frames are scaled down to this width before sending
  const MIN_INTERVAL_MS = 80;
  const grab = document.createElement("canvas");
  let stream = null;
  let running = false;
  let session = 0;
  const times = [];

  function cameraError(err) {
    const name = err && err.name;
    if (name === "NotAllowedError" || name === "SecurityError") return "The browser was not allowed to use the camera. Allow camera access for this page and try again.";
    if (name === "NotFoundError" || name === "OverconstrainedError") return "No camera was found. Plug one in (or pick another) and try again.";
    if (name === "NotReadableError") return "The camera could not be started; another application may be using it.";
    return "The camera could not be started: " + ((err && err.message) || String(err)) + ".";
  }

  async function listCameras() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
    const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
    const chosen = cameraSelect.value;
    cameraSelect.replaceChildren(FR.el("option", { value: "", text: "default camera" }),
      ...devices.map((d, i) => FR.el("option", { value: d.deviceId, text: d.label || `camera ${i + 1}` })));
    if (devices.some((d) => d.deviceId === chosen)) cameraSelect.value = chosen;
  }

  function attributes() {
    return $$('input[name="attributes"]:checked').map((c) => c.value).join(",");
  }

  function frameBlob() {
    const vw = video.videoWidth;
    const vh = video.videoHeight;
    const scale = Math.min(1, SEND_WIDTH / vw);
    grab.width = Math.round(vw * scale);
    grab.height = Math.round(vh * scale);
    grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
    return new Promise((resolve) => grab.toBlob((b) => resolve({ blob: b, scale }), "image/jpeg", 0.8));
  }

  function draw(faces, scale) {
    overlay.width = video.videoWidth;
    overlay.height = video.videoHeight;
    FR.drawFaces(overlay.getContext("2d"), faces, 1 / scale, { clear: true });
    const list = FR.faceList(faces);
    $("#webcam-faces").replaceChildren(list);
    FR.colorSwatches(list);
  }

  function showStats(ms) {
    const now = performance.now();
    times.push(now);
    while (times.length && now - times[0] > 5000) times.shift();
    const rate = times.length > 1 ? (times.length - 1) / ((now - times[0]) / 1000) : 0;
    stats.textContent = `${rate.toFixed(1)} frames/s · ${Math.round(ms)} ms per frame`;
  }

  async function loop(mine) {
    let failures = 0;
    while (running && mine === session) {
      const t0 = performance.now();
      if (document.hidden || video.readyState < 2 || !video.videoWidth) {
        await new Promise((r) => setTimeout(r, 200));
        continue;
      }
      try {
        const { blob, scale } = await frameBlob();
        if (!blob) throw new Error("could not read a frame from the camera");
        const fd = new FormData();
        fd.append("file", blob, "frame.jpg");
        const out = await api("/recognition", { form: fd, query: { gallery: select.value, attributes: attributes() } });
        if (!running || mine !== session) break;
        failures = 0;
        clearError();
        draw(out.faces, scale);
        overlay.dataset.names = out.faces.map((f) => f.name).join(",");
        showStats(performance.now() - t0);
      } catch (err) {
        FR.showError(err);
        const transient = err instanceof FR.ApiError && (err.status === 0 || err.status === 503 || err.status >= 500);
        if (!transient || ++failures > 5) { stop(); break; }
        await new Promise((r) => setTimeout(r, 1000));
      }
      const wait = MIN_INTERVAL_MS - (performance.now() - t0);
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  }

  async function start() {
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("The browser only allows the camera on https:// pages or on localhost. Open this page over HTTPS (or on this machine) to use the webcam.");
    }
    stop();
    const constraints = cameraSelect.value
      ? { deviceId: { exact: cameraSelect.value } }
      : { width: { ideal: 1280 }, height: { ideal: 720 }, facingMode: "user" };
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: constraints, audio: false });
    } catch (err) {
      throw new Error(cameraError(err));
    }
    video.srcObject = stream;
    await video.play().catch(() => {});
    $("#stage-empty").hidden = true;
    running = true;
    startBtn.disabled = true;
    stopBtn.disabled = false;
    listCameras().catch(() => {});
    loop(++session);
  }

  function stop() {
    running = false;
    session++;
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    video.srcObject = null;
    overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
    $("#stage-empty").hidden = false;
    startBtn.disabled = false;
    stopBtn.disabled = true;
    stats.textContent = "";
    times.length = 0;
  }

  startBtn.addEventListener("click", () => busy(null, start));
  stopBtn.addEventListener("click", stop);
  cameraSelect.addEventListener("change", () => { if (running) busy(null, start); });
  window.addEventListener("pagehide", stop);
  FR.ready().then(() => busy(null, () => FR.fillGalleries(select)));
})();
