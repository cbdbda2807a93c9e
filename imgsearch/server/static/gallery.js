// The imgsearch gallery: a search box over the HTTP API, a lazily loaded grid, a large view. No dependencies.
"use strict";

const PAGE = 60;
const $ = (id) => document.getElementById(id);
const state = {
  q: "", upload: null, similar: null, filters: {}, results: [], offset: 0, done: false, loading: false, token: 0,
  maxResults: 1000, texts: 0, current: -1, generation: null, images: null, seen: null,
};
const LOOK_EVERY = 2000;  // ms between looks at /api/updates while the page is visible
const FILTERS = ["in", "after", "before", "format", "orientation", "type", "min_width"];

// -- talking to the server ---------------------------------------------------------------------
function params(extra) {
  const p = new URLSearchParams();
  for (const [key, value] of Object.entries({ ...state.filters, ...extra })) {
    if (value !== "" && value !== null && value !== undefined) p.append(key, value);
  }
  return p;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: "bad response", detail: response.statusText }));
  if (!response.ok) throw new Error(body.detail || body.error || response.statusText);
  return body;
}

function pageRequest(offset) {
  const p = params({ offset, limit: PAGE });
  if (state.upload) {
    if (state.q) p.set("q", state.q);
    const type = state.upload.type && state.upload.type.startsWith("image/") ? state.upload.type : "application/octet-stream";
    return api(`/api/search?${p}`, { method: "POST", body: state.upload, headers: { "Content-Type": type } });
  }
  const q = state.similar ? `id:${state.similar.id}` : state.q;
  if (q) { p.set("q", q); return api(`/api/search?${p}`); }
  return api(`/api/images?${p}`);
}

// -- results -----------------------------------------------------------------------------------
function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function run() {
  const token = ++state.token;  // a newer search makes older answers irrelevant
  Object.assign(state, { results: [], offset: 0, done: false, loading: false, current: -1, generation: null });
  $("fresh").hidden = true;
  if (state.seen !== null) state.images = state.seen;  // what "N new photos" counts from next
  $("grid").replaceChildren();
  await loadMore(token);
}

// -- live: photos indexed while the page is open (imgsearch index, watch, serve --watch) ---------------
async function lookForUpdates() {
  if (document.visibilityState === "visible" && $("notice").hidden) {
    try {
      const body = await api("/api/updates");
      showIndexing(body.indexing);
      if (state.images === null) state.images = body.images;
      state.seen = body.images;
      if (state.generation !== null && body.generation !== state.generation && !state.loading) changed(body);
    } catch (error) { /* a restart or a blip: the next look tries again */ }
  }
  setTimeout(lookForUpdates, LOOK_EVERY);
}

function changed(body) {
  const added = state.images === null ? 0 : body.images - state.images;
  const atTop = window.scrollY < 40 && !$("viewer").open && !state.upload;
  if (atTop && !state.q && !state.similar) { run(); return; }  // newest first, and the user is looking at the top
  $("fresh").textContent = added > 0 ? `${added} new photo${added === 1 ? "" : "s"} · show` : "Photos changed · refresh";
  $("fresh").hidden = false;  // elsewhere results do not move under the user's eyes: the user asks
}

function showIndexing(run) {
  $("indexing").hidden = !run;
  if (!run) return;
  const bar = $("indexing").querySelector("progress");
  bar.max = Math.max(1, run.total);
  bar.value = run.done;
  $("indexing").querySelector("span").textContent = run.stage === "embedding" ?
    `Indexing ${run.done.toLocaleString()} of ${run.total.toLocaleString()} photos in ${basename(run.folder)}` :
    `Indexing ${basename(run.folder)}: ${run.stage}`;
  $("indexing").title = run.folder;
}

// -- history: each search, and the open photo, is an entry that Back and Forward restore -------------------
function address(view) {
  const p = new URLSearchParams();
  if (state.q) p.set("q", state.q);
  if (state.similar) p.set("like", state.similar.id);
  for (const key of FILTERS) if (state.filters[key]) p.set(key, state.filters[key]);
  if (state.upload) p.set("image", "1");  // the file itself lives in the history entry
  if (view !== undefined) p.set("view", view);
  return `#${p}`;
}

function snapshot(view) {
  return { q: state.q, similar: state.similar, filters: { ...state.filters }, upload: state.upload, view };
}

function search() {  // a new search: a new history entry
  history.pushState(snapshot(), "", address());
  return run();
}

function fromAddress() {
  const p = new URLSearchParams(location.hash.slice(1));
  const like = p.get("like");
  return {
    q: p.get("q") || "", similar: like ? { id: Number(like), name: `image ${like}` } : null,
    filters: Object.fromEntries(FILTERS.filter((k) => p.get(k)).map((k) => [k, p.get(k)])),
    upload: null, view: p.get("view") ? Number(p.get("view")) : undefined,
  };
}

const fileKey = (f) => f && [f.name, f.size, f.type, f.lastModified].join("|");  // history holds copies
const sameSearch = (a, b) => a.q === b.q && JSON.stringify(a.filters) === JSON.stringify(b.filters) &&
  (a.similar && a.similar.id) === (b.similar && b.similar.id) && fileKey(a.upload) === fileKey(b.upload);

async function restore(entry) {
  if (!sameSearch(entry, state)) {
    Object.assign(state, { q: entry.q, similar: entry.similar, filters: { ...entry.filters }, upload: entry.upload });
    showSearch();
    await run();
  }
  const index = entry.view === undefined ? -1 : state.results.findIndex((h) => h.id === entry.view);
  if (index >= 0) show(index); else closeViewer();
}

function showSearch() {  // the box, the filters and the query chip as the state says
  $("q").value = state.q;
  for (const key of FILTERS) $("filters").elements[key].value = state.filters[key] || "";
  const chip = $("image-chip"), img = chip.querySelector("img");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  if (state.upload) img.src = URL.createObjectURL(state.upload);
  else if (state.similar) img.src = `/api/images/${state.similar.id}/thumbnail?size=128`;
  img.alt = state.similar ? `more like ${state.similar.name}` : "query image";
  chip.title = state.similar ? `More like ${state.similar.name}` : "Searching with this image";
  chip.hidden = !(state.upload || state.similar);
}

window.addEventListener("popstate", (event) => restore(event.state || fromAddress()));

async function loadMore(token = state.token) {
  if (state.loading || state.done) return;
  state.loading = true;
  const started = performance.now();
  try {
    const body = await pageRequest(state.offset);
    if (token !== state.token) return;
    append(body.results);
    if (state.offset === 0) state.generation = body.generation;  // the first page dates the results
    state.offset += body.results.length;
    state.done = body.results.length < PAGE || state.offset + PAGE > state.maxResults;
    const what = state.upload ? "image" + (state.q ? ` + “${state.q}”` : "") : state.q ? `“${state.q}”` : "newest first";
    const ms = Math.round(performance.now() - started);
    status(`${state.results.length} image${state.results.length === 1 ? "" : "s"} · ${what} · ${ms} ms` +
           (state.done && state.offset + PAGE > state.maxResults ? ` · showing the best ${state.results.length}` : ""));
  } catch (error) {
    if (token === state.token) { status(error.message, true); state.done = true; }
  } finally {
    if (token === state.token) state.loading = false;
  }
  if (token === state.token && !state.done && nearBottom()) loadMore(token);
}

function append(hits) {
  const fragment = document.createDocumentFragment();
  for (const hit of hits) {
    const index = state.results.push(hit) - 1;
    const tile = document.createElement("div");
    tile.className = "tile";
    tile.tabIndex = 0;
    tile.setAttribute("role", "listitem");
    tile.dataset.index = index;
    tile.dataset.id = hit.id;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = basename(hit.path);
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = hit.score === null ? basename(hit.path) : hit.score.toFixed(3);
    if (hit.duration !== null && hit.duration !== undefined) {  // a video: at the moment found, or its length
      tile.classList.add("video");
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = "▶ " + clock(hit.moments.length ? hit.moments[0].time : hit.duration);
      tile.append(badge);
    }
    tile.title = hit.path;
    tile.append(img, caption);
    fragment.append(tile);
  }
  $("grid").append(fragment);
  const size = thumbnailSize();
  for (const img of $("grid").querySelectorAll("img:not([src])")) {
    img.src = picture(state.results[img.parentElement.dataset.index], size);
  }
}

function picture(hit, size) {  // a photo's thumbnail; a video's frame at the moment found (its first one browsing)
  const at = hit.moments && hit.moments.length ? `&t=${hit.moments[0].time}` : "";
  return `/api/images/${hit.id}/thumbnail?size=${size}${at}`;
}

function clock(seconds) {  // 0:07, 1:23, 1:02:03, as players show a time
  const whole = Math.floor(seconds), h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60);
  const s = String(whole % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function thumbnailSize() {  // the tile's width in device pixels: sharp on a phone's 3x screen, small on a desktop
  const tile = $("grid").firstElementChild;
  return Math.min(1024, Math.ceil((tile ? tile.getBoundingClientRect().width : 180) * (window.devicePixelRatio || 1)));
}

function nearBottom() {
  return document.documentElement.scrollHeight - (window.scrollY + window.innerHeight) < 1200;
}

const basename = (path) => path.split(/[\\/]/).pop();

// -- the large view ----------------------------------------------------------------------------
function open(index) {  // the user opens a photo: an entry of its own, which Back closes
  const hit = state.results[index];
  if (!hit) return;
  if (history.state && history.state.view !== undefined) history.replaceState(snapshot(hit.id), "", address(hit.id));
  else history.pushState(snapshot(hit.id), "", address(hit.id));
  show(index);
}

function show(index) {
  const hit = state.results[index];
  if (!hit) return;
  state.current = index;
  const video = hit.duration !== null && hit.duration !== undefined;
  $("large").hidden = video;
  $("player").hidden = !video;
  $("moments").replaceChildren();
  if (video) play(hit);
  else {
    $("player").pause();
    $("player").removeAttribute("src");
    $("large").src = `/api/images/${hit.id}/thumbnail?size=1024`;
  }
  $("large").alt = basename(hit.path);
  $("meta-path").textContent = hit.path;
  const rows = [
    ["Score", hit.score === null ? "–" : hit.score.toFixed(4)],
    ["Size", hit.width ? `${hit.width} × ${hit.height} px` : "–"],
    ["File", hit.size ? formatBytes(hit.size) + (hit.format ? ` · ${hit.format}` : "") : "–"],
    ...(video ? [["Length", clock(hit.duration)]] : []),
    ["Date", hit.taken_at ? new Date(hit.taken_at * 1000).toLocaleString() : "–"],
    ["Id", String(hit.id)],
  ];
  $("meta").replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    return [dt, dd];
  }));
  $("original").href = `/api/images/${hit.id}/file`;
  $("describe").hidden = state.texts === 0;
  $("texts").replaceChildren();
  if (!$("viewer").open) $("viewer").showModal();
  select(index);
}

function play(hit) {  // the video from the moment found, with every moment it matched listed to jump to
  const player = $("player"), start = hit.moments.length ? hit.moments[0].time : 0;
  player.poster = picture(hit, 1024);
  player.src = `/api/images/${hit.id}/file#t=${start}`;  // played in ranges: seeking fetches only what it shows
  $("moments").replaceChildren(...hit.moments.map((moment) => {
    const li = document.createElement("li"), button = document.createElement("button");
    button.type = "button";
    button.className = "button";
    button.textContent = `${clock(moment.time)} · ${moment.score.toFixed(3)}`;
    button.addEventListener("click", () => { player.currentTime = moment.time; player.play().catch(() => {}); });
    li.append(button);
    return li;
  }));
}

function close() { if ($("viewer").open) $("viewer").close(); }  // the user's close: see the "close" listener

let quietly = false;
function closeViewer() {  // closed by the page itself (Back, a new search): no history step of its own
  if (!$("viewer").open) return;
  quietly = true;
  $("viewer").close();
}

function step(by) {
  open(Math.max(0, Math.min(state.results.length - 1, state.current + by)));
  if (state.current > state.results.length - 4) loadMore();
}

function select(index) {
  document.querySelectorAll(".tile.selected").forEach((t) => t.classList.remove("selected"));
  const tile = $("grid").children[index];
  if (tile) { tile.classList.add("selected"); tile.scrollIntoView({ block: "nearest" }); }
}

async function moreLikeThis() {
  const hit = state.results[state.current];
  if (!hit) return;
  closeViewer();
  Object.assign(state, { q: "", upload: null, similar: { id: hit.id, name: basename(hit.path) } });
  showSearch();
  if (history.state && history.state.view !== undefined) {
    history.replaceState(snapshot(), "", address());  // the photo's entry becomes the search it started
    await run();
  } else await search();
}

async function describe() {
  const hit = state.results[state.current];
  if (!hit) return;
  try {
    const body = await api(`/api/images/${hit.id}/describe?k=5`);
    $("texts").replaceChildren(...body.results.map((t) => {
      const li = document.createElement("li");
      li.textContent = `${t.text} (${t.score.toFixed(3)})`;
      return li;
    }));
  } catch (error) { status(error.message, true); }
}

function formatBytes(n) {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// -- searching by image ------------------------------------------------------------------------
function useImage(file) {
  if (!file || !file.type.startsWith("image/")) { status("that is not an image file", true); return; }
  Object.assign(state, { upload: file, similar: null, q: $("q").value.trim() });
  showSearch();
  search();
}

function clearImage() {
  if (!state.upload && !state.similar) return;
  Object.assign(state, { upload: null, similar: null });
  $("upload").value = "";
  showSearch();
  search();
}

// -- keyboard ----------------------------------------------------------------------------------
function columns() {
  const tiles = $("grid").children;
  if (tiles.length < 2) return 1;
  const top = tiles[0].offsetTop;
  let n = 0;
  while (n < tiles.length && tiles[n].offsetTop === top) n++;
  return n;
}

function focusTile(index) {
  const tiles = $("grid").children;
  index = Math.max(0, Math.min(tiles.length - 1, index));
  if (tiles[index]) { tiles[index].focus(); select(index); }
  if (index > tiles.length - 2 * columns()) loadMore();
}

document.addEventListener("keydown", (event) => {
  const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement;
  if ($("viewer").open) {
    const moves = { ArrowRight: 1, ArrowLeft: -1 };
    if (event.key in moves) { event.preventDefault(); step(moves[event.key]); }
    else if (event.key === "m") moreLikeThis();
    else if (event.key === "d" && state.texts) describe();
    return;  // Esc closes the dialog by itself
  }
  if (event.key === "/" && !typing) { event.preventDefault(); $("q").focus(); $("q").select(); return; }
  if (typing) {
    if (event.key === "ArrowDown" && event.target === $("q")) { event.preventDefault(); focusTile(0); }
    return;
  }
  const tile = event.target.closest && event.target.closest(".tile");
  if (!tile) return;
  const index = Number(tile.dataset.index);
  const steps = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns() };
  if (event.key in steps) {
    event.preventDefault();
    if (event.key === "ArrowUp" && index < columns()) { $("q").focus(); return; }
    focusTile(index + steps[event.key]);
  } else if (event.key === "Enter" || event.key === " ") { event.preventDefault(); open(index); }
});

// -- wiring ------------------------------------------------------------------------------------
$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  state.q = $("q").value.trim();
  state.similar = null;  // typed words start a new search (an uploaded image stays, combined with them)
  showSearch();
  search();
});
$("grid").addEventListener("click", (event) => {
  const tile = event.target.closest(".tile");
  if (tile) open(Number(tile.dataset.index));
});
$("upload").addEventListener("change", () => useImage($("upload").files[0]));
$("clear-image").addEventListener("click", () => clearImage());
$("toggle-filters").addEventListener("click", () => {
  const hidden = ($("filters").hidden = !$("filters").hidden);
  $("toggle-filters").setAttribute("aria-expanded", String(!hidden));
});
$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  state.filters = Object.fromEntries([...new FormData($("filters")).entries()].filter(([, v]) => v !== ""));
  search();
});
$("filters").addEventListener("reset", () => { state.filters = {}; setTimeout(search); });
$("more").addEventListener("click", moreLikeThis);
$("describe").addEventListener("click", describe);
$("close").addEventListener("click", close);
$("viewer").addEventListener("click", (event) => { if (event.target === $("viewer")) close(); });

// Swipe between photos on a touch screen (or drag with a mouse): a mostly sideways move of 40 px or more.
let swipe = null;
$("large").addEventListener("pointerdown", (e) => { swipe = { x: e.clientX, y: e.clientY }; });
$("large").addEventListener("pointerup", (e) => {
  if (!swipe) return;
  const dx = e.clientX - swipe.x, dy = e.clientY - swipe.y;
  swipe = null;
  if (Math.abs(dx) >= 40 && Math.abs(dx) > 1.5 * Math.abs(dy)) step(dx < 0 ? 1 : -1);
});
$("large").addEventListener("pointercancel", () => { swipe = null; });
$("viewer").addEventListener("close", () => {
  // Closed by the user (Esc, the close button, a click beside the photo): back to the entry it was opened from.
  if (!quietly && history.state && history.state.view !== undefined) history.back();
  quietly = false;
  $("player").pause();
  const t = $("grid").children[state.current];
  if (t) t.focus();
});
window.addEventListener("scroll", () => { if (nearBottom()) loadMore(); }, { passive: true });

let dragDepth = 0;
window.addEventListener("dragenter", (e) => { if (e.dataTransfer.types.includes("Files")) { dragDepth++; $("drop").hidden = false; } });
window.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("drop").hidden = true; } });
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  $("drop").hidden = true;
  useImage(e.dataTransfer.files[0]);
});
window.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData || {}).items || []].find((i) => i.kind === "file" && i.type.startsWith("image/"));
  if (item) { e.preventDefault(); useImage(item.getAsFile()); }
});

async function start() {
  try {
    const body = await api("/api/info");
    state.maxResults = body.max_results;
    if (body.state !== "ready") {
      const notice = $("notice");
      const title = document.createElement("h2");
      title.textContent = body.state === "missing" ? "No collection yet" : "The collection is empty";
      const hint = document.createElement("p");
      hint.textContent = body.hint;
      notice.replaceChildren(title, hint);
      notice.hidden = false;
      status("");
      setTimeout(start, 3000);  // the page fills in by itself once images are indexed
      return;
    }
    $("notice").hidden = true;
    state.texts = body.info.texts;
    state.images = body.info.images;
    const entry = history.state || fromAddress();  // a reload keeps its history entry, a shared link its address
    Object.assign(state, { q: entry.q, similar: entry.similar, filters: { ...entry.filters }, upload: entry.upload });
    showSearch();
    history.replaceState(snapshot(), "", address());
    await run();
    if (entry.view !== undefined) {
      const index = state.results.findIndex((h) => h.id === entry.view);
      if (index >= 0) open(index);
    }
  } catch (error) {
    status(error.message, true);
  }
}

$("fresh").addEventListener("click", () => { window.scrollTo(0, 0); run(); });

start();
lookForUpdates();
