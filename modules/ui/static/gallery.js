/* Gallery page: galleries, people with their face crops; add a person with photos, rename, delete. */
"use strict";
(function () {
  const { $, el, api, busy, notify, clearError } = FR;
  const enc = encodeURIComponent;
  const select = $("#gallery-select");
  const grid = $("#people");
  const PAGE = 60;
  const MAX_CROPS = 8;
  let offset = 0;
  let total = 0;
  let generation = 0;

  const galleryPath = () => `/api/v1/galleries/${enc(select.value)}`;
  const personPath = (name) => `${galleryPath()}/people/${enc(name)}`;

  // crops are fetched with the key (an <img src> cannot send it), a few at a time
  const cropQueue = [];
  let cropsRunning = 0;
  function queueCrop(fn) {
    cropQueue.push(fn);
    pumpCrops();
  }
  function pumpCrops() {
    while (cropsRunning < 4 && cropQueue.length) {
      const fn = cropQueue.shift();
      cropsRunning++;
      fn().catch(() => {}).finally(() => { cropsRunning--; pumpCrops(); });
    }
  }

  function plural(n, one, many) { return `${n} ${n === 1 ? one : many}`; }

  function filesForm(files) {
    const form = new FormData();
    let size = 0;
    for (const f of files) { form.append("file", f, f.name); size += f.size; }
    FR.checkSize({ size }, FR.config.maxUploadBytes, files.length > 1 ? "these photos together" : "this photo");
    return form;
  }

  async function loadCrops(card, person, gen) {
    const box = $(".crops", card);
    const { faces } = await api(`${personPath(person.name)}/faces`);
    if (gen !== generation) return;
    box.replaceChildren();
    const shown = faces.filter((f) => f.has_crop !== false).slice(0, MAX_CROPS);
    for (const f of shown) {
      const fig = el("figure", { class: "crop-wrap" });
      const img = el("img", { class: "crop", alt: `face ${f.id} of ${person.name}`, width: 56, height: 56, dataset: { faceId: f.id } });
      const del = el("button", {
        type: "button", class: "crop-delete", title: "Delete this face", "aria-label": `Delete face ${f.id}`, text: "×",
        onclick: () => deleteFace(person.name, f.id),
      });
      fig.append(img, del);
      box.append(fig);
      queueCrop(async () => {
        if (gen !== generation) return;
        img.src = await FR.blobUrl(`${personPath(person.name)}/faces/${f.id}/crop`);
      });
    }
    if (faces.length > shown.length) box.append(el("span", { class: "more-crops muted", text: `+${faces.length - shown.length}` }));
    if (!faces.length) box.append(el("span", { class: "muted", text: "no faces" }));
  }

  function personCard(person) {
    const gen = generation;
    const addInput = el("input", { type: "file", accept: "image/*", multiple: true, class: "visually-hidden", "aria-label": `Add photos of ${person.name}` });
    const nameInput = el("input", { name: "name", value: person.name, required: true, maxlength: 128, "aria-label": "New name" });
    const renameForm = el("form", { class: "rename-form", hidden: true },
      nameInput,
      el("button", { type: "submit", class: "small", text: "Save" }),
      el("button", { type: "button", class: "small link", text: "Cancel", onclick: () => { renameForm.hidden = true; actions.hidden = false; } }),
    );
    const actions = el("div", { class: "person-actions" },
      el("label", { class: "button small" }, "Add photos", addInput),
      el("button", { type: "button", class: "small", text: "Rename", onclick: () => {
        renameForm.hidden = false; actions.hidden = true; nameInput.value = person.name; nameInput.focus(); nameInput.select();
      } }),
      el("button", { type: "button", class: "small danger", text: "Delete", onclick: () => deletePerson(person.name) }),
    );
    const card = el("article", { class: "person", dataset: { person: person.name } },
      el("div", { class: "crops" }, el("span", { class: "muted", text: "loading…" })),
      el("h3", { class: "person-name", text: person.name }),
      el("p", { class: "muted person-count", text: plural(person.num_faces, "face", "faces") }),
      actions,
      renameForm,
    );
    renameForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const newName = nameInput.value.trim();
      if (!newName || newName === person.name) { renameForm.hidden = true; actions.hidden = false; return; }
      busy(renameForm.querySelector("button"), async () => {
        await api(personPath(person.name), { method: "PATCH", json: { name: newName } });
        clearError();
        notify(`Renamed ${person.name} to ${newName}.`);
        await reload();
      });
    });
    addInput.addEventListener("change", () => {
      const files = Array.from(addInput.files);
      if (!files.length) return;
      busy(null, async () => {
        notify(`Adding ${plural(files.length, "photo", "photos")} of ${person.name}…`);
        try {
          const out = await api(`${personPath(person.name)}/faces`, { form: filesForm(files) });
          clearError();
          notify(`Added ${plural(out.face_ids.length, "face", "faces")} to ${person.name}.`);
          await reload();
        } catch (err) {
          notify("");
          throw err;
        } finally {
          addInput.value = "";
        }
      });
    });
    loadCrops(card, person, gen).catch((err) => FR.showError(err));
    return card;
  }

  function applyFilter() {
    const q = $("#people-filter").value.trim().toLowerCase();
    FR.$$(".person", grid).forEach((c) => { c.hidden = !!q && !c.dataset.person.toLowerCase().includes(q); });
  }

  function updateCounts() {
    $("#people-title").textContent = `People in ${select.value} (${total})`;
    $("#people-empty").hidden = total > 0;
    $("#load-more").hidden = offset >= total;
  }

  async function loadPeople(reset) {
    if (reset) {
      generation++;
      offset = 0;
      cropQueue.length = 0;
    }
    const gen = generation;
    let page;
    try {
      page = await api(`${galleryPath()}/people`, { query: { offset, limit: PAGE } });
    } catch (err) {
      if (err.code !== "gallery_not_found") throw err;
      page = { people: [], total: 0 };
    }
    if (gen !== generation) return;
    if (reset) grid.replaceChildren();
    total = page.total;
    offset += page.people.length;
    page.people.forEach((p) => grid.append(personCard(p)));
    updateCounts();
    applyFilter();
  }

  async function reload() {
    await FR.fillGalleries(select, select.value);
    await loadPeople(true);
  }

  async function deletePerson(name) {
    if (!confirm(`Delete ${name} and all their faces from ${select.value}?`)) return;
    await busy(null, async () => {
      const out = await api(personPath(name), { method: "DELETE" });
      clearError();
      notify(`Deleted ${out.deleted} (${plural(out.faces, "face", "faces")}).`);
      await reload();
    });
  }

  async function deleteFace(name, faceId) {
    if (!confirm(`Delete face ${faceId} of ${name}?`)) return;
    await busy(null, async () => {
      await api(`${personPath(name)}/faces/${faceId}`, { method: "DELETE" });
      clearError();
      notify(`Deleted face ${faceId} of ${name}.`);
      await reload();
    });
  }

  $("#add-person-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy($("#add-person"), async () => {
      const name = $("#person-name").value.trim();
      const input = $("#person-photos");
      const files = Array.from(input.files);
      if (!name) throw new Error("Give the person a name.");
      if (!files.length) throw new Error("Choose at least one photo of the person.");
      notify(`Adding ${name}…`);
      try {
        const out = await api(`${personPath(name)}/faces`, { form: filesForm(files) });
        clearError();
        notify(`Added ${out.person.name} with ${plural(out.face_ids.length, "face", "faces")}.`);
        $("#person-name").value = "";
        input.value = "";
        await reload();
      } catch (err) {
        notify("");
        throw err;
      }
    });
  });

  $("#new-gallery-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.submitter || null, async () => {
      const name = $("#new-gallery-name").value.trim();
      const g = await api("/api/v1/galleries", { json: { name } });
      clearError();
      $("#new-gallery-name").value = "";
      notify(`Created gallery ${g.name}.`);
      FR.rememberGallery(g.name);
      await FR.fillGalleries(select, g.name);
      await loadPeople(true);
    });
  });

  $("#delete-gallery").addEventListener("click", () => {
    const name = select.value;
    if (!confirm(`Delete the gallery ${name} with every person and face in it?`)) return;
    busy($("#delete-gallery"), async () => {
      const out = await api(galleryPath(), { method: "DELETE" });
      clearError();
      notify(`Deleted gallery ${out.deleted} (${plural(out.people, "person", "people")}, ${plural(out.faces, "face", "faces")}).`);
      FR.rememberGallery(FR.config.defaultGallery);
      await FR.fillGalleries(select, FR.config.defaultGallery);
      await loadPeople(true);
    });
  });

  select.addEventListener("change", () => busy(null, () => loadPeople(true)));
  $("#people-filter").addEventListener("input", applyFilter);
  $("#load-more").addEventListener("click", () => busy($("#load-more"), () => loadPeople(false)));

  FR.ready().then(() => busy(null, reload));
})();
