// The qtts page: picks a voice from the model card, streams text to WS /v1/audio/speech/stream and plays
// the 16-bit PCM chunks with the Web Audio API as they arrive. No dependencies, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const SAMPLE_RATE = 24000;
const STREAM_PATH = "/v1/audio/speech/stream";
// Scheduling the first chunk a little ahead absorbs the jitter between chunks without audible delay.
const START_AHEAD_S = 0.05;

let card = null;       // this server's model card (/v1/models)
let session = null;    // the open live session, if any
let audioContext = null; // made on the first click: browsers start audio only after a gesture

// -- model card, voices ----------------------------------------------------------------------------------
async function loadCard() {
  const models = await (await fetch("/v1/models")).json();
  card = models.data[0];
  $("model").textContent = `${card.id} · ${card.model_type.replace("_", " ")} model`;
  fill($("language"), ["auto", ...card.languages.filter((name) => name !== "auto")]);
  if (card.model_type === "custom_voice") {
    $("speaker-field").hidden = false;
    fill($("speaker"), card.speakers);
    $("instructions-field").hidden = false;
  } else if (card.model_type === "voice_design") {
    $("instructions-field").hidden = false;
    $("instructions-label").textContent = "Voice description";
    $("instructions").placeholder = "e.g. a calm, low female voice";
  } else {
    $("voice-field").hidden = false;
    $("clone").hidden = false;
    $("clone").open = true;
    await loadVoices();
  }
  $("play").disabled = false;
  setState("idle");
}

async function loadVoices(selected) {
  const voices = (await (await fetch("/v1/voices")).json()).data;
  const select = $("voice");
  select.replaceChildren(...voices.map((voice) => new Option(`${voice.name} (${voice.id})`, voice.id)));
  if (selected) select.value = selected;
  if (!voices.length) say("Clone a voice from a recording first: this Base model speaks in cloned voices.");
}

function fill(select, names) {
  select.replaceChildren(...names.map((name) => new Option(name, name)));
}

$("clone-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData($("clone-form"));
  if (!$("ref-audio").files.length) return say("Choose a reference recording first.", true);
  $("clone-status").textContent = "cloning…";
  const response = await fetch("/v1/voices", { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) {
    $("clone-status").textContent = "";
    return say(body.error.message, true);
  }
  $("clone-status").textContent = `made ${body.id}`;
  await loadVoices(body.id);
});

// -- a live session --------------------------------------------------------------------------------------
function sessionConfig() {
  const config = { type: "session.config", response_format: "pcm", language: $("language").value,
                   split_granularity: $("split").value };
  if (card.model_type === "custom_voice") config.voice = $("speaker").value;
  if (card.model_type === "base") config.voice = $("voice").value;
  if ($("seed").value !== "") config.seed = Number($("seed").value);
  if ($("max-frames").value !== "") config.max_new_tokens = Number($("max-frames").value);
  const instructions = $("instructions").value.trim();
  if (instructions && card.model_type !== "base") config.instructions = instructions;
  return config;
}

class Session {
  // live: keep the utterance open and send what is typed; otherwise send the text box once and end.
  constructor(live) {
    this.live = live;
    this.sent = "";
    this.context = audioContext;
    this.playHead = 0;
    this.sources = new Set();
    this.startedAt = null;   // when the first text left, performance.now()
    this.firstAudioMs = null;
    this.audioSeconds = 0;
    this.underruns = 0;
    const protocol = location.protocol === "https:" ? "wss:" : "ws:";
    this.socket = new WebSocket(`${protocol}//${location.host}${STREAM_PATH}`);
    this.socket.binaryType = "arraybuffer";
    this.socket.onopen = () => this.socket.send(JSON.stringify(sessionConfig()));
    this.socket.onmessage = (event) => this.receive(event.data);
    this.socket.onclose = () => this.closed();
  }

  sendText() {
    const text = $("text").value;
    if (!text.startsWith(this.sent)) {
      // What was sent is being spoken; edits before the end of it cannot be taken back.
      say("Only text added at the end is spoken while the session is live.");
      this.sent = text;
      return;
    }
    const delta = text.slice(this.sent.length);
    if (!delta) return;
    if (this.startedAt === null) this.startedAt = performance.now();
    this.socket.send(JSON.stringify({ type: "input.text", text: delta }));
    this.sent = text;
  }

  finish() {
    this.sendText();
    this.socket.send(JSON.stringify({ type: "input.done" }));
    this.socket.send(JSON.stringify({ type: "session.close" }));
    this.finishing = true;
    setState("finishing");
  }

  receive(data) {
    if (data instanceof ArrayBuffer) return this.play(data);
    const event = JSON.parse(data);
    if (event.type === "session.started") {
      setState(this.live ? "live" : "speaking");
      this.sendText();
      if (!this.live) this.finish();
    } else if (event.type === "audio.start") {
      say(`speaking: ${event.sentence_text}…`);
    } else if (event.type === "audio.done") {
      say(`spoken: ${event.sentence_text}`);
    } else if (event.type === "session.done") {
      say(`done: ${event.total_sentences} segment(s), ${event.frames} frames`);
    } else if (event.type === "error") {
      say(event.error.message, true);
    }
  }

  play(buffer) {
    const now = performance.now();
    if (this.firstAudioMs === null && this.startedAt !== null) {
      this.firstAudioMs = now - this.startedAt;
      $("first-audio").textContent = `${Math.round(this.firstAudioMs)} ms`;
      document.body.dataset.firstAudioMs = String(this.firstAudioMs);
    }
    const pcm = new Int16Array(buffer);
    if (!pcm.length) return;
    const audio = this.context.createBuffer(1, pcm.length, SAMPLE_RATE);
    const channel = audio.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
    const source = this.context.createBufferSource();
    source.buffer = audio;
    source.connect(this.context.destination);
    const earliest = this.context.currentTime + START_AHEAD_S;
    if (this.playHead && this.playHead < this.context.currentTime) this.underruns++;
    this.playHead = Math.max(this.playHead, earliest);
    source.start(this.playHead);
    this.playHead += audio.duration;
    this.sources.add(source);
    source.onended = () => this.sources.delete(source);
    this.audioSeconds += audio.duration;
    const elapsed = (now - this.startedAt) / 1000;
    $("audio-seconds").textContent = `${this.audioSeconds.toFixed(2)} s`;
    $("rtf").textContent = `${(this.audioSeconds / Math.max(elapsed, 1e-3)).toFixed(1)}× real time`;
    $("underruns").textContent = String(this.underruns);
    document.body.dataset.audioBytes = String(Number(document.body.dataset.audioBytes || 0) + buffer.byteLength);
  }

  stop() {
    for (const source of this.sources) source.stop();
    this.socket.close();
  }

  closed() {
    if (session === this) session = null;
    setState("idle");
  }
}

// -- controls --------------------------------------------------------------------------------------------
$("play").addEventListener("click", () => {
  if (session && session.live && !session.finishing) return session.finish();
  if (session) session.stop();
  audioContext = audioContext || new AudioContext();
  for (const id of ["first-audio", "rtf", "audio-seconds", "underruns"]) $(id).textContent = "–";
  delete document.body.dataset.firstAudioMs;
  document.body.dataset.audioBytes = "0";
  say("");
  session = new Session($("live").checked);
});

$("stop").addEventListener("click", () => session && session.stop());

$("text").addEventListener("input", () => {
  if (session && session.live && !session.finishing && session.socket.readyState === WebSocket.OPEN) {
    session.sendText();
  }
});

function setState(state) {
  document.body.dataset.state = state;
  $("stop").disabled = state === "idle";
  $("play").textContent = state === "live" ? "Finish" : "Speak";
}

function say(message, error = false) {
  $("status").textContent = message;
  $("status").className = error ? "error" : "";
}

loadCard().catch((error) => say(`could not load the model card: ${error}`, true));
