// Canvas drawing: the task as the agent sees and acts in it, the hidden state as a heat map,
// and the policy's output per action.
import { MemoryGrid, TMAZE_LEFT, TMaze } from "./envs.mjs";

const COLORS = { wall: "#37474f", floor: "#eceff1", agent: "#ff6f00", cue: "#1e88e5", goal: "#fdd835", good: "#43a047", bad: "#e53935", text: "#263238" };

/**
 * Draw `env` (a TMaze or MemoryGrid) after its last step: `outcome` is null while the episode runs,
 * then "success", "failure" or "timeout"; `lastAction` the action of that step (null before the first).
 */
export function drawTask(canvas, env, outcome, lastAction) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (env instanceof TMaze) drawTMaze(ctx, canvas, env, outcome, lastAction);
  else if (env instanceof MemoryGrid) drawGrid(ctx, canvas, env, outcome);
  drawOutcome(ctx, canvas, outcome);
}

function drawTMaze(ctx, canvas, env, outcome, lastAction) {
  const cells = env.corridorLength + 1;
  const size = Math.min(44, Math.floor((canvas.width - 40) / cells));
  const x0 = Math.floor((canvas.width - cells * size) / 2);
  const y0 = Math.floor(canvas.height / 2 - size / 2);
  const cell = (i, row, fill) => {
    ctx.fillStyle = fill;
    ctx.fillRect(x0 + i * size + 1, y0 + row * size + 1, size - 2, size - 2);
  };
  for (let i = 0; i < cells; i++) cell(i, 0, COLORS.floor);
  // The arms at the junction: turning left (facing right along the corridor) goes up.
  const goalRow = env.goal === TMAZE_LEFT ? -1 : 1;
  cell(env.corridorLength, -1, goalRow === -1 ? "#fff9c4" : COLORS.floor);
  cell(env.corridorLength, 1, goalRow === 1 ? "#fff9c4" : COLORS.floor);
  label(ctx, "left", x0 + env.corridorLength * size + size / 2, y0 - size - 8);
  label(ctx, "right", x0 + env.corridorLength * size + size / 2, y0 + 2 * size + 16);
  // The cue: at the start cell, seen by the agent only in its first observation.
  const cueSeen = env.t === 0;
  ctx.globalAlpha = cueSeen ? 1 : 0.25;
  ctx.fillStyle = COLORS.cue;
  ctx.font = `bold ${Math.floor(size * 0.5)}px system-ui`;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText(env.goal === TMAZE_LEFT ? "L" : "R", x0 + size / 2, y0 - size / 2);
  ctx.globalAlpha = 1;
  label(ctx, cueSeen ? "cue (seen now)" : "cue (seen at step 0 only)", x0 + size / 2 + 40, y0 - size - 8);
  // The agent: in the corridor, or in the arm it turned into.
  let row = 0;
  if (outcome !== null && outcome !== "timeout" && env.position === env.corridorLength) {
    row = lastAction === TMAZE_LEFT ? -1 : 1;
  }
  agent(ctx, x0 + env.position * size + size / 2, y0 + row * size + size / 2, size * 0.32);
}

function drawGrid(ctx, canvas, env, outcome) {
  const size = Math.floor(Math.min((canvas.width - 40) / env.size, (canvas.height - 40) / env.size));
  const x0 = Math.floor((canvas.width - env.size * size) / 2);
  const y0 = Math.floor((canvas.height - env.size * size) / 2);
  for (let y = 0; y < env.size; y++) {
    for (let x = 0; x < env.size; x++) {
      ctx.fillStyle = COLORS.floor;
      ctx.fillRect(x0 + x * size + 1, y0 + y * size + 1, size - 2, size - 2);
    }
  }
  // The goal corner: bright while the agent sees it (the first step), faint after.
  const [gx, gy] = env.corners[env.goal];
  ctx.globalAlpha = env.t === 0 ? 1 : 0.35;
  ctx.fillStyle = COLORS.goal;
  ctx.fillRect(x0 + gx * size + 1, y0 + gy * size + 1, size - 2, size - 2);
  ctx.globalAlpha = 1;
  const labelY = gy === 0 ? y0 - 10 : y0 + env.size * size + 12; // beside the grid, next to the corner
  const labelX = Math.min(Math.max(x0 + gx * size + size / 2, 90), canvas.width - 90);
  label(ctx, env.t === 0 ? "goal (seen now)" : "goal (seen at step 0 only)", labelX, labelY);
  const held = env.t < env.waitSteps && outcome === null;
  agent(ctx, x0 + env.pos[0] * size + size / 2, y0 + env.pos[1] * size + size / 2, size * 0.3);
  if (held) {
    label(ctx, "held in the middle", x0 / 2, canvas.height / 2 - 8);
    label(ctx, `for ${env.waitSteps - env.t} more step(s)`, x0 / 2, canvas.height / 2 + 8);
  }
}

function agent(ctx, x, y, r) {
  ctx.fillStyle = COLORS.agent;
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.fill();
}

function label(ctx, text, x, y) {
  ctx.fillStyle = COLORS.text;
  ctx.font = "12px system-ui";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText(text, x, y);
}

function drawOutcome(ctx, canvas, outcome) {
  if (outcome === null) return;
  ctx.fillStyle = outcome === "success" ? COLORS.good : COLORS.bad;
  ctx.font = "bold 18px system-ui";
  ctx.textAlign = "right";
  ctx.textBaseline = "bottom";
  ctx.fillText(outcome === "success" ? "success" : outcome === "timeout" ? "time out" : "wrong way", canvas.width - 10, canvas.height - 8);
}

/**
 * The hidden state as a heat map: `history` is one entry per step of this episode, each
 * {state_h: Float32Array, [state_c | state_m]} of [layers * width] values (state_m, a Legendre
 * memory, has its own width); columns are steps, rows units, one block per state tensor.
 * `maxSteps` fixes the column width for the whole episode.
 */
export function drawHeatmap(canvas, names, history, maxSteps) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (names.length === 0) return;
  const left = 62;
  const top = 14;
  const gap = 22;
  const blockHeight = Math.floor((canvas.height - top - gap * (names.length - 1) - 18) / names.length);
  const colWidth = (canvas.width - left - 6) / Math.max(maxSteps, 1);
  names.forEach((name, b) => {
    const y0 = top + b * (blockHeight + gap);
    const rowHeight = blockHeight / (history.length ? history[0][name].length : 1);
    const scale = Math.max(1, ...history.map((s) => maxAbs(s[name])));
    ctx.fillStyle = COLORS.text;
    ctx.font = "12px system-ui";
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText(name, 2, y0);
    ctx.fillStyle = "#999";
    ctx.fillText(`±${scale.toFixed(1)}`, 2, y0 + 16);
    ctx.strokeStyle = "#ccc";
    ctx.strokeRect(left - 0.5, y0 - 0.5, colWidth * maxSteps + 1, blockHeight + 1);
    history.forEach((step, t) => {
      step[name].forEach((v, unit) => {
        ctx.fillStyle = diverging(v / scale);
        ctx.fillRect(left + t * colWidth, y0 + unit * rowHeight, Math.ceil(colWidth), Math.ceil(rowHeight));
      });
    });
    if (history.length) {
      ctx.strokeStyle = COLORS.agent;
      ctx.lineWidth = 2;
      ctx.strokeRect(left + (history.length - 1) * colWidth, y0, colWidth, blockHeight);
      ctx.lineWidth = 1;
    }
  });
  ctx.fillStyle = "#666";
  ctx.font = "11px system-ui";
  ctx.textAlign = "left";
  ctx.textBaseline = "bottom";
  ctx.fillText(`step 0 → ${maxSteps - 1}`, left, canvas.height - 2);
}

function maxAbs(values) {
  let m = 0;
  for (const v of values) m = Math.max(m, Math.abs(v));
  return m;
}

/** Blue (-1) through near-white (0) to red (+1). */
function diverging(x) {
  const v = Math.max(-1, Math.min(1, x));
  const [lo, mid, hi] = [[59, 76, 192], [247, 247, 247], [180, 4, 38]];
  const [a, b, f] = v < 0 ? [mid, lo, -v] : [mid, hi, v];
  const c = a.map((ai, i) => Math.round(ai + (b[i] - ai) * f));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

/** The policy's output for each action (Q-values or logits) as bars, the chosen one highlighted. */
export function drawHead(canvas, title, values, actionNames, chosen) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!values) return;
  const n = values.length;
  const width = (canvas.width - 120) / n;
  const scale = Math.max(1e-6, ...values.map(Math.abs));
  const mid = (canvas.height - 18) / 2;
  ctx.font = "12px system-ui";
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  ctx.fillStyle = COLORS.text;
  ctx.fillText(title, 4, mid);
  values.forEach((v, i) => {
    const h = (v / scale) * (mid - 4);
    ctx.fillStyle = i === chosen ? COLORS.agent : "#90a4ae";
    ctx.fillRect(110 + i * width + 6, mid - Math.max(h, 0), width - 12, Math.abs(h));
    ctx.fillStyle = COLORS.text;
    ctx.textAlign = "center";
    ctx.fillText(`${actionNames[i] ?? i} ${v.toFixed(2)}`, 110 + i * width + width / 2, canvas.height - 7);
  });
  ctx.strokeStyle = "#bbb";
  ctx.beginPath();
  ctx.moveTo(110, mid);
  ctx.lineTo(canvas.width - 4, mid);
  ctx.stroke();
}
