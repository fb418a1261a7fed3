-- okta-dcr-auth soak (`make soak`, tests/tests/soak.rs): a wrk script that mixes valid Basic,
-- valid Bearer, wrong secrets, inactive tokens and garbage, tags every request with
-- `x-soak-kind: valid|invalid`, `x-soak-what` (the case), `x-soak-seq` (thread-sequence, unique)
-- and, for valid credentials, `x-soak-id` (the identity the filter must forward), and tallies
-- the answers by case, status and 100 ms bucket of the wall clock.
--
-- Run it with one connection per thread (`-t N -c N`): a thread then has one request in flight,
-- so `response` always answers the request `request` built last.
--
-- Environment: SOAK_CREDS, a Lua file returning the credentials (written by soak.rs):
--   { basic = {{auth, id}, ...}, bearer = {{auth, id}, ...}, wrong = {auth, ...},
--     inactive = {auth, ...}, two = {auth, ...} }
-- SOAK_OUT, where `done` writes one line per tally, `<what> <status> <bucket> <count>`, and a
-- last line `summary requests=.. duration_us=.. connect=.. read=.. write=.. status=.. timeout=..`.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_usec; } soak_timeval;
int gettimeofday(soak_timeval *tv, void *tz);
]]
local tv = ffi.new("soak_timeval")

local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + math.floor(tonumber(tv.tv_usec) / 1000)
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

local function random_string(n)
  local t = {}
  for i = 1, n do
    local k = math.random(#b64chars)
    t[i] = b64chars:sub(k, k)
  end
  return table.concat(t)
end

local function pick(list)
  return list[math.random(#list)]
end

function init(args)
  creds = dofile(os.getenv("SOAK_CREDS"))
  counts = {}
  seq = 0
  current = "none"
  math.randomseed(id * 7919 + now_ms() % 100000)
end

-- The garbage: each is invalid whatever the IdP does.
local garbage = {
  function() return "no-auth", nil end,
  function() return "malformed-basic", "Basic !!!" .. random_string(8) end,
  function() return "no-colon", "Basic " .. "bm8tY29sb24tYXQtYWxs" end,
  function() return "unknown-scheme", "Digest username=\"" .. random_string(12) .. "\"" end,
  function() return "malformed-bearer", "Bearer " .. random_string(10) .. " " .. random_string(10) end,
  function() return "two-credentials", pick(creds.two) end,
  function() return "unknown-token", "Bearer " .. random_string(40) end,
}

function request()
  local r = math.random(100)
  local what, auth, ident, kind
  if r <= 30 then
    local c = pick(creds.basic)
    what, auth, ident, kind = "basic", c[1], c[2], "valid"
  elseif r <= 60 then
    local c = pick(creds.bearer)
    what, auth, ident, kind = "bearer", c[1], c[2], "valid"
  elseif r <= 70 then
    what, auth, kind = "wrong-secret", pick(creds.wrong), "invalid"
  elseif r <= 80 then
    what, auth, kind = "inactive-token", pick(creds.inactive), "invalid"
  else
    what, auth = pick(garbage)()
    kind = "invalid"
  end
  seq = seq + 1
  local headers = {
    ["x-soak-kind"] = kind,
    ["x-soak-what"] = what,
    ["x-soak-seq"] = id .. "-" .. seq,
  }
  if ident then headers["x-soak-id"] = ident end
  if auth then headers["authorization"] = auth end
  current = what
  return wrk.format("GET", "/soak/" .. what, headers)
end

function response(status, headers, body)
  local key = current .. " " .. status .. " " .. math.floor(now_ms() / 100)
  counts[key] = (counts[key] or 0) + 1
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("SOAK_OUT"), "w"))
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for k, v in pairs(c) do
      out:write(k, " ", v, "\n")
    end
  end
  local e = summary.errors
  out:write(string.format(
    "summary requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
  out:close()
end
