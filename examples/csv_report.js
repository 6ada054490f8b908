// Example on the analysis image (or the default one): a CSV in, a formatted
// JSON report out, with Node.js alone (no npm install).
//
//   sandq enqueue examples/csv_report.js --input examples/sales.csv \
//       --env GROUP_BY=region --env VALUE='units*unit_price' --wait
//
// report.json holds, for every column, its type (number, date or text) and
// a profile (numbers: min, max, mean, median, sum; dates: first and last;
// text: distinct values and the most frequent ones), and, with GROUP_BY
// (columns, comma-separated) and VALUE (a column, or columns multiplied:
// a*b), the VALUE's total (without VALUE, the row count), share and row
// count per group, largest first.
// Argument (optional): the CSV, as a name under $INPUT_DIR; by default the
// first *.csv there.
"use strict";
const fs = require("fs");
const path = require("path");

const inputs = process.env.INPUT_DIR;
const outputs = process.env.OUTPUT_DIR;

function fail(msg) {
  console.error(msg);
  process.exit(1);
}

// parseCSV reads RFC 4180 CSV: quoted fields may hold commas, newlines and
// doubled quotes; lines end in LF or CRLF.
function parseCSV(text) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"' && field === "") quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field); rows.push(row); row = []; field = "";
    } else field += c;
  }
  if (field !== "" || row.length > 0) { row.push(field); rows.push(row); }
  return rows.filter((r) => r.length > 1 || r[0] !== "");
}

const round = (x, digits = 2) => Math.round(x * 10 ** digits) / 10 ** digits;
const isNumber = (v) => v.trim() !== "" && Number.isFinite(Number(v));
const isDate = (v) => /^\d{4}-\d{2}-\d{2}([T ][\d:.]+Z?)?$/.test(v) && !Number.isNaN(Date.parse(v));

function profile(values) {
  const present = values.filter((v) => v.trim() !== "");
  const base = { missing: values.length - present.length };
  if (present.length > 0 && present.every(isNumber)) {
    const nums = present.map(Number).sort((a, b) => a - b);
    const sum = nums.reduce((a, b) => a + b, 0);
    const mid = nums.length >> 1;
    const median = nums.length % 2 ? nums[mid] : (nums[mid - 1] + nums[mid]) / 2;
    return { type: "number", ...base, min: nums[0], max: nums[nums.length - 1], mean: round(sum / nums.length), median, sum: round(sum) };
  }
  if (present.length > 0 && present.every(isDate)) {
    const sorted = [...present].sort();
    return { type: "date", ...base, first: sorted[0], last: sorted[sorted.length - 1], distinct: new Set(present).size };
  }
  const counts = new Map();
  for (const v of present) counts.set(v, (counts.get(v) || 0) + 1);
  const top = [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, 5);
  return { type: "text", ...base, distinct: counts.size, top: top.map(([value, count]) => ({ value, count })) };
}

const names = process.argv.length > 2 ? [process.argv[2]] : fs.readdirSync(inputs).filter((n) => n.toLowerCase().endsWith(".csv")).sort();
if (names.length === 0) fail("no .csv file among the inputs");
const file = names[0];
const rows = parseCSV(fs.readFileSync(path.join(inputs, file), "utf8"));
if (rows.length < 2) fail(`${file}: no data rows`);
const header = rows[0];
const data = rows.slice(1);
const bad = data.findIndex((r) => r.length !== header.length);
if (bad >= 0) fail(`${file}: row ${bad + 2} has ${data[bad].length} fields, the header ${header.length}`);
const col = (name) => {
  const i = header.indexOf(name);
  if (i < 0) fail(`${file}: no column "${name}" (columns: ${header.join(", ")})`);
  return i;
};

const report = {
  source: file,
  generated_by: `csv_report.js on Node.js ${process.version}`,
  rows: data.length,
  columns: Object.fromEntries(header.map((h, i) => [h, profile(data.map((r) => r[i]))])),
};

if (process.env.GROUP_BY) {
  const keys = process.env.GROUP_BY.split(",").map((k) => k.trim()).filter(Boolean);
  const keyCols = keys.map(col);
  const valueExpr = process.env.VALUE || "";
  const factors = valueExpr ? valueExpr.split("*").map((f) => col(f.trim())) : [];
  // Without VALUE every row counts 1.
  const value = (r) => factors.reduce((acc, i) => acc * Number(r[i]), 1);
  const groups = new Map();
  for (const r of data) {
    const k = JSON.stringify(keyCols.map((i) => r[i]));
    const g = groups.get(k) || { key: Object.fromEntries(keys.map((name, j) => [name, r[keyCols[j]]])), rows: 0, total: 0 };
    g.rows++;
    g.total += value(r);
    groups.set(k, g);
  }
  const grand = [...groups.values()].reduce((a, g) => a + g.total, 0);
  report.grouping = {
    by: keys,
    value: valueExpr || null,
    total: round(grand),
    groups: [...groups.values()]
      .sort((a, b) => b.total - a.total || b.rows - a.rows)
      .map((g) => ({ ...g.key, rows: g.rows, total: round(g.total), share: grand ? round(g.total / grand, 4) : null })),
  };
}

fs.writeFileSync(path.join(outputs, "report.json"), JSON.stringify(report, null, 2) + "\n");

console.log(`${file}: ${data.length} rows, ${header.length} columns`);
for (const [name, p] of Object.entries(report.columns)) {
  const detail = p.type === "number" ? `${p.min} to ${p.max}, mean ${p.mean}` :
    p.type === "date" ? `${p.first} to ${p.last}` : `${p.distinct} distinct, most often "${p.top[0] ? p.top[0].value : ""}"`;
  console.log(`  ${name.padEnd(12)} ${p.type.padEnd(6)} ${detail}`);
}
if (report.grouping) {
  const g = report.grouping;
  console.log(`${g.value || "rows"} by ${g.by.join(", ")}: total ${g.total.toLocaleString("en-US", { minimumFractionDigits: 2 })}`);
  for (const x of g.groups.slice(0, 5)) {
    const label = g.by.map((k) => x[k]).join(" / ");
    console.log(`  ${label.padEnd(20)} ${x.total.toLocaleString("en-US", { minimumFractionDigits: 2 }).padStart(12)}  ${(x.share * 100).toFixed(1)}%`);
  }
}
console.log("wrote report.json");
