// Times okta-dcr-auth's JWT verification inside V8 (node), as Envoy's V8 runs the filter:
// `node bench/jwt-wasm/run.mjs [path.wasm ...]` after
// `cargo build --release --target wasm32-wasip1 -p bench-jwt-wasm`. A module built with a
// candidate feature (bench/jwt-wasm/candidates.sh builds them all) is timed on its RS256 check
// alone (SHA-256 and the PKCS#1 v1.5 signature, key parsed once); the default module on the
// filter's whole `jwt::verify`. Several modules are timed in interleaved rounds.
// An RS256 token shaped like Okta's, signed with the dev IdP's development key (public on
// purpose), and its key set are made here with node's crypto.
import { readFileSync } from "node:fs";
import { createPrivateKey, createPublicKey, sign } from "node:crypto";
import { WASI } from "node:wasi";

const root = new URL("../../", import.meta.url);
const wasmPaths = process.argv.length > 2 ? process.argv.slice(2)
  : [new URL("target/wasm32-wasip1/release/bench_jwt_wasm.wasm", root)];
const rounds = Number(process.env.ROUNDS ?? 7);
const pem = readFileSync(new URL("devidp/keys/dev-rsa-1.pem", root));
const key = createPrivateKey(pem);
const jwk = createPublicKey(key).export({ format: "jwk" });
const b64 = (s) => Buffer.from(s).toString("base64url");
const now = 1_800_000_000;
const issuer = "https://dev-12345678.okta.com/oauth2/default";
const header = b64(JSON.stringify({ kid: "k1", alg: "RS256" }));
const claims = b64(JSON.stringify({
  ver: 1, jti: "AT.o9b2kC8yQ4Zr1mV7xN3pL6sT0wE5hJ2gF8dA1cK4uY", iss: issuer, aud: "api://default",
  iat: now - 10, exp: now + 3600, cid: "0oa8f5j3ecb5w3dF35d7", scp: ["api:read"],
  sub: "0oa8f5j3ecb5w3dF35d7", app_id: "0oa8f5j3ecb5w3dF35d7",
}));
const input = `${header}.${claims}`;
const token = `${input}.${sign("sha256", Buffer.from(input), key).toString("base64url")}`;
const jwks = JSON.stringify({ keys: [{ kty: "RSA", alg: "RS256", kid: "k1", use: "sig", e: jwk.e, n: jwk.n }] });

const signature = Buffer.from(token.split(".")[2], "base64url");
// The candidates' input: length-prefixed modulus, exponent, signing input, signature.
const field = (b) => {
  const len = Buffer.alloc(4);
  len.writeUInt32LE(b.length);
  return [len, b];
};
const raw = Buffer.concat([Buffer.from(jwk.n, "base64url"), Buffer.from(jwk.e, "base64url"),
  Buffer.from(input), signature].flatMap(field));

async function load(path) {
  const wasi = new WASI({ version: "preview1" });
  // Any other import (the proxy-wasm ABI the filter's glue declares) is never called here.
  const stub = new Proxy({}, { get: () => () => 0 });
  const module = await WebAssembly.compile(readFileSync(path));
  const imports = { wasi_snapshot_preview1: wasi.wasiImport };
  for (const i of WebAssembly.Module.imports(module)) imports[i.module] ??= stub;
  const instance = await WebAssembly.instantiate(module, imports);
  wasi.initialize(instance);
  const { buffer, setup, run, memory, candidate_setup, candidate_run } = instance.exports;
  const candidate = candidate_run !== undefined;
  const bytes = candidate ? raw : Buffer.from(`${token}\n${jwks}`);
  const ptr = buffer(bytes.length);
  new Uint8Array(memory.buffer, ptr, bytes.length).set(bytes);
  const ok = candidate ? candidate_setup() : setup(Buffer.byteLength(token));
  if (ok !== 1) throw new Error(`${path}: the token does not verify`);
  const go = candidate ? candidate_run : run;
  go(200); // warm-up: V8's optimizing tier
  const name = String(path).split("/").pop();
  return { name, what: candidate ? "RS256 signature check" : "jwt::verify", go, times: [] };
}

const modules = [];
for (const path of wasmPaths) modules.push(await load(path));
const n = 1000;
for (let r = 0; r < rounds; r++) {
  for (const m of modules) {
    const t0 = process.hrtime.bigint();
    if (m.go(n) !== n) throw new Error(`${m.name}: a verification failed`);
    m.times.push(Number(process.hrtime.bigint() - t0) / 1000 / n);
  }
}
for (const m of modules) {
  const t = m.times.sort((a, b) => a - b);
  console.log(`${m.name}: ${m.what}, RS256 2048-bit in wasm under V8 (node ${process.version}): ` +
    `median ${t[t.length >> 1].toFixed(1)} us, min ${t[0].toFixed(1)} us per token ` +
    `(${n} x ${rounds} interleaved rounds)`);
}
