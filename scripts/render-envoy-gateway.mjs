#!/usr/bin/env node
// Renders the Envoy configuration that Envoy Gateway would generate for deploy/envoy-gateway/,
// as an Envoy bootstrap that `envoy --mode validate` can check without a cluster
// (scripts/check-envoy-gateway.sh runs it):
//
//   node scripts/render-envoy-gateway.mjs WASM OUT.json [MUTATION]
//
// - every EnvoyExtensionPolicy `wasm[]` entry becomes the HTTP filter Envoy Gateway makes of it
//   (internal/xds/translator/wasm.go): `envoy.filters.http.wasm/envoyextensionpolicy/NS/NAME/wasm/I`,
//   disabled in the listener and enabled on the targeted HTTPRoute's route by an empty
//   FilterConfig, V8, vm_id = the IR name, `configuration` = the policy's `config` as a JSON
//   StringValue, `fail_open`, `env.hostKeys` as `host_env_keys`. One difference: the code is the
//   local WASM file (Envoy Gateway serves the module it pulled over HTTP from its own server, the
//   `wasm_cluster`); so validation loads the built filter and runs its configuration checks;
// - the listener, route and clusters are named as Envoy Gateway names them for its quickstart
//   (Gateway `eg`, HTTPRoute `backend`), and the `wasm_cluster` is there as in its bootstrap;
// - then every EnvoyPatchPolicy's JSON patches are applied the way Envoy Gateway applies them
//   (internal/xds/translator/jsonpatch.go): `op: add` with an empty path adds a whole resource,
//   any other operation is RFC 6902 on the named resource (proto field names);
// - finally each filter's `idp_upstream` must name a cluster of the result.
// MUTATION (the checker's self-check) breaks one thing on purpose: `no-okta-cluster` drops the
// patch, `bad-cluster` gives the patched cluster an unknown field, `bad-config` an unknown field
// in the filter's configuration.

import { readFileSync, readdirSync, writeFileSync, existsSync } from "node:fs";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const MODULES = join(ROOT, ".tools/node/node_modules");
const DIR = join(ROOT, "deploy/envoy-gateway");
const [wasmPath, outPath, mutation] = process.argv.slice(2);
const die = (msg) => { console.error(`render-envoy-gateway: ${msg}`); process.exit(1); };
if (!wasmPath || !outPath) die("usage: render-envoy-gateway.mjs WASM OUT.json [MUTATION]");
if (!existsSync(join(MODULES, "yaml"))) die("the yaml package is missing: run `make validate` (it installs .tools/node)");
const { parseAllDocuments } = await import(pathToFileURL(join(MODULES, "yaml/dist/index.js")).href);

const objects = [];
for (const f of readdirSync(DIR).filter((f) => /\.ya?ml$/.test(f)).sort()) {
  const docs = parseAllDocuments(readFileSync(join(DIR, f), "utf8"));
  for (const d of docs) {
    if (d.errors.length) die(`deploy/envoy-gateway/${f}: ${d.errors[0].message}`);
    const o = d.toJS();
    if (o) objects.push(o);
  }
}
const EG = "gateway.envoyproxy.io/v1alpha1";
const extPolicies = objects.filter((o) => o.apiVersion === EG && o.kind === "EnvoyExtensionPolicy");
let patchPolicies = objects.filter((o) => o.apiVersion === EG && o.kind === "EnvoyPatchPolicy");
const unknown = objects.filter((o) => !extPolicies.includes(o) && !patchPolicies.includes(o));
if (unknown.length) die(`objects this checker does not render: ${unknown.map((o) => `${o.apiVersion}/${o.kind}`).join(", ")}`);
if (!extPolicies.length) die("no EnvoyExtensionPolicy in deploy/envoy-gateway");

// ---- what Envoy Gateway generates ---------------------------------------------------------

const gateway = patchPolicies[0]?.spec?.targetRef?.name ?? "eg";
const gwNamespace = patchPolicies[0]?.metadata?.namespace ?? "default";
const httpFilters = [];
const routes = [];
const clusters = [
  { // Envoy Gateway's bootstrap: its own HTTP server for the Wasm modules it pulled.
    name: "wasm_cluster", type: "STATIC", connect_timeout: "10s",
    load_assignment: { cluster_name: "wasm_cluster", endpoints: [{ lb_endpoints: [{ endpoint: { address: {
      socket_address: { address: "127.0.0.1", port_value: 18002 } } } }] }] },
  },
];
const upstreams = [];
for (const p of extPolicies) {
  const ns = p.metadata?.namespace ?? "default";
  const wasms = p.spec?.wasm ?? [];
  if (!wasms.length) die(`EnvoyExtensionPolicy ${ns}/${p.metadata?.name} has no wasm`);
  const targets = (p.spec?.targetRefs ?? (p.spec?.targetRef ? [p.spec.targetRef] : []))
    .filter((t) => t.kind === "HTTPRoute");
  if (!targets.length) die(`EnvoyExtensionPolicy ${ns}/${p.metadata?.name} targets no HTTPRoute`);
  const filterNames = wasms.map((w, i) => {
    const irName = `envoyextensionpolicy/${ns}/${p.metadata?.name}/wasm/${i}`;
    const filterName = `envoy.filters.http.wasm/${irName}`;
    const config = structuredClone(w.config ?? null);
    if (mutation === "bad-config" && config) config.cache_ttl_seconds = 60;
    const vm = {
      vm_id: irName,
      runtime: "envoy.wasm.runtime.v8",
      code: { local: { filename: resolve(wasmPath) } },
    };
    if (w.env?.hostKeys?.length) vm.environment_variables = { host_env_keys: w.env.hostKeys };
    const plugin = {
      name: w.name ?? irName,
      vm_config: vm,
      configuration: {
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        value: config === null ? "" : JSON.stringify(config),
      },
      fail_open: w.failOpen === true,
    };
    if (w.rootID) plugin.root_id = w.rootID;
    httpFilters.push({
      name: filterName,
      disabled: true,
      typed_config: { "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", config: plugin },
    });
    if (config?.idp_upstream) upstreams.push([filterName, config.idp_upstream]);
    return filterName;
  });
  for (const t of targets) {
    const routeNs = t.namespace ?? ns;
    const cluster = `httproute/${routeNs}/${t.name}/rule/0`;
    routes.push({
      name: `httproute/${routeNs}/${t.name}/rule/0/match/0/*`,
      match: { prefix: "/" },
      route: { cluster },
      typed_per_filter_config: Object.fromEntries(filterNames.map((n) => [n, {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
        config: {},
      }])),
    });
    clusters.push({
      name: cluster, type: "STATIC", connect_timeout: "10s",
      load_assignment: { cluster_name: cluster, endpoints: [{ lb_endpoints: [{ endpoint: { address: {
        socket_address: { address: "127.0.0.1", port_value: 3000 } } } }] }] },
    });
  }
}
httpFilters.push({
  name: "envoy.filters.http.router",
  typed_config: { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
});
const listenerName = `${gwNamespace}/${gateway}/http`;
const listeners = [{
  name: listenerName,
  address: { socket_address: { address: "0.0.0.0", port_value: 10080 } },
  filter_chains: [{ filters: [{
    name: "envoy.filters.network.http_connection_manager",
    typed_config: {
      "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
      stat_prefix: "http-10080",
      route_config: { name: listenerName, virtual_hosts: [{ name: `${listenerName}/*`, domains: ["*"], routes }] },
      http_filters: httpFilters,
    },
  }] }],
}];

// ---- EnvoyPatchPolicy, as Envoy Gateway applies it -----------------------------------------

const TYPES = {
  "type.googleapis.com/envoy.config.listener.v3.Listener": listeners,
  "type.googleapis.com/envoy.config.cluster.v3.Cluster": clusters,
};
const routeConfigs = () => listeners.flatMap((l) => l.filter_chains.flatMap((c) => c.filters
  .map((f) => f.typed_config?.route_config).filter(Boolean)));

function pointer(path) {
  if (path === "") return [];
  if (!path.startsWith("/")) die(`JSON pointer ${JSON.stringify(path)} does not start with /`);
  return path.slice(1).split("/").map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
}

function applyOp(doc, op, where) {
  const keys = pointer(op.path);
  const last = keys.pop();
  let parent = doc;
  for (const k of keys) {
    if (parent[k] === undefined && op.op === "add") parent[k] = /^\d+$/.test(k) ? [] : {}; // EnsurePathExistsOnAdd
    parent = parent[k];
    if (parent === null || typeof parent !== "object") die(`${where}: ${op.path}: no such path`);
  }
  const isArray = Array.isArray(parent);
  const index = (k, adding) => {
    if (isArray && k === "-" && adding) return parent.length;
    const n = Number(k);
    if (!Number.isInteger(n) || n < 0 || n > parent.length - (adding ? 0 : 1)) die(`${where}: ${op.path}: bad index`);
    return n;
  };
  switch (op.op) {
    case "add":
      if (isArray) parent.splice(index(last, true), 0, structuredClone(op.value));
      else parent[last] = structuredClone(op.value);
      break;
    case "replace":
      if (isArray) parent[index(last, false)] = structuredClone(op.value);
      else if (last in parent) parent[last] = structuredClone(op.value);
      else die(`${where}: replace ${op.path}: no such field`);
      break;
    case "remove":
      if (isArray) parent.splice(index(last, false), 1);
      else if (last in parent) delete parent[last];
      else die(`${where}: remove ${op.path}: no such field`);
      break;
    case "test":
      if (JSON.stringify(isArray ? parent[index(last, false)] : parent[last]) !== JSON.stringify(op.value)) {
        die(`${where}: test ${op.path} failed`);
      }
      break;
    default:
      die(`${where}: operation ${op.op} is not supported by this checker`);
  }
}

if (mutation === "no-okta-cluster") patchPolicies = [];
for (const p of patchPolicies) {
  const where = `EnvoyPatchPolicy ${p.metadata?.namespace}/${p.metadata?.name}`;
  if (p.spec?.type !== "JSONPatch") die(`${where}: type must be JSONPatch`);
  for (const [n, patch] of (p.spec?.jsonPatches ?? []).entries()) {
    const at = `${where}, jsonPatches[${n}]`;
    const op = structuredClone(patch.operation ?? {});
    if (patch.operation?.jsonPath !== undefined) die(`${at}: jsonPath is not supported by this checker`);
    if (mutation === "bad-cluster" && op.value && typeof op.value === "object") op.value.max_requests_per_conection = 1;
    if (patch.type === "type.googleapis.com/envoy.config.route.v3.RouteConfiguration") {
      const rc = routeConfigs().find((r) => r.name === patch.name);
      if (!rc) die(`${at}: no RouteConfiguration ${patch.name}`);
      applyOp(rc, op, at);
      continue;
    }
    const list = TYPES[patch.type];
    if (!list) die(`${at}: resource type ${patch.type} is not supported by this checker`);
    if (op.op === "add" && (op.path ?? "") === "") {
      if (list.some((r) => r.name === op.value?.name)) die(`${at}: ${op.value?.name} exists already`);
      list.push(structuredClone(op.value));
      continue;
    }
    const target = list.find((r) => r.name === patch.name);
    if (!target) die(`${at}: no resource ${patch.name} of type ${patch.type}`);
    applyOp(target, op, at);
  }
}

for (const [filter, upstream] of upstreams) {
  if (!clusters.some((c) => c.name === upstream)) {
    die(`${filter}: idp_upstream ${JSON.stringify(upstream)} names no cluster (an EnvoyPatchPolicy must add it)`);
  }
}

const bootstrap = {
  node: { id: "envoy-gateway-render", cluster: `${gwNamespace}/${gateway}` },
  static_resources: { listeners, clusters },
};
writeFileSync(outPath, JSON.stringify(bootstrap, null, 2));
console.log(`${extPolicies.length} EnvoyExtensionPolicy, ${patchPolicies.length} EnvoyPatchPolicy; ` +
  `filters ${httpFilters.length - 1}, clusters ${clusters.map((c) => c.name).join(", ")}`);
