/* Video page: upload with progress, follow the job, annotated stream and download, per-person timeline (CSV/JSON). */
"use strict";
(function () {
  const { $, el, api, busy, clearError, notify, fmtTime } = FR;
  const enc = encodeURIComponent;
  const form = $("#video-form");
  const input = $("#video-file");
  const select = $("#gallery-select");
  const bar = $("#progress");
  const barText = $("#progress-text");
  const streamImg = $("#stream");
  const player = $("#annotated");
  const POLL_MS = 500;
  const FRAMES_PAGE = 10000;
  let current = null; // {job, timeline}
  let generation = 0;

  const jobPath = (id) => `/api/v1/videos/${enc(id)}`;

  function setProgress(fraction, text) {
    $("#video-progress").hidden = false;
    if (fraction === null) bar.removeAttribute("value");
    else bar.value = Math.max(0, Math.min(1, fraction));
    barText.textContent = text;
  }

  function resetResults() {
    $("#timeline-panel").hidden = true;
    $("#stream-panel").hidden = true;
    $("#video-download").disabled = true;
    $("#stream-replay").hidden = true;
    $("#timeline").replaceChildren();
    $("#tracks").replaceChildren();
    streamImg.removeAttribute("src");
    streamImg.hidden = false;
    player.pause();
    player.removeAttribute("src");
    player.hidden = true;
    player.load();
  }

  // --- the timeline -----------------------------------------------------------------------------
  /** Per-person on-screen segments from per-frame results; gaps up to half a second are bridged. */
  function computeTimeline(frames, fps, totalFrames) {
    fps = fps > 0 ? fps : 30;
    const gap = Math.max(2, Math.round(fps * 0.5));
    const timeOf = new Map();
    const byName = new Map();
    for (const fr of frames) {
      timeOf.set(fr.frame, typeof fr.time_s === "number" ? fr.time_s : fr.frame / fps);
      for (const f of fr.faces || []) {
        if (!byName.has(f.name)) byName.set(f.name, new Set());
        byName.get(f.name).add(fr.frame);
      }
    }
    const t = (i) => (timeOf.has(i) ? timeOf.get(i) : i / fps);
    const people = [];
    for (const [name, set] of byName) {
      const idx = Array.from(set).sort((a, b) => a - b);
      const segments = [];
      let start = idx[0];
      let prev = idx[0];
      const close = () => {
        const s = t(start);
        const e = t(prev) + 1 / fps;
        segments.push({ start_frame: start, end_frame: prev, start_s: +s.toFixed(3), end_s: +e.toFixed(3), duration_s: +(e - s).toFixed(3) });
      };
      for (const i of idx.slice(1)) {
        if (i - prev > gap) { close(); start = i; }
        prev = i;
      }
      close();
      const onScreen = segments.reduce((a, s) => a + s.duration_s, 0);
      people.push({ name, frames: idx.length, on_screen_s: +onScreen.toFixed(3), first_s: segments[0].start_s, segments });
    }
    people.sort((a, b) => (a.name === "unknown") - (b.name === "unknown") || a.first_s - b.first_s || a.name.localeCompare(b.name));
    const lastFrame = frames.length ? frames[frames.length - 1].frame : 0;
    const frameCount = Math.max(totalFrames || 0, lastFrame + 1);
    const duration = Math.max(t(lastFrame) + 1 / fps, frameCount / fps);
    return { fps, frames: frameCount, duration_s: +duration.toFixed(3), people };
  }

  function tickStep(duration) {
    for (const s of [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600]) if (duration / s <= 8) return s;
    return 7200;
  }

  function pct(x, duration) { return (100 * x / duration).toFixed(3) + "%"; }

  function renderTimeline(tl) {
    const root = $("#timeline");
    const D = tl.duration_s || 1;
    const axis = el("div", { class: "tl-track tl-axis", "aria-hidden": "true" });
    const step = tickStep(D);
    for (let s = 0; s <= D + 1e-6; s += step) {
      const tick = el("span", { class: "tl-tick", text: fmtTime(s).replace(/\.0$/, "") });
      tick.style.left = pct(s, D);
      axis.append(tick);
    }
    const rows = [el("div", { class: "tl-row tl-axis-row", role: "row" }, el("div", { class: "tl-label", role: "rowheader", text: "" }), axis)];
    for (const p of tl.people) {
      const color = FR.colorFor(p.name);
      const track = el("div", { class: "tl-track", role: "cell" });
      for (const s of p.segments) {
        const seg = el("div", {
          class: "tl-seg", title: `${p.name}: ${fmtTime(s.start_s)} – ${fmtTime(s.end_s)} (frames ${s.start_frame}–${s.end_frame})`,
          dataset: { start: s.start_s, end: s.end_s },
          onclick: () => seek(s.start_s),
        });
        seg.style.left = pct(s.start_s, D);
        seg.style.width = `max(3px, ${pct(s.duration_s, D)})`;
        seg.style.background = color;
        track.append(seg);
      }
      const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.background = color;
      const label = el("div", { class: "tl-label", role: "rowheader" },
        swatch,
        el("span", { class: "tl-name", text: p.name, title: p.name === "unknown" ? "faces not matched to anyone in the gallery" : p.name }),
        el("span", { class: "muted tl-total", text: `${p.on_screen_s.toFixed(1)} s` }));
      rows.push(el("div", { class: "tl-row", role: "row", dataset: { person: p.name } }, label, track));
    }
    root.replaceChildren(...rows);
    const known = tl.people.filter((p) => p.name !== "unknown");
    $("#timeline-summary").textContent = tl.people.length
      ? `${known.length} known ${known.length === 1 ? "person" : "people"} in ${fmtTime(tl.duration_s)} (${tl.frames} frames at ${tl.fps.toFixed(2)} fps)`
        + (known.length ? ": " + known.map((p) => p.name).join(", ") : "") + "."
      : `Nobody was found in ${fmtTime(tl.duration_s)} of video.`;
    root.dataset.people = known.map((p) => p.name).join(",");
  }

  function exportName(ext) {
    const base = ((current && current.job.filename) || "video").replace(/\.[^.]+$/, "").replace(/[^\w.-]+/g, "_");
    return `timeline-${base}.${ext}`;
  }

  function timelineJSON() {
    const { job, timeline } = current;
    return {
      job_id: job.job_id, filename: job.filename || null, gallery: job.gallery,
      fps: timeline.fps, frames: timeline.frames, duration_s: timeline.duration_s, people: timeline.people,
    };
  }

  function csvCell(v) {
    const s = String(v);
    return /[",\n\r]/.test(s) || /^[=+\-@]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  }

  function timelineCSV() {
    const lines = [["person", "segment", "start_frame", "end_frame", "start_s", "end_s", "duration_s"].join(",")];
    for (const p of current.timeline.people) {
      p.segments.forEach((s, i) => lines.push([p.name, i + 1, s.start_frame, s.end_frame, s.start_s, s.end_s, s.duration_s].map(csvCell).join(",")));
    }
    return lines.join("\r\n") + "\r\n";
  }

  $("#export-csv").addEventListener("click", () => {
    if (current && current.timeline) FR.saveBlob(new Blob([timelineCSV()], { type: "text/csv" }), exportName("csv"));
  });
  $("#export-json").addEventListener("click", () => {
    if (current && current.timeline) FR.saveBlob(new Blob([JSON.stringify(timelineJSON(), null, 2)], { type: "application/json" }), exportName("json"));
  });

  // --- tracks ----------------------------------------------------------------------------------
  function renderTracks(job, tracks, fps) {
    const root = $("#tracks");
    const named = tracks.filter((t) => t.best_crop);
    const unknown = tracks.length - named.length;
    const cards = named.map((t) => {
      const img = el("img", { class: "crop", alt: `best face of track ${t.track_id} (${t.name})`, width: 72, height: 72 });
      const card = el("figure", { class: "track", dataset: { name: t.name } }, img,
        el("figcaption", {},
          el("strong", { text: t.name }),
          el("span", { class: "muted small", text: `track ${t.track_id} · ${fmtTime(t.first_frame / fps)}–${fmtTime((t.last_frame + 1) / fps)} · ${t.similarity.toFixed(2)}` })));
      const path = t.best_crop.split("/").map(enc).join("/");
      FR.blobUrl(`${jobPath(job.job_id)}/crops/${path}`).then((u) => { img.src = u; }).catch(() => img.remove());
      return card;
    });
    if (unknown) cards.push(el("p", { class: "muted", text: `${unknown} other ${unknown === 1 ? "track" : "tracks"} (unknown or too short to recognize).` }));
    if (!tracks.length) cards.push(el("p", { class: "muted", text: "No face tracks." }));
    root.replaceChildren(...cards);
  }

  // --- following a job --------------------------------------------------------------------------
  function describeJob(job) {
    const v = job.video || {};
    const total = v.frames;
    const done = job.frames_done || 0;
    const fps = job.fps ? ` · ${job.fps.toFixed(0)} frames/s` : "";
    switch (job.status) {
      case "queued": return "Waiting for the video to start processing…";
      case "running": return `Processing: ${Math.round(100 * (job.progress || 0))}%` + (total ? ` (frame ${done} of ${total})` : ` (${done} frames)`) + fps;
      case "done": return "Done" + (job.summary ? `: ${job.summary.frames} frames in ${job.summary.seconds.toFixed(1)} s` : "") + ".";
      case "cancelled": return "Cancelled.";
      case "failed": return "Failed.";
      default: return job.status;
    }
  }

  function showStream(job, replay) {
    $("#stream-panel").hidden = false;
    const url = job.stream_url || (job.links && job.links.stream);
    if (!url) return;
    player.pause();
    player.hidden = true;
    streamImg.hidden = false;
    streamImg.src = replay ? url + (url.includes("?") ? "&" : "?") + "replay=" + Date.now() : url;
  }

  /** The finished job's annotated H.264 video in a <video> tag (seekable); the MJPEG replay if it cannot play. */
  function showVideo(job) {
    const url = job.video_url || (job.links && job.links.video);
    if (!url) return;
    $("#stream-panel").hidden = false;
    streamImg.removeAttribute("src"); // closes the MJPEG connection
    streamImg.hidden = true;
    player.hidden = false;
    player.onerror = () => { if (current && current.job.job_id === job.job_id) showStream(job, true); };
    player.src = url;
  }

  function seek(seconds) {
    if (player.hidden || !player.getAttribute("src")) return;
    player.currentTime = Math.max(0, seconds);
    player.play().catch(() => {});
    player.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  async function loadFrames(id) {
    const frames = [];
    let offset = 0;
    for (;;) {
      const page = await api(`${jobPath(id)}/frames`, { query: { offset, limit: FRAMES_PAGE } });
      frames.push(...page.frames);
      if (page.next_offset === null || page.next_offset === undefined || !page.frames.length) break;
      offset = page.next_offset;
    }
    return frames;
  }

  async function loadResults(job, gen) {
    setProgress(1, describeJob(job) + " Building the timeline…");
    const [frames, tracks] = await Promise.all([
      loadFrames(job.job_id),
      api(`${jobPath(job.job_id)}/tracks`).then((r) => r.tracks).catch(() => []),
    ]);
    if (gen !== generation) return;
    const fps = (job.video && job.video.fps) || (job.summary && job.summary.fps) || 30;
    const timeline = computeTimeline(frames, fps, (job.summary && job.summary.frames) || (job.video && job.video.frames));
    current = { job, timeline };
    renderTimeline(timeline);
    renderTracks(job, tracks, fps);
    $("#timeline-panel").hidden = false;
    $("#video-download").disabled = job.status !== "done" && job.status !== "cancelled";
    if (job.status === "done") showVideo(job);
    $("#stream-replay").hidden = job.status === "done";
    setProgress(1, describeJob(job));
  }

  async function follow(id, gen) {
    for (;;) {
      if (gen !== generation) return;
      const job = await api(jobPath(id));
      if (gen !== generation) return;
      current = { job, timeline: null };
      const active = job.status === "queued" || job.status === "running";
      $("#video-cancel").hidden = !active;
      setProgress(job.status === "queued" ? null : job.progress || 0, describeJob(job));
      if (!active) {
        notify("");
        if (job.status === "failed") {
          FR.showError(`The video could not be processed: ${job.error || "unknown error"}.`);
          return;
        }
        await loadResults(job, gen);
        loadJobs().catch(() => {});
        return;
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  async function openJob(id) {
    const gen = ++generation;
    resetResults();
    clearError();
    const job = await api(jobPath(id));
    if (gen !== generation) return;
    if (history.replaceState) history.replaceState(null, "", "#job=" + id);
    showStream(job);
    await follow(id, gen);
  }

  async function submit() {
    const file = input.files[0];
    if (!file) throw new Error("Choose a video first.");
    FR.checkSize(file, FR.config.videoMaxUploadBytes, "this video");
    const gen = ++generation;
    resetResults();
    clearError();
    const fd = new FormData();
    fd.append("gallery", select.value);
    fd.append("file", file, file.name);
    setProgress(0, `Uploading ${file.name} (${FR.fmtBytes(file.size)})…`);
    let job;
    try {
      job = await FR.upload("/api/v1/videos", fd, (f) => setProgress(f, `Uploading ${file.name}: ${Math.round(100 * f)}%`));
    } catch (err) {
      $("#video-progress").hidden = true;
      throw err;
    }
    if (gen !== generation) return;
    if (history.replaceState) history.replaceState(null, "", "#job=" + job.job_id);
    setProgress(0, describeJob(job));
    showStream(job);
    loadJobs().catch(() => {});
    await follow(job.job_id, gen);
  }

  // --- recent jobs -------------------------------------------------------------------------------
  async function loadJobs() {
    if (!FR.config.videosEnabled) return;
    const { jobs } = await api("/api/v1/videos");
    const list = $("#jobs");
    const recent = jobs.slice().reverse().slice(0, 10);
    if (!recent.length) { list.replaceChildren(el("li", { class: "muted", text: "No videos yet." })); return; }
    list.replaceChildren(...recent.map((j) => el("li", {},
      el("a", { href: "#job=" + j.job_id, text: j.filename || j.job_id, onclick: (ev) => { ev.preventDefault(); busy(null, () => openJob(j.job_id)); } }),
      el("span", { class: `badge ${j.status}`, text: j.status }),
      el("span", { class: "muted small", text: `${j.gallery} · ${(j.created_at || "").replace("T", " ").slice(0, 16)}` }))));
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy($("#video-submit"), submit);
  });
  $("#video-cancel").addEventListener("click", () => busy($("#video-cancel"), async () => {
    if (!current) return;
    await api(jobPath(current.job.job_id), { method: "DELETE" });
    notify("Cancelling…");
  }));
  $("#stream-replay").addEventListener("click", () => { if (current) showStream(current.job, true); });
  $("#video-download").addEventListener("click", () => busy($("#video-download"), async () => {
    if (!current) return;
    notify("Downloading the annotated video…");
    const blob = await api(`${jobPath(current.job.job_id)}/video`, { query: { download: true }, as: "blob" });
    const base = (current.job.filename || "video").replace(/\.[^.]+$/, "");
    FR.saveBlob(blob, `${base}-annotated.mp4`);
    notify("");
  }));
  $("#jobs-refresh").addEventListener("click", () => busy(null, loadJobs));
  FR.dropZone($("#video-drop"), input);

  FR.ready().then(() => busy(null, async () => {
    await FR.fillGalleries(select);
    if (!FR.config.videosEnabled) return;
    await loadJobs();
    const m = /job=([0-9a-f-]{36})/i.exec(location.hash);
    if (m) await openJob(m[1]);
  }));

  window.FRVideo = { computeTimeline }; // for tests and the console
})();
