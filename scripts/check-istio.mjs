#!/usr/bin/env node
// `make validate`: every YAML document in deploy/istio/ against Istio's CRD schemas, with the
// npm package @kubernetes-models/istio (its validators are generated from Istio 1.29's CRDs),
// installed by `make validate` into .tools/node (pinned by scripts/node/package-lock.json).
//
// Each document must be an Istio object the package knows (WasmPlugin, ServiceEntry,
// DestinationRule, ...) and pass:
// 1. the schema: types, enums (`phase: AUTHN`, `failStrategy: FAIL_CLOSE`), required fields;
// 2. no unknown field (as `kubectl apply --validate=strict`): a schema in Kubernetes prunes an
//    unknown field silently, so a misspelt `phase` would put the filter after Istio's
//    authorization. The known fields come from the package's type declarations;
// 3. what okta-dcr-auth needs: an oci:// image pinned by `sha256`, phase AUTHN, failStrategy
//    FAIL_CLOSE, a pluginConfig whose `idp_upstream` is `outbound|443||HOST`, with a ServiceEntry
//    for HOST port 443 and a DestinationRule originating TLS to it in the same namespace, and on
//    a workload (a selector without the gateway's `istio` label) `match: [{mode: SERVER}]`.
// Then it checks itself: broken copies of the shipped objects must each be refused.
// (The filter's own parser reads each pluginConfig in tests/examples.rs.)

import { readFileSync, readdirSync, existsSync } from "node:fs";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const MODULES = join(ROOT, ".tools/node/node_modules");
const DIR = join(ROOT, "deploy/istio");
const ISTIO = join(MODULES, "@kubernetes-models/istio");

if (!existsSync(ISTIO)) {
  console.error(`check-istio: ${ISTIO} is missing: run \`make validate\` (it installs .tools/node)`);
  process.exit(1);
}
const { parseAllDocuments } = await import(pathToFileURL(join(MODULES, "yaml/dist/index.js")).href);
const pkgVersion = JSON.parse(readFileSync(join(ISTIO, "package.json"), "utf8")).version;

// ---- the model classes and their known fields ------------------------------------------------

const models = new Map();

/** The class and field tree of apiVersion/kind, or an error message. */
async function model(apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (models.has(key)) return models.get(key);
  let found;
  const [group, version] = String(apiVersion).split("/");
  const base = join(ISTIO, group ?? "", version ?? "", `${kind}`);
  if (!group?.endsWith("istio.io") || !version || !/^[A-Za-z]+$/.test(String(kind)) || !existsSync(`${base}.js`)) {
    found = { error: `not an Istio kind that @kubernetes-models/istio ${pkgVersion} knows: ${key}` };
  } else {
    const mod = await import(pathToFileURL(`${base}.js`).href);
    const shape = parseInterface(readFileSync(`${base}.d.ts`, "utf8"), `I${kind}`);
    shape.fields.apiVersion = { kind: "scalar" };
    shape.fields.kind = { kind: "scalar" };
    shape.fields.metadata = { kind: "any" }; // ObjectMeta: checked by the schema
    found = { Class: mod[kind], shape };
  }
  models.set(key, found);
  return found;
}

/**
 * The shape of `export interface NAME { ... }` in a generated .d.ts: objects with their fields,
 * arrays, maps (`[key: string]: T`), unions and intersections (the fields of every side are
 * known), Exclude<T, U> as T; anything else is a scalar or an external type.
 */
function parseInterface(text, name) {
  const src = text.replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/[^\n]*/g, "");
  const start = src.indexOf(`export interface ${name} `);
  if (start < 0) throw new Error(`no interface ${name} in the type declarations`);
  let i = src.indexOf("{", start);
  const ws = () => { while (/\s/.test(src[i])) i++; };
  const expect = (s) => {
    ws();
    if (!src.startsWith(s, i)) throw new Error(`${name}: expected ${s} at ${src.slice(i, i + 40)}`);
    i += s.length;
  };
  function object() {
    expect("{");
    const fields = {};
    let index = null;
    for (;;) {
      ws();
      if (src[i] === "}") { i++; break; }
      if (src[i] === "[") { // [key: string]: T;
        i = src.indexOf("]", i) + 1;
        expect(":");
        index = type();
      } else {
        const m = /^(?:"([^"]+)"|([A-Za-z_$][\w$]*))\??\s*:/.exec(src.slice(i));
        if (!m) throw new Error(`${name}: cannot read a member at ${src.slice(i, i + 40)}`);
        i += m[0].length;
        fields[m[1] ?? m[2]] = type();
      }
      ws();
      if (src[i] === ";" || src[i] === ",") i++;
    }
    if (Object.keys(fields).length === 0 && index === null) return { kind: "any" }; // `{}`: free-form
    return { kind: "object", fields, index };
  }
  function single() {
    ws();
    if (src[i] === "{") return object();
    if (src.startsWith("Array<", i)) {
      i += "Array<".length;
      const item = type();
      expect(">");
      return { kind: "array", item };
    }
    if (src[i] === "(") { i++; const t = type(); expect(")"); return t; }
    const generic = /^(Exclude|Omit|Partial|Required|Readonly)</.exec(src.slice(i));
    if (generic) { // Exclude<T, U>, Omit<T, K>...: the shape of T
      i += generic[0].length;
      const t = type();
      ws();
      while (src[i] === ",") { i++; type(); ws(); }
      expect(">");
      return t;
    }
    const m = /^("(?:[^"\\]|\\.)*"|-?[\w$.]+(?:<[^<>]*>)?)/.exec(src.slice(i));
    if (!m) throw new Error(`${name}: cannot read a type at ${src.slice(i, i + 40)}`);
    i += m[0].length;
    let t = /^[A-Z]/.test(m[0]) && !/^(Array|Record)/.test(m[0]) ? { kind: "any" } : { kind: "scalar" };
    ws();
    while (src.startsWith("[]", i)) { i += 2; t = { kind: "array", item: t }; ws(); }
    return t;
  }
  function type() {
    const options = [single()];
    for (;;) {
      ws();
      if (src[i] !== "|" && src[i] !== "&") break; // fields of either side are known
      i++;
      options.push(single());
    }
    return options.length === 1 ? options[0] : { kind: "union", options };
  }
  const t = object();
  if (t.kind !== "object") throw new Error(`${name}: empty interface`);
  return t;
}

/** Paths of fields the shape does not know. */
function unknownFields(value, shape, path, out) {
  if (value === null || value === undefined || shape.kind === "any" || shape.kind === "scalar") return out;
  if (shape.kind === "union") {
    const objects = shape.options.filter((o) => o.kind === "object");
    if (objects.length && typeof value === "object" && !Array.isArray(value)) {
      const merged = { kind: "object", fields: Object.assign({}, ...objects.map((o) => o.fields)), index: null };
      if (objects.some((o) => o.index)) return out;
      return unknownFields(value, merged, path, out);
    }
    const arr = shape.options.find((o) => o.kind === "array");
    if (arr && Array.isArray(value)) return unknownFields(value, arr, path, out);
    return out;
  }
  if (shape.kind === "array") {
    if (Array.isArray(value)) value.forEach((v, n) => unknownFields(v, shape.item, `${path}[${n}]`, out));
    return out;
  }
  if (typeof value !== "object" || Array.isArray(value)) return out; // the schema reports types
  for (const [k, v] of Object.entries(value)) {
    if (k in shape.fields) unknownFields(v, shape.fields[k], `${path}.${k}`, out);
    else if (shape.index) unknownFields(v, shape.index, `${path}.${k}`, out);
    else out.push(`${path}.${k}`);
  }
  return out;
}

// ---- the checks ---------------------------------------------------------------------------

/** Schema and unknown fields of one object: a list of problems. */
async function checkObject(obj) {
  if (!obj || typeof obj !== "object" || Array.isArray(obj)) return ["not a mapping"];
  const m = await model(obj.apiVersion, obj.kind);
  if (m.error) return [m.error];
  const problems = [];
  try {
    new m.Class(obj).validate();
  } catch (e) {
    problems.push(`schema: ${String(e.message ?? e).replace(/\s+/g, " ")}`);
  }
  for (const p of unknownFields(obj, m.shape, "", [])) problems.push(`unknown field ${p.slice(1)}`);
  return problems;
}

const OUR_IMAGE = /okta[-_]dcr[-_]auth/;

/** What okta-dcr-auth needs of the objects of one file: a list of problems. */
function checkPlugins(objects) {
  const problems = [];
  const ns = (o) => o?.metadata?.namespace ?? "default";
  for (const wp of objects.filter((o) => o?.kind === "WasmPlugin")) {
    const s = wp.spec ?? {};
    const name = `WasmPlugin ${ns(wp)}/${wp.metadata?.name}`;
    if (!OUR_IMAGE.test(String(s.url ?? ""))) continue;
    if (!String(s.url).startsWith("oci://")) problems.push(`${name}: url is not an oci:// image`);
    if (!/^[0-9a-f]{64}$/.test(String(s.sha256 ?? ""))) problems.push(`${name}: no sha256 (64 hex digits) pinning the image`);
    if (s.phase !== "AUTHN") problems.push(`${name}: phase must be AUTHN (before Istio's authn/authz), not ${s.phase}`);
    if (s.failStrategy !== "FAIL_CLOSE") problems.push(`${name}: failStrategy must be FAIL_CLOSE, not ${s.failStrategy}`);
    const gateway = s.selector?.matchLabels && "istio" in s.selector.matchLabels;
    const server = Array.isArray(s.match) && s.match.length > 0 && s.match.every((m) => m?.mode === "SERVER");
    if (!gateway && !server) problems.push(`${name}: on a workload's sidecar, match must be [{mode: SERVER}] (inbound only)`);
    const upstream = /^outbound\|443\|\|([^|]+)$/.exec(String(s.pluginConfig?.idp_upstream ?? ""));
    if (!upstream) {
      problems.push(`${name}: pluginConfig.idp_upstream must be outbound|443||<okta host>`);
      continue;
    }
    const host = upstream[1];
    const se = objects.find((o) => o?.kind === "ServiceEntry" && ns(o) === ns(wp)
      && (o.spec?.hosts ?? []).includes(host) && (o.spec?.ports ?? []).some((p) => p?.number === 443));
    if (!se) problems.push(`${name}: no ServiceEntry for ${host} port 443 in namespace ${ns(wp)}`);
    const dr = objects.find((o) => o?.kind === "DestinationRule" && ns(o) === ns(wp) && o.spec?.host === host);
    const tls = dr?.spec?.trafficPolicy?.tls;
    if (!dr || tls?.mode !== "SIMPLE") problems.push(`${name}: no DestinationRule with tls.mode SIMPLE for ${host} in namespace ${ns(wp)}`);
    const issuerHost = (() => { try { return new URL(s.pluginConfig.issuer).hostname; } catch { return null; } })();
    if (issuerHost !== host && s.pluginConfig?.idp_authority === undefined) {
      problems.push(`${name}: idp_upstream's host ${host} is not the issuer's (${issuerHost}): set idp_authority`);
    }
  }
  return problems;
}

async function checkFile(objects) {
  const problems = [];
  for (const [n, obj] of objects.entries()) {
    for (const p of await checkObject(obj)) problems.push(`document ${n + 1} (${obj?.kind ?? "?"}): ${p}`);
  }
  return problems.concat(checkPlugins(objects));
}

function load(file) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  const errors = docs.flatMap((d) => d.errors.map((e) => e.message));
  if (errors.length) return { errors };
  return { objects: docs.map((d) => d.toJS()).filter((o) => o !== null) };
}

let failed = false;
const ok = (m) => console.log(`  ok    ${m}`);
const fail = (m, lines = []) => {
  failed = true;
  console.log(`  FAIL  ${m}`);
  for (const l of lines) console.log(`        ${l}`);
};

console.log(`Istio manifests (@kubernetes-models/istio ${pkgVersion}, Istio's CRD schemas):`);
const files = readdirSync(DIR).filter((f) => /\.ya?ml$/.test(f)).sort();
if (files.length === 0) fail(`no YAML in ${DIR}`);
let sample = null;
for (const f of files) {
  const rel = `deploy/istio/${f}`;
  const { objects, errors } = load(join(DIR, f));
  if (errors) { fail(`${rel}: not valid YAML`, errors); continue; }
  const problems = await checkFile(objects);
  if (problems.length) fail(rel, problems);
  else ok(`${rel}: ${objects.map((o) => o.kind).join(", ")}`);
  if (!sample && objects.some((o) => o.kind === "WasmPlugin" && o.spec?.selector?.matchLabels?.app)) sample = objects;
}

// The checks must refuse what Istio (or a safe deployment) would not take.
if (!sample) {
  fail("self-check: no workload WasmPlugin to mutate");
} else {
  const mutations = [
    ["phase AUTHZN (not an enum value)", (wp) => { wp.spec.phase = "AUTHZN"; }],
    ["failStrategy FAIL_CLOSED (Envoy's spelling, not Istio's)", (wp) => { wp.spec.failStrategy = "FAIL_CLOSED"; }],
    ["a misspelt field (failStategy)", (wp) => { wp.spec.failStategy = wp.spec.failStrategy; delete wp.spec.failStrategy; }],
    ["no url", (wp) => { delete wp.spec.url; }],
    ["sha256 as a number", (wp) => { wp.spec.sha256 = 42; }],
    ["vmConfig env valueFrom HOSTS", (wp) => { wp.spec.vmConfig = { env: [{ name: "X", valueFrom: "HOSTS" }] }; }],
    ["selector.labels instead of matchLabels", (wp) => { wp.spec.selector = { labels: { app: "x" } }; }],
    ["phase AUTHZ (after Istio's authorization)", (wp) => { wp.spec.phase = "AUTHZ"; }],
    ["no match on a workload", (wp) => { delete wp.spec.match; }],
    ["no DestinationRule TLS", (_wp, objs) => { objs.find((o) => o.kind === "DestinationRule").spec.trafficPolicy.tls.mode = "DISABLE"; }],
    ["a ServiceEntry port typo (numbr)", (_wp, objs) => { const p = objs.find((o) => o.kind === "ServiceEntry").spec.ports[0]; p.numbr = p.number; delete p.number; }],
  ];
  let accepted = [];
  for (const [what, mutate] of mutations) {
    const objs = structuredClone(sample);
    mutate(objs.find((o) => o.kind === "WasmPlugin"), objs);
    if ((await checkFile(objs)).length === 0) accepted.push(what);
  }
  if (accepted.length) fail("self-check: broken manifests accepted", accepted);
  else ok(`self-check: ${mutations.length} broken copies of a shipped manifest are each refused`);
}
process.exit(failed ? 1 : 0);
